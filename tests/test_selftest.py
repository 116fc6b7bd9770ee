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


def test_selftest_kdump_compares_pages(tmp_path: Path) -> None:
    """With format: kdump the pages are read back and compared too (issue 8: it said
    PASSED without comparing a page), and a differing page is NOT PASSED."""
    from dumpsaver import selftest

    where = machine(tmp_path)
    cfg = {"DUMPSAVER_CONFIG": str(tmp_path / "c.yaml")}
    (tmp_path / "c.yaml").write_text("format: kdump\nminfree: 0\n")
    assert run_cli("test", *where, "--no-reboot", env=cfg).returncode == 0
    rec = selftest.pending(tmp_path / "state")
    assert rec is not None
    assert run_cli("save", *where, env=cfg).returncode == 0
    (saved,) = [p for p in (tmp_path / "dumps").iterdir() if p.is_dir()]
    info = json.loads((saved / "info.json").read_text())
    assert info["format"] == "kdump"
    v = selftest.verify(rec, [(saved, info)])
    assert v.result is selftest.Result.PASSED, v.text
    assert f"{rec['saved_pages']} pages equal" in v.text
    other = {**rec, "seed": rec["seed"] + 1}  # another machine: its pages differ
    v = selftest.verify(other, [(saved, info)])
    assert v.result is selftest.Result.NOT_PASSED and "pages differ" in v.text
    (saved / "vmcore").write_bytes(b"not a core")
    v = selftest.verify(rec, [(saved, info)])
    assert v.result is selftest.Result.NOT_VERIFIED, v.text


def test_selftest_verdict_is_kept_not_rebuilt(tmp_path: Path) -> None:
    """The record is consumed by the first verdict: later statuses neither rebuild the
    machine nor say NOT PASSED once retention deleted the test dump (issue 8)."""
    import shutil

    where = machine(tmp_path)
    state = tmp_path / "state"
    assert run_cli("test", *where, "--no-reboot").returncode == 0
    assert run_cli("save", *where).returncode == 0
    assert (state / "selftest.json").exists()
    s = json.loads(run_cli("status", "--json", *where).stdout)
    assert s["selftest"]["verdict"] == "PASSED"
    assert not (state / "selftest.json").exists()
    assert json.loads((state / "selftest-result.json").read_text())["result"] == "PASSED"
    for d in (tmp_path / "dumps").iterdir():  # retention took the test dump
        if d.is_dir():
            shutil.rmtree(d)
    s = json.loads(run_cli("status", "--json", *where).stdout)
    assert s["selftest"]["verdict"] == "PASSED" and s["selftest"]["judged_at"]
    # a new test starts afresh
    assert run_cli("test", *where, "--no-reboot").returncode == 0
    assert not (state / "selftest-result.json").exists()
    s = json.loads(run_cli("status", "--json", *where).stdout)
    assert s["selftest"]["verdict"] == "NOT PASSED" and "not been saved" in s["selftest"]["result"]


def test_selftest_needs_a_region(tmp_path: Path) -> None:
    r = run_cli("test", "--sysfs", str(tmp_path / "x"), "--cmdline", "/dev/null", "--no-reboot")
    assert r.returncode == 1 and "no reserved region" in r.stderr and "memmap=" in r.stderr
