"""Finding the dump: sysfs, memmap= checked against /proc/iomem, configured regions."""

from __future__ import annotations

from pathlib import Path

import pytest

from dumpsaver import locate
from dumpsaver.errors import DumpsaverError
from dumpsaver.physmem import Range

IOMEM = """00000000-00000fff : Reserved
00001000-0009fbff : System RAM
00100000-2fffffff : System RAM
  01000000-01ffffff : Kernel code
30000000-30ffffff : Reserved
31000000-3ffdffff : System RAM
fd000000-fdffffff : 0000:00:01.0
"""


def test_parse_memmap() -> None:
    cmd = "root=/dev/vda memmap=16M$0x30000000 memmap=1G@0 memmap=4K$64K,8K$0x100000 quiet"
    assert locate.parse_memmap(cmd) == [
        Range(0x30000000, 0x31000000), Range(0x10000, 0x11000), Range(0x100000, 0x102000)]
    assert locate.parse_memmap("memmap=exactmap memmap=junk$x memmap=") == []


def test_memmap_must_be_reserved_in_iomem(tmp_path: Path) -> None:
    (tmp_path / "cmdline").write_text("memmap=16M$0x30000000\n")
    (tmp_path / "iomem").write_text(IOMEM)
    (c,) = locate.candidates(sysfs=tmp_path / "none", cmdline=tmp_path / "cmdline",
                             iomem=tmp_path / "iomem", use_memmap=True)
    assert c.method == "memmap" and c.header == 0x30000000 and c.release is None
    assert "header" in c.release_action
    (tmp_path / "cmdline").write_text("memmap=16M$0x20000000\n")  # System RAM: refuse
    with pytest.raises(DumpsaverError, match="not marked Reserved"):
        locate.candidates(sysfs=tmp_path / "none", cmdline=tmp_path / "cmdline",
                          iomem=tmp_path / "iomem", use_memmap=True)
    assert locate.candidates(sysfs=tmp_path / "none", cmdline=tmp_path / "cmdline",
                             iomem=tmp_path / "iomem", use_memmap=False) == []


def test_iomem_as_non_root_is_refused(tmp_path: Path) -> None:
    (tmp_path / "iomem").write_text("00000000-00000000 : Reserved\n00000000-00000000 : RAM\n")
    with pytest.raises(DumpsaverError, match="not root"):
        locate.candidates(sysfs=tmp_path / "none", cmdline=None, iomem=tmp_path / "iomem",
                          use_memmap=False, regions=[(0x30000000, 1 << 20)])


def test_configured_region(tmp_path: Path) -> None:
    (tmp_path / "iomem").write_text(IOMEM)
    (c,) = locate.candidates(sysfs=tmp_path / "none", cmdline=None, iomem=tmp_path / "iomem",
                             use_memmap=True, regions=[(0x30100000, 1 << 20)])
    assert c.method == "config" and c.ranges == (Range(0x30100000, 0x30200000),)


def test_sysfs_tree(tmp_path: Path) -> None:
    s = tmp_path / "mcore"
    s.mkdir()
    (s / "version").write_text("1\n")
    (s / "header").write_text("0x30000000\n")
    (s / "ranges").write_text(
        "0000000030000000-0000000030ffffff\n0000000032000000-0000000032000fff\n"
    )
    (s / "release").write_text("")
    c = locate.from_sysfs(s)
    assert c is not None
    assert c.ranges == (Range(0x30000000, 0x31000000), Range(0x32000000, 0x32001000))
    assert c.release == s / "release"
    (s / "version").write_text("2\n")
    with pytest.raises(DumpsaverError, match="unsupported interface version"):
        locate.from_sysfs(s)
    (s / "version").write_text("1\n")
    (s / "ranges").write_text("30000000-20000000\n")
    with pytest.raises(DumpsaverError, match="bad line"):
        locate.from_sysfs(s)
    (s / "ranges").write_text("")
    assert locate.from_sysfs(s) is None
    assert locate.from_sysfs(tmp_path / "absent") is None
