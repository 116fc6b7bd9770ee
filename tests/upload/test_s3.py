"""dumpsaver upload to a real S3 store (SeaweedFS on 127.0.0.1): layout, checksums,
resume after a kill of either side, and one clear line for every failure."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dumpsaver import config, retention
from dumpsaver.errors import Exit
from dumpsaver.upload import local
from tests.upload.conftest import BUCKET, Dumps, one_line_error
from tests.upload.servers import Weed

MiB = 1 << 20


def store_sha(w: Weed, key: str) -> str:
    return hashlib.sha256(w.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
                          ).hexdigest()


def prefix_of(dumps: Dumps) -> str:
    import yaml

    return str(yaml.safe_load(dumps.config.read_text())["s3_prefix"])


def assert_complete(w: Weed, dumps: Dumps, name: str) -> None:
    """All three objects, equal to the local files; no unfinished upload left over."""
    base = f"{prefix_of(dumps)}/testhost/{name}/"
    objs = w.objects(base)
    assert sorted(objs) == [base + "dmesg.txt", base + "info.json", base + "vmcore"]
    assert store_sha(w, base + "vmcore") == dumps.sha256(name)
    assert store_sha(w, base + "dmesg.txt") == dumps.sha256(name, "dmesg.txt")
    assert not [k for k in w.open_uploads() if k.startswith(base)]
    assert any(u.startswith("s3://") for u in dumps.marker(name))


def assert_not_complete(w: Weed, dumps: Dumps, name: str) -> None:
    """Nothing in the store looks complete, and the local dump is kept unmarked."""
    base = f"{prefix_of(dumps)}/testhost/{name}/"
    assert base + "info.json" not in w.objects(base)
    assert (dumps.dest / name / "vmcore").exists() and not dumps.marker(name)


def sent(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def test_upload_layout_checksums_metadata(weed: Weed, dumps: Dumps) -> None:
    a = dumps.add(12 * MiB)
    b = dumps.add(3 * MiB + 5, panic="BUG: unable to handle page fault for address: "
                  "ffff8881deadbeef", release="6.1.0-99")
    dumps.s3_config(weed)
    assert dumps.upload("--check").returncode == 0
    r = dumps.upload("--json")
    assert r.returncode == 0, r.stderr
    for name in (a, b):
        assert_complete(weed, dumps, name)
    head = weed.client().head_object(Bucket=BUCKET, Key=f"{prefix_of(dumps)}/testhost/{b}/vmcore",
                                     ChecksumMode="ENABLED")
    assert head["Metadata"]["kernel-release"] == "6.1.0-99"
    sig, _ = local.panic_signature("BUG: unable to handle page fault for address: "
                                   "ffff8881deadbeef", (dumps.dest / b / "dmesg.txt").read_text())
    assert head["Metadata"]["panic-signature"] == sig
    assert head["ChecksumSHA256"].endswith("-1")
    info = json.loads(weed.client().get_object(
        Bucket=BUCKET, Key=f"{prefix_of(dumps)}/testhost/{a}/info.json")["Body"].read())
    assert info["upload"]["mode"] == "full" and info["upload"]["kernel_release"] == "6.1.0-test"
    assert info["upload"]["vmcore"]["parts"] == 3
    assert sent(r)["left"] == 0
    # Done: nothing left, a rerun sends nothing.
    assert dumps.upload("--check").returncode == 3
    again = dumps.upload()
    assert again.returncode == 0 and "nothing to upload" in again.stdout


def test_signature_ignores_addresses_and_numbers() -> None:
    a = local.panic_signature("BUG: unable to handle page fault for address: ffff8881deadbeef",
                              "RIP: 0010:ext4_fill_super+0x1a/0x30")
    b = local.panic_signature("BUG: unable to handle page fault for address: ffff888100000000",
                              "CPU: 7 PID: 99\nRIP: 0010:ext4_fill_super+0x2b/0x30")
    c = local.panic_signature("BUG: unable to handle page fault for address: ffff888100000000",
                              "RIP: 0010:xfs_fill_super+0x2b/0x30")
    assert a == b and a[0] != c[0]
    assert a[1].endswith("at ext4_fill_super")


@pytest.mark.parametrize("point", ["upload-part:2", "upload-complete", "upload-confirm",
                                   "upload-dmesg", "upload-info"])
def test_uploader_killed_then_resumes(weed: Weed, dumps: Dumps, point: str) -> None:
    """A reboot in the middle (kill -9 at each step), then the next run finishes the
    same upload: the parts already stored are not sent again, nothing is duplicated."""
    name = dumps.add(16 * MiB)
    dumps.s3_config(weed, s3_concurrency=1)
    r = dumps.upload(env={"DUMPSAVER_KILL_AT": point})
    assert r.returncode == -9, r.stderr
    assert_not_complete(weed, dumps, name)
    r = dumps.upload("--json")
    assert r.returncode == 0, r.stderr
    assert_complete(weed, dumps, name)
    rec = sent(r)["sent"][0]
    if point == "upload-part:2":
        assert rec["bytes_resumed"] == 10 * MiB and rec["bytes_sent"] == 6 * MiB
    elif point in ("upload-complete",):
        assert rec["bytes_resumed"] == 16 * MiB and rec["bytes_sent"] == 0
    elif point in ("upload-confirm", "upload-dmesg", "upload-info"):
        assert rec["bytes_sent"] == 0  # the vmcore was complete: found, not sent again


def test_store_killed_mid_upload_then_resumes(private_weed: Any, dumps: Dumps) -> None:
    w = private_weed()
    name = dumps.add(20 * MiB)
    dumps.s3_config(w, s3_concurrency=1, upload_timeout=2, upload_retries=2)
    env = dict(os.environ, DUMPSAVER_UPLOAD_PAUSE="upload-part:2")
    p = subprocess.Popen([sys.executable, "-m", "dumpsaver", "--config", str(dumps.config),
                          "upload"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    flag = dumps.state / "upload" / "paused"
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.05)
    w.kill()  # the store dies between part 2 and part 3
    flag.unlink()
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1
    line = one_line_error(err)
    assert "cannot reach the store" in line and name in line
    assert (dumps.dest / name / "vmcore").exists() and not dumps.marker(name)
    w.start()  # same data directory and ports
    assert_not_complete(w, dumps, name)
    r = dumps.upload("--json")
    assert r.returncode == 0, r.stderr
    rec = sent(r)["sent"][0]
    assert rec["bytes_resumed"] == 10 * MiB and rec["bytes_sent"] == 10 * MiB
    assert_complete(w, dumps, name)


def test_wrong_credentials_never_shown(weed: Weed, dumps: Dumps) -> None:
    name = dumps.add(6 * MiB)
    dumps.s3_config(weed)
    wrong = "WRONGsecret" + "x" * 20
    weed.credentials_file(dumps.root / "s3-credentials", secret=wrong)
    for extra in ([], ["--json"]):
        r = dumps.upload(*extra)
        assert r.returncode == 1
        line = one_line_error(r.stderr)
        assert "refused our credentials" in line
        for secret in (weed.access_key, wrong, weed.secret_key):
            assert secret not in r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "dumpsaver", "--config", str(dumps.config),
                        "--debug", "upload"], capture_output=True, text=True)
    assert r.returncode != 0
    for secret in (weed.access_key, wrong):
        assert secret not in r.stdout + r.stderr
    for f in dumps.state.rglob("*"):
        if f.is_file():
            assert wrong.encode() not in f.read_bytes()
    st = subprocess.run([sys.executable, "-m", "dumpsaver", "--config", str(dumps.config),
                         "status", "--json", "--dest", str(dumps.dest), "--cmdline", "/dev/null",
                         "--sysfs", str(dumps.root / "nosysfs")], capture_output=True, text=True)
    assert st.returncode == Exit.NOT_READY, st.stderr  # no dump area here: the verdict
    for secret in (weed.access_key, wrong):
        assert secret not in st.stdout + st.stderr
    assert_not_complete(weed, dumps, name)


def test_credentials_from_the_standard_chain(weed: Weed, dumps: Dumps) -> None:
    name = dumps.add(1 * MiB)
    dumps.s3_config(weed, s3_credentials_file="")
    env = {"AWS_ACCESS_KEY_ID": weed.access_key, "AWS_SECRET_ACCESS_KEY": weed.secret_key,
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/dev/null",
           "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
    r = dumps.upload(env=env)
    assert r.returncode == 0, r.stderr
    assert_complete(weed, dumps, name)


def test_credentials_file_must_be_root_only(weed: Weed, dumps: Dumps) -> None:
    dumps.add(1 * MiB)
    dumps.s3_config(weed)
    (dumps.root / "s3-credentials").chmod(0o644)
    r = dumps.upload()
    assert r.returncode == 1
    assert "readable by others" in one_line_error(r.stderr)
    assert weed.secret_key not in r.stderr


def test_missing_bucket(weed: Weed, dumps: Dumps) -> None:
    name = dumps.add(1 * MiB)
    dumps.s3_config(weed, s3_bucket="no-such-bucket")
    r = dumps.upload()
    assert r.returncode == 1
    assert "bucket 'no-such-bucket' does not exist" in one_line_error(r.stderr)
    assert "no-such-bucket" not in [b["Name"] for b in weed.client().list_buckets()["Buckets"]]
    assert (dumps.dest / name / "vmcore").exists() and not dumps.marker(name)


def test_corrupted_part_rejected_by_checksum(weed: Weed, dumps: Dumps) -> None:
    name = dumps.add(12 * MiB)
    dumps.s3_config(weed, s3_concurrency=1)
    r = dumps.upload(env={"DUMPSAVER_UPLOAD_CORRUPT": "2"})  # damaged on every send
    assert r.returncode == 1
    assert "SHA-256 did not match" in one_line_error(r.stderr)
    assert_not_complete(weed, dumps, name)
    assert f"{prefix_of(dumps)}/testhost/{name}/vmcore" not in weed.objects()
    # Damaged once (a bad cable): the store rejects it, the part goes again, all is well.
    r = dumps.upload("--json", env={"DUMPSAVER_UPLOAD_CORRUPT": "3:1"})
    assert r.returncode == 0, r.stderr
    assert sent(r)["sent"][0]["parts_resent"] == 1
    assert_complete(weed, dumps, name)


def test_two_uploaders_one_waits_out(weed: Weed, dumps: Dumps) -> None:
    name = dumps.add(1 * MiB)
    dumps.s3_config(weed)
    with local.upload_lock(dumps.state):
        r = dumps.upload()
    assert r.returncode == 7
    assert "another dumpsaver upload is running" in one_line_error(r.stderr)
    assert not dumps.marker(name)
    assert dumps.upload().returncode == 0 and dumps.marker(name)


def test_full_store(private_weed: Any, dumps: Dumps) -> None:
    """A store with one 8 MB volume: the first dump fits, the second does not."""
    w = private_weed(volume_mb=8, volume_max=1)
    first = dumps.add(2 * MiB)
    dumps.s3_config(w, upload_retries=1)
    assert dumps.upload().returncode == 0
    name = dumps.add(24 * MiB)
    r = dumps.upload()
    assert r.returncode == 1, r.stdout
    line = one_line_error(r.stderr)
    assert name in line
    assert_not_complete(w, dumps, name)
    assert dumps.marker(first)


def test_only_summary_when_signature_is_common_and_fleet_view(weed: Weed, dumps: Dumps
                                                              ) -> None:
    prefix = f"fleet{os.getpid()}"
    a1 = dumps.add(1 * MiB, crash_time="2026-12-01T22:00:00+00:00")
    a2 = dumps.add(1 * MiB, crash_time="2026-12-01T23:00:00+00:00")
    dumps.s3_config(weed, s3_prefix=prefix, upload_full_limit=2, upload_host="web1",
                    upload_delete=True)
    assert dumps.upload().returncode == 0
    assert not (dumps.dest / a1).exists() and not (dumps.dest / a2).exists()  # deleted
    b = dumps.add(1 * MiB, crash_time="2026-12-02T03:00:00+00:00")
    other = dumps.add(1 * MiB, panic="Kernel panic - not syncing: Out of memory",
                      release="6.1.0-other")
    dumps.s3_config(weed, s3_prefix=prefix, upload_full_limit=2, upload_host="web2",
                    upload_delete=True)
    r = dumps.upload()
    assert r.returncode == 0, r.stderr
    assert "info.json and dmesg.txt only" in r.stdout
    keys = weed.objects(f"{prefix}/web2/")
    assert f"{prefix}/web2/{b}/info.json" in keys and f"{prefix}/web2/{b}/vmcore" not in keys
    assert f"{prefix}/web2/{other}/vmcore" in keys
    # Only info.json went: the vmcore exists nowhere else, so it stays here.
    assert (dumps.dest / b / "vmcore").exists() and not (dumps.dest / other).exists()
    r = subprocess.run([sys.executable, "-m", "dumpsaver", "--config", str(dumps.config),
                        "list", "--remote", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 2
    top = rows[0]
    assert (top["machines"], top["dumps"], top["full_dumps"]) == (2, 3, 2)
    assert top["kernel_release"] == "6.1.0-test"
    assert top["first_seen"].startswith("2026-12-01T22") and top["last_seen"].startswith(
        "2026-12-02T03")
    assert rows[1]["machines"] == 1 and rows[1]["kernel_release"] == "6.1.0-other"
    text = subprocess.run([sys.executable, "-m", "dumpsaver", "--config", str(dumps.config),
                           "list", "--remote"], capture_output=True, text=True).stdout
    assert text.splitlines()[0].split()[:2] == ["MACHINES", "DUMPS"]
    assert "sysrq triggered crash" in text.splitlines()[1]


def test_retention_deletes_uploaded_dumps_first(tmp_path: Path) -> None:
    dumps = Dumps(tmp_path)
    old, mid, new = dumps.add(4096), dumps.add(4096), dumps.add(4096)
    (dumps.dest / mid / "uploaded.json").write_text('{"targets": {"s3://b/p/h/mid/": '
                                                    '{"mode": "full"}}}')
    # Only info.json and dmesg.txt went: its vmcore exists nowhere else.
    (dumps.dest / old / "uploaded.json").write_text('{"targets": {"s3://b/p/h/old/": '
                                                    '{"mode": "summary"}}}')
    fd = os.open(dumps.dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert retention.retention_order(fd, [old, mid, new]) == [mid, old, new]
        cfg = config.from_mapping({"keep_dumps": 2, "minfree": 0}, "test")
        assert retention.vacuum(dumps.dest, fd, cfg, protect=new) == [mid]
    finally:
        os.close(fd)


def test_real_saved_dump_round_trip(weed: Weed, make_sim: Any, tmp_path: Path) -> None:
    from tests.conftest import save_sim

    dumps = Dumps(tmp_path / "d")
    res = save_sim(make_sim(), dumps.dest)
    assert res.dump_dir is not None
    dumps.s3_config(weed)
    assert dumps.upload().returncode == 0
    assert_complete(weed, dumps, res.dump_dir.name)


def test_no_credentials_anywhere(weed: Weed, dumps: Dumps) -> None:
    name = dumps.add(1 * MiB)
    dumps.s3_config(weed, s3_credentials_file="")
    env = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/dev/null",
           "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_ACCESS_KEY_ID": "",
           "AWS_SECRET_ACCESS_KEY": ""}
    r = dumps.upload(env=env)
    assert r.returncode == 1
    assert "no S3 credentials found" in one_line_error(r.stderr)
    assert_not_complete(weed, dumps, name)
