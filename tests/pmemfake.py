"""A FAKE of what only a real kernel (the QEMU tier, tests/e2e) can show: the sysfs tree
of a ``memmap=SIZE!ADDR`` legacy pmem range, its devices, and what modprobe, ndctl and
daxctl do to them.

It is modelled on the real layout (Linux 6.1: drivers/nvdimm/{region,namespace,dax,pfn}
_devs.c, drivers/dax/bus.c, drivers/base/memory.c; ndctl/daxctl 76.1), attribute names
and formats included:

    sys/devices/platform/e820_pmem/ndbus0/region0/{resource,size,nstype,align}
        namespace0.0/{resource,size,mode,holder,nstype,force_raw}  [block/pmem0]
        dax0.0/{namespace,align,mode,resource,size}                (the nd_dax claim)
            dax0.0/{resource,size,target_node,align,driver->}      (the device-dax)
    sys/bus/nd/devices/* and sys/bus/dax/devices/* -> symlinks to those
    sys/devices/system/memory/block_size_bytes ("8000000": hex without 0x)
        memoryN/{phys_index ("%08lx"),state,valid_zones}
    dev/pmem0, dev/dax0.0: plain files standing in for the devices
    proc/meminfo

What it cannot show, and the e2e test does: that the kernel really keeps the range
away from the allocator, that device-dax really mmaps it, that RAM survives the
warm reset, and the real tools' behaviour (this plays them).

The range's content lives in ``phys.img`` (offset 0 = the namespace's start); the
device files are copies materialised while the device exists and folded back when it
goes, as the same RAM seen through different doors.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from dumpsaver.errors import DumpsaverError
from dumpsaver.pmem import PmemPaths

MiB = 1 << 20
BLOCK = 128 * MiB
MEMTOTAL_KB = 1754320  # the guest's MemTotal before giving back (issue 11's figure)
INFO_MAGIC = b"dax-info-block\0\0"  # devdax's info block at 4 KiB into the namespace


class FakePmem:
    def __init__(self, root: Path, *, size: int = 272 * MiB, addr: int = 0x3F000000,
                 block: int = BLOCK, dataoff: int = 6 * MiB, loaded: bool = True) -> None:
        self.root = root
        self.size, self.addr, self.block, self.dataoff = size, addr, block, dataoff
        self.sys = root / "sys"
        self.bus = self.sys / "devices/platform/e820_pmem/ndbus0"
        self.paths = PmemPaths(nd=self.sys / "bus/nd/devices", dax=self.sys / "bus/dax/devices",
                               memory=self.sys / "devices/system/memory", dev=root / "dev",
                               meminfo=root / "proc/meminfo", runner=self.run)
        self.calls: list[list[str]] = []
        self.fail: dict[str, str] = {}  # tool name -> its error line
        self.loaded = loaded
        self.mode = "memory"  # what the namespace is now
        self.driver: str | None = None  # the dax device's driver
        root.mkdir(parents=True, exist_ok=True)
        self.phys = root / "phys.img"
        with open(self.phys, "wb") as f:
            f.truncate(size)
        self.boot()

    # -- the machine --------------------------------------------------------------------

    @property
    def dax_start(self) -> int:
        return self.addr + self.dataoff

    def boot(self) -> None:
        """A boot with memmap=! (RAM kept, as QEMU's warm reset does): the namespace is
        devdax if its info block survived, fsdax otherwise; kmem is never bound at boot."""
        self._fold_back()
        shutil.rmtree(self.sys, ignore_errors=True)
        shutil.rmtree(self.root / "dev", ignore_errors=True)
        (self.root / "dev").mkdir(parents=True)
        (self.root / "proc").mkdir(parents=True, exist_ok=True)
        self._memory(online_extra=[])
        for d in ("bus/nd/devices", "bus/dax/devices", "bus/dax/drivers/device_dax",
                  "bus/dax/drivers/kmem", "bus/nd/drivers/nd_pmem"):
            (self.sys / d).mkdir(parents=True, exist_ok=True)
        with open(self.phys, "rb") as f:
            f.seek(4096)
            info = f.read(len(INFO_MAGIC)) == INFO_MAGIC
        self.mode = "dax" if info else "memory"
        self.driver = "device_dax" if info else None
        self.holder = "dax0.1"  # a boot that finds the info block: seed dax0.0 stays idle
        if self.loaded:
            self._tree()

    def crash_reboot(self) -> None:
        self.boot()

    def write_phys(self, paddr: int, data: bytes) -> None:
        """What the panic side writes (into RAM the kernel owns: no device involved)."""
        assert self.addr <= paddr and paddr + len(data) <= self.addr + self.size
        self._fold_back()
        with open(self.phys, "r+b") as f:
            f.seek(paddr - self.addr)
            f.write(data)
        self._materialise()

    def read_phys(self, paddr: int, n: int) -> bytes:
        self._fold_back()
        with open(self.phys, "rb") as f:
            f.seek(paddr - self.addr)
            return f.read(n)

    # -- the sysfs tree -----------------------------------------------------------------

    def _attrs(self, d: Path, **attrs: str) -> None:
        d.mkdir(parents=True, exist_ok=True)
        for k, v in attrs.items():
            (d / k).write_text(v + "\n")

    def _link(self, at: Path, to: Path) -> None:
        at.parent.mkdir(parents=True, exist_ok=True)
        if at.is_symlink():
            at.unlink()
        at.symlink_to(os.path.relpath(to, at.parent))

    def _tree(self) -> None:
        region = self.bus / "region0"
        self._attrs(region, resource=f"{self.addr:#x}", size=str(self.size), nstype="4",
                    align=str(16 * MiB), devtype="nd_pmem")
        ns = region / "namespace0.0"
        holder = self.holder if self.mode == "dax" else ""
        self._attrs(ns, resource=f"{self.addr:#x}", size=str(self.size), mode=self.mode,
                    holder=holder, holder_class="dax" if holder else "", nstype="4",
                    force_raw="0", devtype="nd_namespace_io")
        self._link(self.paths.nd / "region0", region)
        self._link(self.paths.nd / "namespace0.0", ns)
        self._link(self.paths.nd / "ndbus0", self.bus)
        # the region's idle seeds, as the kernel shows them (their resource and size
        # fail with ENXIO there: the sysfs files are absent here)
        for seed in ("dax0.0", "dax0.1"):
            if seed != holder:
                shutil.rmtree(region / seed, ignore_errors=True)
                self._attrs(region / seed, namespace="", align=str(2 * MiB), mode="none",
                            devtype="nd_dax")
                self._link(self.paths.nd / seed, region / seed)
        if self.mode == "dax":
            # 6.1: the claiming nd dax device is dax0.0 right after ndctl made the
            # namespace devdax, dax0.1 after a reboot found its info block; the
            # device-dax under it is named after the namespace: dax0.0
            nd_dax = region / holder
            shutil.rmtree(nd_dax, ignore_errors=True)
            dsize = self.size - self.dataoff
            self._attrs(nd_dax, namespace="namespace0.0", align=str(2 * MiB), mode="pmem",
                        resource=f"{self.dax_start:#x}", size=str(dsize), devtype="nd_dax")
            self._link(self.paths.nd / holder, nd_dax)
            dev = nd_dax / "dax0.0"
            self._attrs(dev, resource=f"{self.dax_start:#x}", size=str(dsize),
                        target_node="0", numa_node="0", align=str(2 * MiB),
                        modalias="dax:t0")
            self._link(self.paths.dax / "dax0.0", dev)
            if self.driver:
                self._link(dev / "driver", self.sys / f"bus/dax/drivers/{self.driver}")
        else:
            self._attrs(ns / "block/pmem0", size=str(self.size // 512))
        self._materialise()

    def _memory(self, online_extra: list[int]) -> None:
        mem = self.sys / "devices/system/memory"
        shutil.rmtree(mem, ignore_errors=True)
        self._attrs(mem, block_size_bytes=f"{self.block:x}", auto_online_blocks="offline")
        for idx in range(self.addr // self.block):  # boot RAM below the range
            self._attrs(mem / f"memory{idx}", phys_index=f"{idx:08x}", state="online",
                        valid_zones="DMA32" if idx == 0 else "Normal", online="1")
        for idx in online_extra:
            self._attrs(mem / f"memory{idx}", phys_index=f"{idx:08x}", state="online",
                        valid_zones="Movable", online="1")
        kb = MEMTOTAL_KB + len(online_extra) * (self.block >> 10)
        (self.root / "proc/meminfo").write_text(
            f"MemTotal:       {kb} kB\nMemFree:         1000000 kB\n")

    def _dev_files(self) -> tuple[Path | None, int]:
        """The live device file and the namespace offset of its byte 0."""
        if not self.loaded:
            return None, 0
        if self.mode == "dax":
            return (self.paths.dev / "dax0.0", self.dataoff) if self.driver == "device_dax" \
                else (None, 0)
        return self.paths.dev / "pmem0", 0

    def _materialise(self) -> None:
        dev, off = self._dev_files()
        if dev is None or dev.exists():
            return
        with open(dev, "wb") as f:
            f.truncate(self.size - off)
        _copy_data(self.phys, off, dev, 0, self.size - off)

    def _fold_back(self) -> None:
        for name, off in (("pmem0", 0), ("dax0.0", self.dataoff)):
            dev = self.root / "dev" / name
            if dev.exists():
                _copy_data(dev, 0, self.phys, off, self.size - off)
                dev.unlink()

    # -- the tools ----------------------------------------------------------------------

    def run(self, argv: Sequence[str]) -> str:
        self.calls.append(list(argv))
        tool = os.path.basename(argv[0])
        if tool in self.fail:
            raise DumpsaverError(f"{' '.join(argv[:3])}: {self.fail[tool]}")
        if tool == "modprobe":
            if not self.loaded:
                self.loaded = True
                self._tree()
            return ""
        if tool == "ndctl" and argv[1:] == ["create-namespace", "-f", "-e", "namespace0.0",
                                             "--mode=devdax"]:
            self._fold_back()
            with open(self.phys, "r+b") as f:  # metadata only: the info block, page tables
                f.seek(4096)
                f.write(INFO_MAGIC)
            self.mode, self.driver, self.holder = "dax", "device_dax", "dax0.0"
            shutil.rmtree(self.bus / "region0/namespace0.0/block", ignore_errors=True)
            self._tree()
            return '{"dev":"namespace0.0","mode":"devdax"}\n'
        if tool == "daxctl" and argv[1:] == ["reconfigure-device", "--mode=system-ram",
                                              "dax0.0"]:
            if self.mode != "dax":
                raise DumpsaverError("daxctl: dax0.0 not found")
            self._fold_back()
            self.driver = "kmem"
            dev = self.bus / "region0" / self.holder / "dax0.0"
            self._link(dev / "driver", self.sys / "bus/dax/drivers/kmem")
            start = -(-self.dax_start // self.block)
            end = (self.addr + self.size) // self.block
            self._memory(online_extra=list(range(start, end)))
            return '[{"chardev":"dax0.0","mode":"system-ram","movable":true}]\n'
        raise DumpsaverError(f"fake: unexpected command {' '.join(argv)}")


def _copy_data(src: Path, src_off: int, dst: Path, dst_off: int, length: int) -> None:
    """Copy the data (not the holes) of ``src`` [src_off, +length) to ``dst`` at dst_off."""
    fi, fo = os.open(src, os.O_RDONLY), os.open(dst, os.O_WRONLY)
    try:
        pos, end = src_off, src_off + length
        while pos < end:
            try:
                data = os.lseek(fi, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data past pos
                break
            if data >= end:
                break
            hole = min(os.lseek(fi, data, os.SEEK_HOLE), end)
            while data < hole:
                chunk = os.pread(fi, min(hole - data, 8 * MiB), data)
                os.pwrite(fo, chunk, data - src_off + dst_off)
                data += len(chunk)
            pos = hole
    finally:
        os.close(fi)
        os.close(fo)
