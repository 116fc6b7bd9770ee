"""dumpsaver upload against boto3's plain ``upload_file``, same file, same server, and
what a kill in the middle of an upload costs.

    .venv/bin/python benchmarks/upload.py [--quick] [--size 512M] [--json FILE]

Starts its own SeaweedFS on 127.0.0.1 (tests/upload/servers.py).  Throughput: both
sides run as a fresh process (interpreter start and boto3 import included), best of
``--repeat``; ``dumpsaver upload`` also confirms every object by its checksum.
Resume: ``dumpsaver upload`` is killed (SIGKILL, as a reboot would) at several
points, then run again; the figures are the bytes the store kept from before the
kill, the bytes sent after it, and whether the store then holds exactly one object
per file, each equal to the local file.  Writes benchmarks/upload-results.json (or
upload-results-quick.json); docs/fleet.md quotes a full run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from dumpsaver.sizes import human, parse_size  # noqa: E402
from tests.upload.conftest import Dumps  # noqa: E402
from tests.upload.servers import BUCKET, Weed  # noqa: E402

PLAIN = """
import sys, boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
c = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                 aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3],
                 config=Config(s3={"addressing_style": "path"}))
extra = {"ChecksumAlgorithm": "SHA256"} if sys.argv[6] == "sha256" else None
c.upload_file(sys.argv[4], "dumps", sys.argv[5], ExtraArgs=extra, Config=TransferConfig())
"""


def wall(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    took = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed: {r.stderr[-2000:]}")
    return took, r.stdout


def throughput(w: Weed, work: Path, size: int, repeat: int) -> dict[str, Any]:
    d = Dumps(work / "tp")
    name = d.add(size)
    vmcore = str(d.dest / name / "vmcore")
    res: dict[str, Any] = {"size": size}
    for label, mode in (("upload_file", "none"), ("upload_file_sha256", "sha256")):
        times = [wall([sys.executable, "-c", PLAIN, w.endpoint, w.access_key, w.secret_key,
                       vmcore, f"plain/{label}/{i}", mode])[0] for i in range(repeat)]
        res[label] = {"seconds": min(times), "MBps": size / min(times) / 1e6}
    for label, extra in (("dumpsaver", {}), ("dumpsaver_8x8M", {"s3_concurrency": 8,
                                                                   "s3_part_size": "8M"})):
        times = []
        for i in range(repeat):
            d.s3_config(w, s3_prefix=f"bench/{label}/{i}", upload_full_limit=0,
                        upload_timeout=60, upload_retries=5, **extra)
            for m in (d.dest / name).glob("uploaded.json"):
                m.unlink()
            times.append(wall([sys.executable, "-m", "dumpsaver", "--config", str(d.config),
                               "upload"])[0])
        res[label] = {"seconds": min(times), "MBps": size / min(times) / 1e6}
    for label in ("dumpsaver", "dumpsaver_8x8M"):
        res[label]["ratio_vs_upload_file"] = res["upload_file"]["seconds"] / res[label][
            "seconds"]
        res[label]["ratio_vs_upload_file_sha256"] = res["upload_file_sha256"]["seconds"] / \
            res[label]["seconds"]
    return res


def resume(w: Weed, work: Path, size: int, part: int, concurrency: int) -> list[dict[str, Any]]:
    nparts = -(-size // part)
    points = [f"upload-part:{k}" for k in sorted({1, nparts // 4, nparts // 2,
                                                  3 * nparts // 4, nparts - 1} - {0})]
    points += ["upload-complete", "upload-confirm", "upload-dmesg", "upload-info"]
    out = []
    for i, point in enumerate(points):
        d = Dumps(work / f"resume{i}")
        name = d.add(size)
        prefix = f"resume/{i}"
        d.s3_config(w, s3_prefix=prefix, s3_part_size=part, s3_concurrency=concurrency,
                    upload_full_limit=0)
        r1 = d.upload(env={"DUMPSAVER_KILL_AT": point})
        assert r1.returncode == -9, r1.stderr
        left = [k for k in w.objects(prefix) if k.endswith("/info.json")]
        rec = json.loads((next((d.state / "upload").glob("s3-*.json"))).read_text()) \
            if list((d.state / "upload").glob("s3-*.json")) else {"parts": {}}
        acked = sum(min(part, size - (int(n) - 1) * part) for n in rec["parts"])
        r2 = d.upload("--json")
        assert r2.returncode == 0, r2.stderr
        sent = json.loads(r2.stdout)["sent"][0]
        objs = w.objects(prefix)
        base = f"{prefix}/testhost/{name}/"
        body = w.client().get_object(Bucket=BUCKET, Key=base + "vmcore")["Body"].read()
        corrupt = int(hashlib.sha256(body).hexdigest() != d.sha256(name))
        data_objs = [k for k in objs if k.startswith(base)]
        out.append({
            "kill_at": point, "info_json_visible_after_kill": bool(left),
            "bytes_acknowledged_before_kill": acked,
            "bytes_kept_by_store": int(sent["bytes_resumed"]),
            "bytes_sent_after_restart": int(sent["bytes_sent"]),
            "objects": len(data_objs), "duplicated": len(data_objs) - 3, "corrupt": corrupt,
            "open_multipart_uploads": len([k for k in w.open_uploads() if k.startswith(base)]),
        })
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small files: the smoke test")
    ap.add_argument("--size", help="file size for the throughput run (default 512M)")
    ap.add_argument("--repeat", type=int)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--workdir", type=Path)
    a = ap.parse_args(argv)
    size = parse_size(a.size or ("24M" if a.quick else "512M"))
    repeat = a.repeat or (1 if a.quick else 3)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="dumpsaver-upload-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    w = Weed(work / "weed").start()
    try:
        t0 = time.perf_counter()
        res = {"meta": {"quick": a.quick, "repeat": repeat, "cpus": os.cpu_count()},
               "throughput": throughput(w, work, size, repeat),
               "resume": resume(w, work, (24 if a.quick else 256) << 20, 8 << 20, 4)}
        res["meta"]["seconds"] = time.perf_counter() - t0
    finally:
        w.stop()
    dest = a.json or HERE / ("upload-results-quick.json" if a.quick else "upload-results.json")
    dest.write_text(json.dumps(res, indent=1) + "\n")
    tp = res["throughput"]
    print(f"throughput, {human(size)} to SeaweedFS on 127.0.0.1 (best of {repeat}):")
    for k in ("upload_file", "upload_file_sha256", "dumpsaver", "dumpsaver_8x8M"):
        extra = "" if "ratio_vs_upload_file" not in tp[k] else (
            f"  {tp[k]['ratio_vs_upload_file']:.2f}x upload_file, "
            f"{tp[k]['ratio_vs_upload_file_sha256']:.2f}x upload_file+SHA256")
        print(f"  {k:<20} {tp[k]['seconds']:7.2f} s {tp[k]['MBps']:8.1f} MB/s{extra}")
    print("resume after kill -9 (8M parts, 4 at once):")
    for r in res["resume"]:
        print(f"  {r['kill_at']:<16} acked {human(r['bytes_acknowledged_before_kill']):>9}  "
              f"kept {human(r['bytes_kept_by_store']):>9}  "
              f"sent after {human(r['bytes_sent_after_restart']):>9}  objects {r['objects']} "
              f"duplicated {r['duplicated']} corrupt {r['corrupt']}")
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
