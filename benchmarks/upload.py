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
    for label, extra in (("dumpsaver", {}), ("dumpsaver_4x16M", {"s3_concurrency": 4,
                                                                    "s3_part_size": "16M"})):
        times = []
        for i in range(repeat):
            d.s3_config(w, s3_prefix=f"bench/{label}/{i}", upload_full_limit=0,
                        upload_timeout=60, upload_retries=5,
                        **{"s3_part_size": "8M", "s3_concurrency": 8, **extra})
            for m in (d.dest / name).glob("uploaded.json"):
                m.unlink()
            times.append(wall([sys.executable, "-m", "dumpsaver", "--config", str(d.config),
                               "upload"])[0])
        res[label] = {"seconds": min(times), "MBps": size / min(times) / 1e6}
    for label in ("dumpsaver", "dumpsaver_4x16M"):
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


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def requests_per_dump(w: Weed, work: Path, size: int) -> dict[str, Any]:
    """S3 requests one dump costs, counted on the client (botocore's events), for a
    full upload and for an info.json + dmesg.txt one (upload_full_limit reached)."""
    from dumpsaver import config
    from dumpsaver.upload import engine, local

    out: dict[str, Any] = {}
    for mode, limit in (("full", 1000), ("summary", 1)):
        d = Dumps(work / f"req-{mode}")
        name = d.add(size)
        cfg = config.load(d.s3_config(w, s3_prefix="requests", upload_full_limit=limit,
                                       upload_host=f"req-{mode}", s3_part_size="8M"))
        if mode == "summary":  # one full dump of the signature is already there
            seed = Dumps(work / "req-seed")
            seed.add(4096)
            engine.upload(config.load(seed.s3_config(w, s3_prefix="requests",
                                                     upload_host="req-seed")),
                          seed.dest, seed.state)
        t = engine.targets(cfg, d.state)[0]
        counts: dict[str, int] = {}

        def count(model: Any, counts: dict[str, int] = counts, **_: Any) -> None:
            counts[model.name] = counts.get(model.name, 0) + 1

        t.client().meta.events.register("before-call.s3", count)  # type: ignore[attr-defined]
        counts.clear()  # the connection's HeadBucket is once per run, not per dump
        t.send(next(x for x in local.saved(d.dest) if x.name == name))
        out[mode] = {"requests": sum(counts.values()), "by_operation": counts,
                     "objects_stored": 4 if mode == "full" else 2}
    out["size"] = size
    return out


def fleet(w: Weed, work: Path, machines: int, size: int) -> dict[str, Any]:
    """``machines`` machines crashed by the same bug upload at once to one store."""
    procs = []
    cpu0 = cpu_seconds(w.proc.pid) if w.proc else 0.0
    t0 = time.perf_counter()
    for k in range(machines):
        d = Dumps(work / f"fleet{k}")
        d.add(size, seed=k + 1000)
        d.s3_config(w, s3_prefix="fleet", upload_host=f"m{k:04d}", upload_full_limit=0,
                    upload_timeout=60, upload_retries=5, s3_part_size="8M")
        procs.append(subprocess.Popen([sys.executable, "-m", "dumpsaver", "--config",
                                       str(d.config), "upload"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE))
    failed = sum(p.wait() != 0 for p in procs)
    took = time.perf_counter() - t0
    cpu = (cpu_seconds(w.proc.pid) if w.proc else 0.0) - cpu0
    t1 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "dumpsaver", "--config",
                        str(work / "fleet0" / "dumpsaver.yaml"), "list", "--remote", "--json"],
                       capture_output=True, text=True, check=True)
    listed = time.perf_counter() - t1
    rows = json.loads(r.stdout)
    return {"machines": machines, "size": size, "failed": failed, "seconds": took,
            "aggregate_MBps": machines * size / took / 1e6,
            "store_cpu_seconds_per_GiB": cpu / (machines * size / (1 << 30)),
            "list_remote_seconds": listed, "list_remote_groups": len(rows),
            "list_remote_machines": sum(g["machines"] for g in rows)}


