"""The CLI's fixed interface (other tooling relies on it) and its error behaviour."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from dumpsaver import format as fmt
from dumpsaver import locate
from dumpsaver.errors import EXIT_CORRUPT, Exit

from .conftest import REPO, hermetic_config, run_cli


def test_simulate_save_status_fixed_interface(tmp_path: Path) -> None:
    d, dest = tmp_path / "m", tmp_path / "dest"
    r = run_cli("simulate", "--memory", "32M", "--profile", "idle", "--seed", "1", "--into", str(d))
    assert r.returncode == 0, r.stderr
    for name in ("mem", "before.mem", "manifest.json", "sys/header", "sys/ranges", "sys/release"):
        assert (d / name).exists(), name
    m = json.loads((d / "manifest.json").read_text())
    assert m["page_size"] == 4096
    assert all(a <= b for a, b in m["saved"]) and m["saved"] == sorted(m["saved"])
    assert sum(m["classes"].values()) == (32 << 20) // 4096
    assert set(m["classes"]) >= {"kernel_text", "kernel_data", "page_table", "free",
                                 "user_anon", "user_shared", "file_cache", "locked"}
    area = m["dump_area"]
    assert all(a < b for a, b in area) and m["compressed_bytes"] <= sum(b - a for a, b in area)
    cand = locate.from_sysfs(d / "sys")
    assert cand is not None and cand.header == area[0][0]

    r = run_cli("save", "--mem", str(d / "mem"), "--sysfs", str(d / "sys"), "--dest", str(dest),
                "--no-restart", "--cmdline", "/dev/null")
    assert r.returncode == 0, r.stderr
    (saved,) = [p for p in dest.iterdir() if not p.name.startswith(".")]
    assert (saved / "vmcore").is_file() and (saved / "info.json").is_file()

    r = run_cli("status", "--json", "--mem", str(d / "mem"), "--sysfs", str(d / "sys"),
                "--dest", str(dest), "--cmdline", "/dev/null")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["waiting"] is None
    assert s["areas"][0]["method"] == "sysfs" and "already saved" in s["areas"][0]["dump"]
    assert s["dumps"][0]["id"] == saved.name and s["dumps"][0]["complete"] is True
    assert s["free_bytes"] > 0 and s["minfree"] == 64 << 20
    # psutil's figures: the dump directory's file system, RAM and the areas' share
    import psutil

    assert s["filesystem"]["free_bytes"] == s["free_bytes"] and s["filesystem"]["fstype"]
    assert s["memory"]["total_bytes"] == psutil.virtual_memory().total
    area_bytes = sum(b - a for a, b in s["areas"][0]["ranges"])
    assert s["memory"]["dump_area_bytes"] == area_bytes > 0
    assert s["boot_time"].endswith("UTC")
    info = json.loads((saved / "info.json").read_text())
    assert info["peak_rss_bytes"] > 1 << 20 and info["identity"].startswith(info["dump_id"])

    r = run_cli("list", "--dest", str(dest))
    assert saved.name in r.stdout and "complete" in r.stdout
    r = run_cli("info", saved.name[:10], "--dest", str(dest), "--json")
    assert json.loads(r.stdout)["id"] == saved.name
    r = run_cli("info", "nope", "--dest", str(dest))
    assert r.returncode == 1 and r.stderr.startswith("error: no saved dump 'nope'")


def test_status_shows_a_waiting_dump(tmp_path: Path) -> None:
    d = tmp_path / "m"
    run_cli("simulate", "--memory", "8M", "--seed", "2", "--panic", "BUG: oops", "--into", str(d))
    r = run_cli("status", "--mem", str(d / "mem"), "--sysfs", str(d / "sys"),
                "--dest", str(tmp_path / "none"), "--cmdline", "/dev/null")
    assert r.returncode == Exit.DUMP_WAITING, r.stderr  # for monitoring
    assert "verdict:     dump " in r.stdout and "is waiting to be saved" in r.stdout
    assert "waiting:     dump " in r.stdout and "panic:     BUG: oops" in r.stdout
    assert "via sysfs" in r.stdout and "release:" in r.stdout and "saved dumps: none" in r.stdout
    r = run_cli("save", "--check", "--mem", str(d / "mem"), "--sysfs", str(d / "sys"),
                "--cmdline", "/dev/null")
    assert r.returncode == 0


def test_no_dump_is_quiet_success(tmp_path: Path) -> None:
    r = run_cli("save", "--sysfs", str(tmp_path / "nosys"), "--cmdline", "/dev/null",
                "--dest", str(tmp_path / "d"), "--no-restart")
    assert r.returncode == 0 and "no dump" in r.stdout and not (tmp_path / "d").exists()
    r = run_cli("save", "--check", "--sysfs", str(tmp_path / "nosys"), "--cmdline", "/dev/null")
    assert r.returncode == 3


def test_expected_failures_are_one_line(tmp_path: Path) -> None:
    d = tmp_path / "m"
    run_cli("simulate", "--memory", "8M", "--into", str(d))
    r = run_cli("save", "--mem", str(tmp_path / "missing"), "--sysfs", str(d / "sys"),
                "--cmdline", "/dev/null", "--dest", str(tmp_path / "d"))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: cannot open memory device")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("colour: blue\n")
    r = run_cli("--config", str(cfg), "status")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "'colour'" in r.stderr
    r = run_cli("simulate", "--memory", "lots", "--into", str(tmp_path / "x"))
    assert r.returncode == 2 and r.stderr.startswith("error: bad size 'lots'")  # usage
    (d / "sys" / "header").write_text("0xnothex\n")
    r = run_cli("save", "--mem", str(d / "mem"), "--sysfs", str(d / "sys"), "--cmdline",
                "/dev/null", "--dest", str(tmp_path / "d"))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "bad " in r.stderr


def test_header_pointing_elsewhere_in_sysfs(tmp_path: Path) -> None:
    d = tmp_path / "m"
    run_cli("simulate", "--memory", "8M", "--into", str(d))
    (d / "sys" / "header").write_text("0x0\n")  # not inside the reserved ranges
    r = run_cli("save", "--mem", str(d / "mem"), "--sysfs", str(d / "sys"), "--cmdline",
                "/dev/null", "--dest", str(tmp_path / "d"), "--no-restart")
    assert r.returncode == EXIT_CORRUPT and "outside the reserved dump area" in r.stderr


def test_no_dump_fast_path(tmp_path: Path) -> None:
    """The boot job decides 'no dump' from two small files, before heavy imports."""
    from dumpsaver import cli

    cfg, hdr, cmd = tmp_path / "c.yaml", tmp_path / "header", tmp_path / "cmdline"
    cmd.write_text("root=/dev/vda quiet memmap=1G@0\n")
    args = {"config": str(cfg), "sysfs_header": str(hdr), "cmdline": str(cmd)}
    assert cli.surely_no_dump(**args)
    cfg.write_text("# only comments\n\n#minfree: 1G\n")
    assert cli.surely_no_dump(**args)
    # a memmap= reservation: decided by the magic at its start (read confined to it)
    iomem, mem = tmp_path / "iomem", tmp_path / "mem"
    iomem.write_text("00100000-2fffffff : System RAM\n30000000-30ffffff : Reserved\n")
    with open(mem, "wb") as f:
        f.truncate(0x31000000)
    args.update(iomem=str(iomem), mem=str(mem))
    cmd.write_text("root=/dev/vda memmap=16M$0x30000000\n")
    assert cli.surely_no_dump(**args)  # zeros there: no dump
    with open(mem, "r+b") as f:
        f.seek(0x30000000)
        f.write(fmt.SAVED_MAGIC)
    assert cli.surely_no_dump(**args)  # an already saved dump
    with open(mem, "r+b") as f:
        f.seek(0x30000000)
        f.write(fmt.MAGIC)
    assert not cli.surely_no_dump(**args)  # a dump: the full path saves it
    iomem.write_text("30000000-30ffffff : System RAM\n")
    assert not cli.surely_no_dump(**args)  # not reserved: the full path says why
    cmd.write_text("root=/dev/vda\n")
    hdr.write_text("0x30000000\n")
    assert not cli.surely_no_dump(**args)
    hdr.unlink()
    cfg.write_text("regions: ['0x30000000:16M']\n")  # a setting may point at a dump
    assert not cli.surely_no_dump(**args)
    cfg.write_text("minfree: 1G\n")  # one that cannot: the fast path (tests/test_early.py)
    assert cli.surely_no_dump(**args)
    cfg.write_text("sysfs: /elsewhere\n")
    assert not cli.surely_no_dump(**args)
    assert not cli.surely_no_dump(config=str(cfg), sysfs_header=str(hdr),
                                  cmdline=str(tmp_path / "unreadable"))


def test_exit_codes_agree_in_help_and_man_page() -> None:
    """One table (errors.Exit): the --help epilog is made from it, and dumpsaver(8)'s
    EXIT STATUS lists the same codes with the same meaning."""
    import re

    from dumpsaver.commands import parser
    from dumpsaver.errors import Exit

    epilog = parser().epilog or ""
    for code in Exit:
        assert f"{int(code)} {code.meaning}" in epilog, code
    man = (REPO / "docs" / "man" / "dumpsaver.8").read_text()
    section = man.split(".SH EXIT STATUS", 1)[1].split("\n.SH ", 1)[0]
    entries = dict(re.findall(r"^\.TP\n\.B (\d+)\n(.*?)(?=^\.TP|\Z)", section, re.M | re.S))
    assert sorted(int(c) for c in entries) == [int(c) for c in Exit]
    # each man entry says what the table's entry says (a key word of it)
    words = {Exit.OK: "Success", Exit.FAILURE: "Failure", Exit.USAGE: "configuration",
             Exit.NO_DUMP: "No dump", Exit.INCOMPLETE: "incomplete", Exit.NO_SPACE: "space",
             Exit.CORRUPT: "header", Exit.BUSY: "lock", Exit.GAVE_UP: "attempts",
             Exit.NO_PERMISSION: "ermission denied", Exit.NOT_READY: "No dump area",
             Exit.DUMP_WAITING: "waiting", Exit.NOT_ARMED: "not armed"}
    for code, word in words.items():
        assert word in entries[str(int(code))], (code, entries[str(int(code))])


def test_cli_under_test_never_reads_the_host_config(tmp_path: Path) -> None:
    """run_cli points DUMPSAVER_CONFIG at the session's hermetic configuration (dump and
    state directories in a temp directory), and the program honours it on both paths
    (the no-dump fast path and the full one)."""
    r = run_cli("status", "--json", "--sysfs", str(tmp_path / "no"), "--cmdline", "/dev/null")
    s = json.loads(r.stdout)
    assert r.returncode == Exit.NOT_READY and s["config"] == str(hermetic_config())
    assert s["dump_dir"].startswith(tempfile.gettempdir()), s["dump_dir"]
    r = run_cli("save", "--sysfs", str(tmp_path / "no"), "--cmdline", "/dev/null",
                env={"DUMPSAVER_CONFIG": os.devnull})
    assert r.returncode == 0 and "no dump" in r.stdout  # the fast path, with the defaults
    bad = tmp_path / "bad.yaml"
    bad.write_text("colour: blue\n")
    r = run_cli("save", env={"DUMPSAVER_CONFIG": str(bad)})  # not the fast path: it has a key
    assert r.returncode == 2 and str(bad) in r.stderr
