"""memmap=SIZE!ADDR persistent memory: found through the nvdimm sysfs tree, read through
/dev/pmemN or /dev/daxN.M, saved, given back to the system as movable RAM, armed over.

The kernel side here is tests/pmemfake.FakePmem: a FAKE sysfs tree modelled on the real
layout, plain files standing in for /dev/pmem0 and /dev/dax0.0, and a runner that plays
modprobe, ndctl and daxctl.  Only the QEMU tier (tests/e2e) shows a real kernel keeping
the range, device-dax mapping it and RAM surviving the reset; these tests prove the
saver's decisions and its reading of the tree."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import pytest

from dumpsaver import arm, boot, config, hotplug, locate, pmem, pmemio, readback, simulate
from dumpsaver import format as fmt
from dumpsaver.errors import DumpsaverError, Exit, FormatError, OutsideAreaError
from dumpsaver.physmem import Range
from dumpsaver.save import SaveStatus, open_dump

from .pmemfake import BLOCK, MEMTOTAL_KB, FakePmem, MiB

DUMP = Range(0x40000000, 0x50000000)  # 272M!0x3F000000: the whole 256 MiB comes back
CMDLINE = "root=/dev/vda memmap=272M!0x3F000000 panic=1"


def where(tmp: Path, fake: FakePmem, cmdline: str = CMDLINE) -> boot.Where:
    (tmp / "cmdline").write_text(cmdline + "\n")
    (tmp / "iomem").write_text("00100000-3effffff : System RAM\n"
                               "3f000000-4fffffff : Persistent Memory (legacy)\n"
                               "50000000-7fffffff : System RAM\n")
    return boot.Where(mem=str(tmp / "no-dev-mem"), sysfs=tmp / "no-mcore",
                      cmdline=tmp / "cmdline", iomem=tmp / "iomem", dest=tmp / "dumps",
                      state_dir=tmp / "state", pmem=fake.paths)


def cfg(tmp: Path) -> config.Config:
    return config.from_mapping({"dump_dir": str(tmp / "dumps"), "state_dir": str(tmp / "state"),
                                "pmem_wait": 0}, "test")


def crash_into(fake: FakePmem, tmp: Path, at: int = DUMP.start, seed: int = 7) -> simulate.Manifest:
    """The panic side: a simulated machine's dump written into the dump range (RAM the
    kernel owns while the range is given back), header at ``at``."""
    img = tmp / "sim" / "img"
    img.parent.mkdir(parents=True, exist_ok=True)
    img.touch()
    m = simulate.simulate(tmp / "sim", memory=4 * MiB, profile="idle", seed=seed,
                          target_mem=str(img), target_region=(at, DUMP.end - at))
    with open(img, "rb") as f:
        f.seek(at)
        fake.write_phys(at, f.read(m.compressed_bytes))
    return m


# -- the rule and the parsing --------------------------------------------------------------


def test_the_dump_range_rule() -> None:
    """Whole memory blocks inside the device-dax range: the figures measured in QEMU."""
    six = 6 * MiB  # devdax's metadata at the front of a 272 MiB namespace
    assert pmem.dump_range(Range(0x3F000000 + six, 0x50000000), BLOCK) == DUMP  # all 256 MiB
    assert pmem.dump_range(Range(0x40000000 + six, 0x50000000), BLOCK) == \
        Range(0x48000000, 0x50000000)  # 256M!0x40000000: only 128 MiB
    assert pmem.dump_range(Range(0x40000000 + six, 0x47000000), BLOCK) is None
    with pytest.raises(DumpsaverError, match="block size"):
        pmem.dump_range(DUMP, 3 * MiB)


def test_sizes_to_choose() -> None:
    """The headroom below the first block, and the advice for a range that loses one."""
    assert [pmem.headroom(n) >> 20 for n in (256 * MiB, 1 << 30, 4 << 30)] == [16, 32, 80]
    lost = pmem.advice(Range(0x40000000, 0x50000000), Range(0x48000000, 0x50000000), BLOCK)
    assert lost and "only 128 MiB of the 256 MiB" in lost and "memmap=272M!0x3f000000" in lost
    assert pmem.advice(Range(0x3F000000, 0x50000000), DUMP, BLOCK) is None


def test_parse_memmap_both_forms() -> None:
    cmd = "memmap=272M!0x3F000000 memmap=16M$0x30000000 memmap=1G!4G,8M!0x100000 memmap=x!y"
    assert locate.parse_memmap_pmem(cmd) == [
        Range(0x3F000000, 0x50000000), Range(4 << 30, 5 << 30), Range(0x100000, 0x900000)]
    assert locate.parse_memmap(cmd) == [Range(0x30000000, 0x31000000)]


# -- locating ----------------------------------------------------------------------------


def test_fresh_boot_is_fsdax_read_through_pmem0(tmp_path: Path) -> None:
    fake = FakePmem(tmp_path / "k")
    w = where(tmp_path, fake, CMDLINE + " memmap=16M$0x30000000")
    (tmp_path / "iomem").write_text("30000000-30ffffff : Reserved\n")
    c, mm = w.candidates(cfg(tmp_path))
    assert c.method == locate.LocateMethod.PMEM and mm.method == locate.LocateMethod.MEMMAP
    assert c.pmem is not None and c.pmem.mode == "memory" and c.pmem.dax is None
    assert c.pmem.device() == (str(fake.paths.dev / "pmem0"), 0x3F000000, False)
    # before devdax the dump range is probed: any whole block past the namespace's start
    assert c.ranges == (DUMP,) and c.header == DUMP.start
    assert "read through" in c.device_note and "pmem0" in c.device_note


def test_after_devdax_read_through_dax(tmp_path: Path) -> None:
    fake = FakePmem(tmp_path / "k")
    fake.run(["ndctl", "create-namespace", "-f", "-e", "namespace0.0", "--mode=devdax"])
    (c,) = where(tmp_path, fake).candidates(cfg(tmp_path))
    assert c.pmem is not None and c.pmem.dax is not None
    assert c.pmem.dax.range == Range(0x3F600000, 0x50000000)
    assert c.ranges == (DUMP,) and c.header == DUMP.start
    dev, base, is_dax = c.pmem.device() or ("", 0, False)
    assert dev.endswith("/dev/dax0.0") and base == 0x3F600000 and is_dax
    fake.write_phys(DUMP.start, b"ABCDEFGH")
    seen: list[tuple[int, int]] = []
    with pmemio.open_area(c, "/dev/null", on_access=lambda a, n: seen.append((a, n))) as mem:
        assert isinstance(mem, pmemio.DaxMem)
        assert mem.read(DUMP.start, 8) == b"ABCDEFGH"
        with pytest.raises(OutsideAreaError):
            mem.read(DUMP.start - 8, 16)  # devdax metadata: never touched
    assert seen == [(DUMP.start, 8)]


def test_no_memmap_bang_costs_nothing(tmp_path: Path) -> None:
    """Without memmap=! neither the tree is read nor a module loaded."""
    fake = FakePmem(tmp_path / "k", loaded=False)
    w = where(tmp_path, fake, "root=/dev/vda quiet")
    assert boot.prepare_pmem(cfg(tmp_path), w) == [] and fake.calls == []
    assert w.candidates(cfg(tmp_path)) == []


def test_modules_loaded_and_waited_for(tmp_path: Path) -> None:
    fake = FakePmem(tmp_path / "k", loaded=False)
    w = where(tmp_path, fake)
    assert w.candidates(cfg(tmp_path)) == []  # udev has not loaded nd_e820 yet
    assert boot.prepare_pmem(cfg(tmp_path), w) == []
    assert fake.calls == [["modprobe", "-a", *pmem.MODULES]]
    assert len(w.candidates(cfg(tmp_path))) == 1


def test_the_wait_is_bounded(tmp_path: Path) -> None:
    fake = FakePmem(tmp_path / "k", loaded=False)
    now = [0.0]
    missing = hotplug.wait_for(fake.paths, [Range(0x3F000000, 0x50000000)], 5.0,
                               sleep=lambda s: now.__setitem__(0, now[0] + s),
                               clock=lambda: now[0])
    assert 5.0 <= now[0] < 5.2 and missing and "no nvdimm region" in missing[0]


# -- the boot job ---------------------------------------------------------------------------


def test_clean_boot_gives_the_range_back(tmp_path: Path) -> None:
    """A fresh boot, no dump: devdax, then system-ram; all 256 MiB online movable."""
    fake = FakePmem(tmp_path / "k")
    w, c = where(tmp_path, fake), cfg(tmp_path)
    out = boot.run(c, w, boot.Options())
    assert out.exit == Exit.OK and out.status is None
    assert [a[0] for a in fake.calls] == ["ndctl", "daxctl"]
    gave = "gave back namespace0.0: 256.0 MiB online as movable RAM"
    assert any(gave in n for n in out.notes), out.notes
    assert any(f"MemTotal {MEMTOTAL_KB} -> {MEMTOTAL_KB + 262144} kB" in n for n in out.notes)
    blocks = pmem.memory_blocks(fake.paths, DUMP)
    assert [b.index for b in blocks] == [8, 9] and all(b.online_movable for b in blocks)
    # the next run (by hand) finds it given back and leaves it alone
    fake.calls.clear()
    out = boot.run(c, w, boot.Options())
    assert fake.calls == [] and any("System RAM now" in n for n in out.notes)


def test_stale_user_pages_after_a_clean_reboot_are_no_dump(tmp_path: Path) -> None:
    fake = FakePmem(tmp_path / "k")
    w, c = where(tmp_path, fake), cfg(tmp_path)
    boot.run(c, w, boot.Options())
    fake.write_phys(DUMP.start, os.urandom(1 << 20))  # user pages lived there
    fake.crash_reboot()  # a clean reboot keeps RAM just the same
    fake.calls.clear()
    out = boot.run(c, w, boot.Options())
    assert out.status is None and [a[0] for a in fake.calls] == ["daxctl"]
    assert not (tmp_path / "dumps").exists() or not any((tmp_path / "dumps").iterdir())


def test_crash_cycle_saves_then_gives_back(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """Boot 1 gives back; the panic writes a dump there; boot 2 reads it through
    /dev/dax0.0, saves it, invalidates the header and gives the range back again."""
    fake = FakePmem(tmp_path / "k")
    w, c = where(tmp_path, fake), cfg(tmp_path)
    boot.run(c, w, boot.Options())
    m = crash_into(fake, tmp_path)
    fake.crash_reboot()
    (cand,) = w.candidates(c)
    assert cand.pmem is not None and cand.pmem.mode == "dax" and not cand.pmem.given_back
    # a waiting dump is never given back, whoever asks
    fake.calls.clear()
    with pytest.raises(DumpsaverError, match="waits unsaved"):
        hotplug.give_back(cand.pmem, magic=fmt.MAGIC)
    assert fake.calls == []
    with caplog.at_level(logging.INFO, logger="dumpsaver"):
        out = boot.run(c, w, boot.Options())
    assert out.status == SaveStatus.SAVED and out.dump_id == m.dump_id
    found = [r for r in caplog.records if "found dump" in r.getMessage()]
    assert found and "read through " + str(fake.paths.dev / "dax0.0") in found[0].getMessage()
    released = [r.getMessage() for r in caplog.records if "gave back" in r.getMessage()]
    assert released and "256.0 MiB online as movable RAM" in released[0]
    assert [a[0] for a in fake.calls] == ["daxctl"]
    assert fake.read_phys(DUMP.start, 8) == fmt.SAVED_MAGIC
    got = readback.pages(out.dump_dir / "vmcore", "elf", m.page_size)  # type: ignore[operator]
    before = (tmp_path / "sim" / "before.mem").read_bytes()
    ps = m.page_size
    saved = [p for a, b in m.saved for p in range(a, b + 1)]
    assert saved and all(got[p] == before[p * ps : (p + 1) * ps] for p in saved)
    assert all(b.online_movable for b in pmem.memory_blocks(fake.paths, DUMP))


def test_interrupted_between_invalidate_and_give_back(tmp_path: Path) -> None:
    """The header says saved but the range is still reserved (a reset, or daxctl
    failed): the next boot gives it back without saving anything."""
    fake = FakePmem(tmp_path / "k")
    w, c = where(tmp_path, fake), cfg(tmp_path)
    boot.run(c, w, boot.Options())
    crash_into(fake, tmp_path)
    fake.crash_reboot()
    fake.fail["daxctl"] = "failed to reconfigure dax0.0"
    with pytest.raises(DumpsaverError, match=r"could not release the dump area.*daxctl"):
        boot.run(c, w, boot.Options())
    assert fake.read_phys(DUMP.start, 8) == fmt.SAVED_MAGIC  # saved, header invalidated
    del fake.fail["daxctl"]
    fake.crash_reboot()
    out = boot.run(c, w, boot.Options())
    assert out.status is None and any("256.0 MiB online as movable" in n for n in out.notes)


def test_magic_without_a_valid_header_is_not_a_dump(tmp_path: Path) -> None:
    """memmap=! memory holds user pages between crashes: a page that begins with the dump
    magic but carries no header its CRC vouches for is their data (issue 11: the header
    and its CRC decide), so the range is given back, saying why, not held at every boot.
    By hand, --force still salvages what it can first."""
    fake = FakePmem(tmp_path / "k")
    w, c = where(tmp_path, fake), cfg(tmp_path)
    boot.run(c, w, boot.Options())
    crash_into(fake, tmp_path)
    fake.write_phys(DUMP.start + 40, b"\xff\xff\xff\xff")  # inside the fixed header
    fake.crash_reboot()
    fake.calls.clear()
    salvaged = boot.run(c, w, boot.Options(force=True, keep=True))  # by hand: still kept
    assert salvaged.status is not None and fake.calls == []
    out = boot.run(c, w, boot.Options())
    assert out.status is None
    assert any("not a dump" in n and "checksum mismatch" in n for n in out.notes)
    assert any("256.0 MiB online as movable" in n for n in out.notes)
    assert any(call[:2] == ["daxctl", "reconfigure-device"] for call in fake.calls)


def test_header_pointing_outside_the_range(tmp_path: Path) -> None:
    """A header (valid CRC) whose extent runs past the dump range: refused in one line,
    nothing given back, the bytes stay."""
    fake = FakePmem(tmp_path / "k")
    w, c = where(tmp_path, fake), cfg(tmp_path)
    boot.run(c, w, boot.Options())
    crash_into(fake, tmp_path)
    block = fake.read_phys(DUMP.start, 4096)
    h = fmt.decode_header(block[: fmt.peek_header_size(block[: fmt.FIXED_SIZE])])
    bad = dataclasses.replace(h, extents=(fmt.Extent(DUMP.start, 512 * MiB),))
    fake.write_phys(DUMP.start, bad.encode())
    fake.crash_reboot()
    fake.calls.clear()
    (cand,) = w.candidates(c)
    with pytest.raises(FormatError, match="outside the reserved dump area") as e:
        open_dump(cand, w.mem)
    assert "\n" not in e.value.message
    with pytest.raises(FormatError):
        boot.run(c, w, boot.Options())
    assert fake.calls == [] and fake.read_phys(DUMP.start, 8) == fmt.MAGIC


# -- status and arm ----------------------------------------------------------------------


def test_status_says_how_it_is_read_and_what_came_back(tmp_path: Path) -> None:
    from dumpsaver import status

    fake = FakePmem(tmp_path / "k")
    w, c = where(tmp_path, fake), cfg(tmp_path)
    s = status.collect(c, w)
    (a,) = s.areas
    assert "read through" in a.access and a.access.count("/dev/pmem0") == 1
    assert a.given_back == 0
    boot.run(c, w, boot.Options())
    (a,) = status.collect(c, w).areas
    assert a.given_back == 256 * MiB and a.not_movable == [] and a.advice is None
    assert a.mem_total == (MEMTOTAL_KB + 262144) * 1024
    assert "given back to the system" in a.access


def test_status_advises_a_better_memmap(tmp_path: Path) -> None:
    from dumpsaver import status

    fake = FakePmem(tmp_path / "k", size=256 * MiB, addr=0x40000000)
    w, c = where(tmp_path, fake, "memmap=256M!0x40000000"), cfg(tmp_path)
    out = boot.run(c, w, boot.Options())
    assert any("128.0 MiB online as movable RAM" in n for n in out.notes), out.notes
    (a,) = status.collect(c, w).areas
    assert a.given_back == 128 * MiB and a.advice and "memmap=272M!0x3f000000" in a.advice


def test_arm_over_the_dump_range_only_when_all_movable(tmp_path: Path) -> None:
    from .test_kmod_arm import FakeKernel

    fake = FakePmem(tmp_path / "k")
    w, c = where(tmp_path, fake), cfg(tmp_path)
    k = FakeKernel(tmp_path / "kernel")
    with pytest.raises(DumpsaverError, match="not online RAM yet") as e:
        arm.arm(w.candidates(c), w.mem, paths=k.paths, runner=k.run)
    assert e.value.hint and "daxctl" in e.value.hint and k.calls == []
    boot.run(c, w, boot.Options())
    blk = fake.paths.memory / "memory9"
    (blk / "valid_zones").write_text("Normal\n")  # onlined as kernel memory: refused
    with pytest.raises(DumpsaverError, match=r"not all online in ZONE_MOVABLE: memory9 online"):
        arm.arm(w.candidates(c), w.mem, paths=k.paths, runner=k.run)
    (blk / "valid_zones").write_text("Movable\n")
    st = arm.arm(w.candidates(c), w.mem, paths=k.paths, runner=k.run)
    assert st.armed and k.calls[-1][:4] == ["modprobe", "dumpsaver", "region_start=0x40000000",
                                            "region_size=0x10000000"]


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(("rel", "text", "match"), [
    ("devices/platform/e820_pmem/ndbus0/region0/namespace0.0/mode", "\x1b[31mevil", "characters"),
    ("devices/platform/e820_pmem/ndbus0/region0/namespace0.0/mode", "fancy", "unknown mode"),
    ("devices/platform/e820_pmem/ndbus0/region0/namespace0.0/resource", "zz", "not a hex"),
    ("devices/platform/e820_pmem/ndbus0/region0/namespace0.0/size", "9" * 30, "beyond"),
    ("devices/platform/e820_pmem/ndbus0/region0/namespace0.0/size", "999999999999",
     "outside region0"),
    ("devices/system/memory/block_size_bytes", "3000", "bad block size"),
    ("devices/platform/e820_pmem/ndbus0/region0/namespace0.0/mode", "x" * 5000, "longer"),
])
def test_hostile_sysfs_is_one_line(tmp_path: Path, rel: str, text: str, match: str) -> None:
    fake = FakePmem(tmp_path / "k")
    (fake.sys / rel).write_text(text + "\n")
    with pytest.raises(DumpsaverError, match=match) as e:
        where(tmp_path, fake).candidates(cfg(tmp_path))
    assert "\n" not in e.value.message


def test_dax_device_outside_its_namespace(tmp_path: Path) -> None:
    fake = FakePmem(tmp_path / "k")
    fake.run(["ndctl", "create-namespace", "-f", "-e", "namespace0.0", "--mode=devdax"])
    fake.crash_reboot()
    d = fake.bus / "region0/dax0.1/dax0.0"
    (d / "resource").write_text("0x60000000\n")
    with pytest.raises(DumpsaverError, match=r"is not inside namespace0\.0") as e:
        where(tmp_path, fake).candidates(cfg(tmp_path))
    assert "\n" not in e.value.message
    (d / "resource").write_text("0x3f600000\n")
    bus = fake.paths.dax / "dax0.0"
    bus.unlink()
    bus.symlink_to(fake.bus / "region0/dax0.0")  # the bus names another device
    with pytest.raises(DumpsaverError, match="is not the device under"):
        where(tmp_path, fake).candidates(cfg(tmp_path))
    bus.unlink()
    bus.symlink_to(d)
    (d / "size").write_text(str(64 * MiB) + "\n")  # no whole block inside
    with pytest.raises(DumpsaverError, match="no whole 128 MiB memory block"):
        where(tmp_path, fake).candidates(cfg(tmp_path))


def test_missing_tools_keep_the_range_reserved(tmp_path: Path) -> None:
    fake = FakePmem(tmp_path / "k")
    fake.fail["ndctl"] = "ndctl is not installed"
    w, c = where(tmp_path, fake), cfg(tmp_path)
    out = boot.run(c, w, boot.Options())
    assert out.exit == Exit.OK and any("ndctl is not installed" in n for n in out.notes)
    assert fake.mode == "memory" and pmem.memory_blocks(fake.paths, DUMP) == []


def test_real_runner_says_which_tool_is_missing() -> None:
    with pytest.raises(DumpsaverError, match="is not installed") as e:
        hotplug.run(["/nonexistent/ndctl", "list"])
    assert e.value.hint and "ndctl daxctl" in e.value.hint


def test_fast_path_never_skips_memmap_bang(tmp_path: Path) -> None:
    """Every boot with memmap=! has work to do: give the range back."""
    from dumpsaver import cli

    args = {"config": str(tmp_path / "c.yaml"), "sysfs_header": str(tmp_path / "none"),
            "cmdline": str(tmp_path / "cmdline")}
    (tmp_path / "cmdline").write_text("root=/dev/vda\n")
    assert cli.surely_no_dump(**args)
    (tmp_path / "cmdline").write_text(CMDLINE + "\n")
    assert not cli.surely_no_dump(**args)


# -- the units ---------------------------------------------------------------------------


def test_units_load_the_drivers_first_and_allow_the_devices(tmp_path: Path) -> None:
    """dumpsaver-pmem.service loads exactly pmem.MODULES, and only for memmap=!;
    dumpsaver.service is ordered after it and may open /dev/pmemN and /dev/daxN.M."""
    import subprocess

    units = Path(__file__).resolve().parent.parent / "units"
    main = (units / "dumpsaver.service").read_text()
    for line in ("Wants=dumpsaver-pmem.service", "After=dumpsaver-pmem.service",
                 "DeviceAllow=block-blkext rw", "DeviceAllow=char-dax rw"):
        assert line in main.splitlines(), line
    rw = next(ln for ln in main.splitlines() if ln.startswith("ReadWritePaths="))
    assert "-/sys/bus" in rw.split() and "-/sys/devices" in rw.split()
    unit = (units / "dumpsaver-pmem.service").read_text()
    (cmd,) = [ln.split("=", 1)[1] for ln in unit.splitlines() if ln.startswith("ExecStart=")]
    assert cmd.startswith("/bin/sh -c '") and cmd.endswith("'")
    script = cmd[len("/bin/sh -c '"):-1]
    assert f"modprobe -a {' '.join(pmem.MODULES)}" in script
    script = script.replace("/proc/cmdline", str(tmp_path / "cmdline"))
    script = script.replace("exec modprobe", "exec echo modprobe")
    for line, loads in ((CMDLINE, True), ("memmap=16M$0x30000000 quiet", False),
                        ("root=/dev/vda", False), ("quiet memmap=1G!4G", True)):
        (tmp_path / "cmdline").write_text(line + "\n")
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
        assert ("modprobe" in out.stdout) == loads, line


def test_never_given_back_unread(tmp_path: Path) -> None:
    """devdax with no device to read it through (device_dax not bound): what it holds is
    unknown, so it stays reserved; the boot says why."""
    fake = FakePmem(tmp_path / "k")
    w, c = where(tmp_path, fake), cfg(tmp_path)
    boot.run(c, w, boot.Options())
    crash_into(fake, tmp_path)
    fake.crash_reboot()
    (fake.bus / "region0/dax0.1/dax0.0/driver").unlink()
    fake.calls.clear()
    (cand,) = w.candidates(c)
    assert cand.pmem is not None and cand.pmem.device() is None
    with pytest.raises(DumpsaverError, match="cannot read it to check"):
        hotplug.give_back(cand.pmem, magic=fmt.MAGIC)
    out = boot.run(c, w, boot.Options())
    assert out.status is None and any("no device to read it through" in n for n in out.notes)
    assert any("waiting for its device" in n for n in out.notes), out.notes
    assert [a[0] for a in fake.calls] == ["modprobe"]  # tried to load device_dax: no more
    assert fake.read_phys(DUMP.start, 8) == fmt.MAGIC


def test_give_back_unmaps_the_device_first(tmp_path: Path) -> None:
    """The boot job still holds the saved dump's mapping of /dev/daxN.M when it gives
    the range back: the mapping goes before daxctl unbinds device_dax."""
    fake = FakePmem(tmp_path / "k")
    w, c = where(tmp_path, fake), cfg(tmp_path)
    boot.run(c, w, boot.Options())
    fake.crash_reboot()
    (cand,) = w.candidates(c)
    assert cand.pmem is not None
    mem = pmemio.open_area(cand, w.mem)
    assert mem.read(DUMP.start, 8) == bytes(8)
    gave = hotplug.give_back(cand.pmem, magic=fmt.MAGIC)
    assert gave.onlined == 256 * MiB
    with pytest.raises(DumpsaverError, match="no longer mapped"):
        mem.read(DUMP.start, 8)
    mem.close()