def listing(w: Weed, work: Path, dumps: int) -> dict[str, Any]:
    """``list --remote`` over ``dumps`` dumps of 50 machines (tiny vmcores: the listing
    reads only info.json)."""
    from dumpsaver import config
    from dumpsaver.upload import engine

    for m in range(50):
        d = Dumps(work / f"list{m}")
        for i in range(dumps // 50):
            d.add(4096, seed=m * 1000 + i, release=f"6.1.0-{i % 3}")
        engine.upload(config.load(d.s3_config(w, s3_prefix="listing", upload_host=f"h{m:03d}")),
                      d.dest, d.state)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "dumpsaver", "--config",
                            str(work / "list0" / "dumpsaver.yaml"), "list", "--remote", "--json"],
                           capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - t0)
    rows = json.loads(r.stdout)
    return {"dumps": sum(g["dumps"] for g in rows), "machines": max(g["machines"] for g in rows),
            "groups": len(rows), "seconds": min(times)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small files: the smoke test")
    ap.add_argument("--size", help="file size for the throughput run (default 512M)")
    ap.add_argument("--repeat", type=int)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--only", help="comma-separated: throughput,resume,requests,fleet,"
                    "listing (merged into an existing results file)")
    a = ap.parse_args(argv)
    size = parse_size(a.size or ("24M" if a.quick else "512M"))
    repeat = a.repeat or (1 if a.quick else 3)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="dumpsaver-upload-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    w = Weed(work / "weed").start()
    try:
        t0 = time.perf_counter()
        only = set((a.only or "throughput,resume,requests,fleet,listing").split(","))
        res: dict[str, Any] = {"meta": {"quick": a.quick, "repeat": repeat,
                                        "cpus": os.cpu_count()}}
        if "throughput" in only:
            res["throughput"] = throughput(w, work, size, repeat)
        if "resume" in only:
            res["resume"] = resume(w, work, (24 if a.quick else 256) << 20, 8 << 20, 8)
        if "requests" in only:
            res["requests"] = requests_per_dump(w, work, (24 if a.quick else 256) << 20)
        if "fleet" in only:
            res["fleet"] = [fleet(w, work / f"f{m}", m, (8 if a.quick else 64) << 20)
                            for m in ((1, 4) if a.quick else (1, 4, 16))]
        if "listing" in only:
            res["listing"] = listing(w, work, 50 if a.quick else 500)
        res["meta"]["seconds"] = time.perf_counter() - t0
    finally:
        w.stop()
    dest = a.json or HERE / ("upload-results-quick.json" if a.quick else "upload-results.json")
    if a.only and dest.exists():
        res = {**json.loads(dest.read_text()), **{k: v for k, v in res.items() if k != "meta"}}
    dest.write_text(json.dumps(res, indent=1) + "\n")
    report(res, size, repeat)
    print(f"wrote {dest}")
    return 0


def report(res: dict[str, Any], size: int, repeat: int) -> None:
    tp = res.get("throughput", {})
    if tp:
        print(f"throughput, {human(size)} to SeaweedFS on 127.0.0.1 (best of {repeat}):")
    for k in ("upload_file", "upload_file_sha256", "dumpsaver", "dumpsaver_4x16M"):
        if k not in tp:
            continue
        extra = "" if "ratio_vs_upload_file" not in tp[k] else (
            f"  {tp[k]['ratio_vs_upload_file']:.2f}x upload_file, "
            f"{tp[k]['ratio_vs_upload_file_sha256']:.2f}x upload_file+SHA256")
        print(f"  {k:<20} {tp[k]['seconds']:7.2f} s {tp[k]['MBps']:8.1f} MB/s{extra}")
    if "resume" in res:
        print("resume after kill -9 (8M parts, 8 at once):")
    for r in res.get("resume", []):
        print(f"  {r['kill_at']:<16} acked {human(r['bytes_acknowledged_before_kill']):>9}  "
              f"kept {human(r['bytes_kept_by_store']):>9}  "
              f"sent after {human(r['bytes_sent_after_restart']):>9}  objects {r['objects']} "
              f"duplicated {r['duplicated']} corrupt {r['corrupt']}")
    if "requests" in res:
        q = res["requests"]
        print(f"requests per dump ({human(q['size'])}): full {q['full']['requests']} "
              f"{q['full']['by_operation']}, summary {q['summary']['requests']} "
              f"{q['summary']['by_operation']}")
    if "listing" in res:
        g = res["listing"]
        print(f"list --remote: {g['seconds']:.2f} s for {g['dumps']} dumps of "
              f"{g['machines']} machines in {g['groups']} groups")
    for f in res.get("fleet", []):
        print(f"fleet: {f['machines']:>3} machines x {human(f['size'])} at once: "
              f"{f['seconds']:.1f} s, {f['aggregate_MBps']:.1f} MB/s, store CPU "
              f"{f['store_cpu_seconds_per_GiB']:.1f} s/GiB, failed {f['failed']}; list --remote "
              f"{f['list_remote_seconds']:.2f} s for {f['list_remote_machines']} machines")


if __name__ == "__main__":
    sys.exit(main())
