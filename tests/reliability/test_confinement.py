"""(5) Never read outside the dump area.

Every access to the memory device is recorded twice, independently: by PhysMem's
``on_access`` callback and by a spy on os.pread/os.pwrite for the memory file's
inode (which also sees the release, made through its own PhysMem).  Both are judged
against the ground truth (the simulator's reserved ranges), not against what the
saver was told.  Normal, corrupt (see test_corruption: all 10,000 cases go through
the recorder) and hostile dumps.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from dumpsaver import cli
from dumpsaver import format as fmt
from dumpsaver.decode import Dump
from dumpsaver.errors import FormatError
from dumpsaver.physmem import PhysMem, Range

from . import interrupt as I
from .harness import Recorder, Sim, layout_of, report, run_corruption, spy_fd_io


def rewrite_header(m: Sim, **changes: object) -> fmt.Header:
    """A hostile but well-formed header: fields changed, CRC valid."""
    with PhysMem(str(m.mem), m.area) as mem:
        h = Dump(mem, m.header_paddr).header
    new = dataclasses.replace(h, **changes)  # type: ignore[arg-type]
    with open(m.mem, "r+b") as f:
        f.seek(m.header_paddr)
        f.write(new.encode())
    return new


def rewrite_entry(m: Sim, index: int, **changes: int) -> None:
    lay = layout_of(m)
    e = dataclasses.replace(lay.entries[index], **changes)
    pos = lay.phys(lay.header.dir_offset + index * fmt.ENTRY.size)
    with open(m.mem, "r+b") as f:
        f.seek(pos)
        f.write(e.encode())


def save_cli(m: Sim, tmp: Path, *extra: str) -> tuple[int, list[tuple[str, int, int]]]:
    cfg = tmp / "config.yaml"
    cfg.write_text("minfree: 0\n")
    with spy_fd_io(m.mem, list(m.area)) as bad:
        rc = cli.main([*I.save_argv(m, tmp / "dest", tmp / "state", cfg), *extra])
    return rc, bad


def test_normal_save_reads_only_the_area(machines: dict[str, Sim], tmp_path: Path) -> None:
    from dumpsaver import config as config_mod
    from dumpsaver import save as save_mod

    figures = {}
    for name, src in machines.items():
        m = src.copy(tmp_path / name)
        rec = Recorder(list(m.area))
        cand = m.candidate()
        with (
            spy_fd_io(m.mem, list(m.area)) as bad,
            PhysMem(str(m.mem), cand.ranges, on_access=rec) as mem,
        ):
            dump = Dump(mem, cand.header)
            save_mod.save(config_mod.from_mapping({"minfree": 0}, "t"), cand, dump,
                          mem_path=str(m.mem), dest=tmp_path / f"dest-{name}")  # fmt: skip
        assert rec.outside == [] and bad == []
        assert rec.accesses > 0
        assert I.header_magic(m) == fmt.SAVED_MAGIC  # the release write was seen too
        figures[name] = {"accesses": rec.accesses, "bytes": rec.bytes, "outside": 0}
    report("confinement-normal", figures)


def test_cli_save_status_and_rerun_read_only_the_area(machine: Sim, tmp_path: Path) -> None:
    rc, bad = save_cli(machine, tmp_path)
    assert rc == 0 and bad == []
    with spy_fd_io(machine.mem, list(machine.area)) as bad:
        assert cli.main(["status", "--json", "--mem", str(machine.mem), "--sysfs",
                         str(machine.sysfs), "--dest", str(tmp_path / "dest"),
                         "--cmdline", "/dev/null"]) == 0  # fmt: skip
        rc, _ = save_cli(machine, tmp_path)
    assert rc == 0 and bad == []


def test_corrupt_dumps_read_only_the_area(machines: dict[str, Sim], tmp_path: Path) -> None:
    """2,000 corruption cases with the independent pread spy on top of the recorder."""
    m = machines["m2"]  # two extents: the gap between them must never be read
    fig = run_corruption(m, tmp_path, 2000, first_seed=50000, spy=True)
    assert fig["outside_accesses"] == 0 and fig["escaped"] == 0
    assert fig["spied_outside"] == 0
    report("confinement-corrupt", {"cases": fig["cases"], "accesses": fig["accesses"],
                                    "outside": fig["outside_accesses"]})  # fmt: skip


# -- hostile dumps: well-formed, valid checksums, pointing elsewhere ---------------------


def test_extent_beyond_the_reserved_range(machine: Sim, tmp_path: Path) -> None:
    h = rewrite_header(machine)
    last = h.extents[-1]
    big = fmt.Extent(last.paddr, last.length + (1 << 30))
    rewrite_header(machine, extents=(*h.extents[:-1], big))
    rc, bad = save_cli(machine, tmp_path)
    assert rc == 6 and bad == []


def test_extent_elsewhere_in_memory(machine: Sim, tmp_path: Path) -> None:
    """A second extent pointing at kernel memory (page 0): refused, never read."""
    h = rewrite_header(machine)
    first = h.extents[0]
    # same header size: shrink the first extent, add none; instead move the header's
    # one extent's tail: make the layout need more than the first extent
    ext = (fmt.Extent(first.paddr, first.length),)
    rewrite_header(machine, extents=ext)
    with open(machine.mem, "r+b") as f:  # point the extent table at page 0
        f.seek(machine.header_paddr + fmt.FIXED_SIZE)
        f.write(fmt.EXTENT.pack(0, first.length))
        f.seek(machine.header_paddr)
        block = f.read(h.header_bytes)
        f.seek(machine.header_paddr + h.header_bytes - 4)
        f.write(fmt.CRC.pack(fmt.page_crc(block[:-4])))
    rc, bad = save_cli(machine, tmp_path)
    assert rc == 6 and bad == []


@pytest.mark.parametrize("offset", [0, 1 << 20, (1 << 63) - 1, "meta"])
def test_directory_entry_pointing_outside(machine: Sim, tmp_path: Path,
                                          offset: int | str) -> None:  # fmt: skip
    """An entry with a valid CRC pointing outside the data section (into the header,
    the meta data, past the area, at a huge offset): that page is reported damaged,
    nothing is read there, the rest is saved."""
    lay = layout_of(machine)
    i = next(k for k, e in enumerate(lay.entries) if not e.zero)
    off = lay.header.meta_offset if offset == "meta" else int(offset)
    rewrite_entry(machine, i, offset=off)
    rc, bad = save_cli(machine, tmp_path)
    assert rc == 4 and bad == []  # saved, incomplete
    (d,) = I.visible_dumps(tmp_path / "dest")
    info = json.loads((d / "info.json").read_text())
    assert info["pages"]["damaged"] == 1
    assert info["damage"] == {"page data lies outside the data section": 1}


def test_sysfs_header_outside_the_ranges(machine: Sim, tmp_path: Path) -> None:
    (machine.sysfs / "header").write_text("0x0\n")
    rc, bad = save_cli(machine, tmp_path)
    assert rc in (0, 6) and bad == []
    assert I.visible_dumps(tmp_path / "dest") == []
    assert I.header_magic(machine) == fmt.MAGIC


def test_sysfs_ranges_shorter_than_the_dump(machine: Sim, tmp_path: Path) -> None:
    """The kernel reserved less than the header claims: refused; the unreserved tail
    is never read."""
    a = machine.area[0]
    (machine.sysfs / "ranges").write_text(f"{a.start:016x}-{a.start + 8191:016x}\n")
    with spy_fd_io(machine.mem, [Range(a.start, a.start + 8192)]) as bad:
        cfg = tmp_path / "c.yaml"
        cfg.write_text("minfree: 0\n")
        rc = cli.main(I.save_argv(machine, tmp_path / "dest", tmp_path / "state", cfg))
    assert rc == 6 and bad == []


def test_memmap_region_is_the_only_thing_read(machine: Sim, tmp_path: Path) -> None:
    """Found through memmap= and /proc/iomem instead of sysfs: the region given there
    is the limit."""
    a = machine.area[0]
    size = a.end - a.start
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"root=/dev/vda memmap={size}${a.start:#x} quiet\n")
    iomem = tmp_path / "iomem"
    top = machine.manifest["memory"]
    iomem.write_text(f"00000000-{a.start - 1:08x} : System RAM\n"
                     f"{a.start:08x}-{a.end - 1:08x} : Reserved\n"
                     f"{a.end:08x}-{top - 1:08x} : System RAM\n")  # fmt: skip
    cfg = tmp_path / "c.yaml"
    cfg.write_text("minfree: 0\n")
    argv = ["--config", str(cfg), "save", "--mem", str(machine.mem), "--sysfs",
            str(tmp_path / "nosys"), "--cmdline", str(cmdline), "--iomem", str(iomem),
            "--dest", str(tmp_path / "dest"), "--state-dir", str(tmp_path / "st"),
            "--no-restart"]  # fmt: skip
    with spy_fd_io(machine.mem, [a]) as bad:
        rc = cli.main(argv)
    assert bad == []
    assert rc == 0
    assert I.header_magic(machine) == fmt.SAVED_MAGIC


def test_physmem_refuses_before_reading() -> None:
    """The guard itself: a read outside is refused before any pread."""
    import tempfile

    with tempfile.NamedTemporaryFile() as f:
        f.truncate(1 << 16)
        rec = Recorder([Range(4096, 8192)])
        with spy_fd_io(Path(f.name), [Range(4096, 8192)]) as bad, \
                PhysMem(f.name, [Range(4096, 8192)], on_access=rec) as mem:  # fmt: skip
            for start, n in ((0, 1), (4095, 2), (8191, 2), (8192, 1), (1 << 40, 1)):
                with pytest.raises(FormatError):
                    mem.read(start, n)
            mem.read(4096, 4096)
        assert bad == [] and rec.outside == [] and rec.accesses == 1
