"""`dumpsaver test` through a memmap= reservation, with an image file as /dev/mem."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import run_cli

IOMEM = (
    "00100000-2fffffff : System RAM\n30000000-30ffffff : Reserved\n"
    "31000000-3fffffff : System RAM\n"
)


def machine(tmp_path: Path) -> list[str]:
    mem = tmp_path / "mem"
    with open(mem, "wb") as f:
        f.truncate(1 << 30)  # a 1 GiB guest, sparse
    (tmp_path / "cmdline").write_text("root=/dev/vda memmap=16M$0x30000000 panic=1\n")
    (tmp_path / "iomem").write_text(IOMEM)
    return ["--mem", str(mem), "--sysfs", str(tmp_path / "nosys"), "--cmdline",
            str(tmp_path / "cmdline"), "--iomem", str(tmp_path / "iomem"),
            "--dest", str(tmp_path / "dumps"), "--state-dir", str(tmp_path / "state")]


def test_selftest_round_trip(tmp_path: Path) -> None:
    where = machine(tmp_path)
    r = run_cli("test", *where, "--no-reboot")
    assert r.returncode == 0, r.stderr
    # nothing outside the region was written
    with open(tmp_path / "mem", "rb") as f:
        f.seek(0x30000000)
        assert f.read(8) == b"MCOREDMP"
    assert (tmp_path / "mem").stat().st_blocks * 512 <= 16 << 20
    r = run_cli("test", *where, "--no-reboot")
    assert r.returncode == 1 and "refusing to overwrite" in r.stderr
    s = json.loads(run_cli("status", "--json", *where).stdout)
    assert s["selftest"]["ok"] is False and s["waiting"] is not None
    assert s["areas"][0]["method"] == "memmap"
    # the next boot: the unit saves it and does not reboot for a test dump
    r = run_cli("save", *where)
    assert r.returncode == 0, r.stderr
    assert "no restart needed" in r.stdout
    s = json.loads(run_cli("status", "--json", *where).stdout)
    assert s["selftest"]["ok"] is True, s["selftest"]
    assert "pages equal the simulated machine" in s["selftest"]["result"]
    assert s["waiting"] is None
    out = run_cli("status", *where).stdout
    assert "self-test:   PASSED" in out


def test_selftest_needs_a_region(tmp_path: Path) -> None:
    r = run_cli("test", "--sysfs", str(tmp_path / "x"), "--cmdline", "/dev/null", "--no-reboot")
    assert r.returncode == 1 and "no reserved region" in r.stderr and "memmap=" in r.stderr
