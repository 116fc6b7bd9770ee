"""``dumpsaver arm``: load the panic side (kmod/, the ``dumpsaver`` kernel module) over
the reserved region, after the boot's save has emptied it.

Arming, in order:

1. find the region by the saver's own rules (dumpsaver.locate): with memmap=!
   persistent memory, the dump range (dumpsaver.pmem.dump_range), which must be
   online in ZONE_MOVABLE, every memory block of it (checked here first, with a
   reason; the module checks again);
2. refuse while a dump waits there unsaved (the module refuses too);
3. set ``crash_kexec_post_notifiers``, so that panic() saves the other CPUs'
   registers into their crash_notes before the module's notifier runs;
4. load the module (``modprobe``, from where DKMS installed it, or ``insmod PATH``)
   with the region, the boot id, every CPU's crash_notes address and where the
   kernel image lies (its data and bss are saved first, its text late: the
   vmlinux file has it);
5. read back /sys/kernel/dumpsaver: armed, or the module's reason why not.

The module's state is what `dumpsaver status` shows (:func:`armed_state`).
Every system path is a field of :class:`KernelPaths`, so tests run on a tree of
plain files; the loader is a command line, so tests can give their own.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dumpsaver.errors import DumpsaverError, FormatError
from dumpsaver.locate import Candidate
from dumpsaver.pmem import PmemArea
from dumpsaver.sizes import human

MODULE = "dumpsaver"
CODECS = ("zlib", "lz4", "zstd")  # lz4 and zstd: dumpsaver_lz4.ko, dumpsaver_zstd.ko
REBOOT = {"never": 0, "hang": 1, "always": 2}
SECURE_BOOT_HINT = (
    "under Secure Boot the kernel loads only signed modules: enroll a MOK "
    "(mokutil --import /var/lib/dkms/mok.pub, reboot, confirm) so DKMS-signed "
    "modules load; see docs/kernel-module.md"
)


@dataclass(frozen=True)
class KernelPaths:
    """Where the kernel shows what arming reads and writes."""

    state: Path = Path("/sys/kernel/dumpsaver")
    module: Path = Path("/sys/module/dumpsaver")
    post_notifiers: Path = Path("/sys/module/kernel/parameters/crash_kexec_post_notifiers")
    cpus: Path = Path("/sys/devices/system/cpu")
    boot_id: Path = Path("/proc/sys/kernel/random/boot_id")
    lockdown: Path = Path("/sys/kernel/security/lockdown")
    iomem: Path = Path("/proc/iomem")


@dataclass(frozen=True)
class ArmedState:
    """The panic side as the kernel shows it."""

    loaded: bool
    armed: bool
    reason: str  # why not armed ("" when armed)
    region: tuple[int, int] | None = None  # (start, end) exclusive
    codec: str | None = None
    post_notifiers: bool | None = None
    lockdown: str | None = None  # the active lockdown mode, None when none
    estimate: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        """One line for ``dumpsaver status``."""
        if not self.armed:
            text = f"armed: no, {self.reason}"
        else:
            size = human(self.region[1] - self.region[0]) if self.region else "?"
            text = f"armed: yes, {size} region, {self.codec}"
            est = self.estimate
            if "kept_pages" in est:
                kept = human(est["kept_pages"] * 4096)
                fits = "fit" if est.get("estimate_bytes", 0) <= est.get("region_bytes", 0) \
                    else "DO NOT fit"
                text += (f"; kernel pages now ~{kept}, {fits} "
                         f"~{human(est.get('estimate_bytes', 0))} compressed")
            if self.post_notifiers is False:
                text += "; crash_kexec_post_notifiers is off: other CPUs' registers are lost"
        if self.lockdown:
            text += f"; kernel lockdown '{self.lockdown}' (Secure Boot): unsigned modules refused"
        return text

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read(path: Path, limit: int = 65536) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("ascii", "replace").strip()
    except OSError:
        return None


def lockdown_mode(path: Path) -> str | None:
    """The active mode of /sys/kernel/security/lockdown ("[none] integrity ...")."""
    text = _read(path)
    m = re.search(r"\[(\w+)\]", text or "")
    return m[1] if m and m[1] != "none" else None


def armed_state(paths: KernelPaths | None = None, *, estimate: bool = False) -> ArmedState:
    """What the kernel says about the panic side.  ``estimate`` asks the module to walk
    RAM for the pages a dump would keep now (a fraction of a second per GiB)."""
    p = paths or KernelPaths()
    post = _read(p.post_notifiers)
    common: dict[str, Any] = {
        "post_notifiers": None if post is None else post.upper() in ("Y", "1"),
        "lockdown": lockdown_mode(p.lockdown),
    }
    if not p.module.exists():
        return ArmedState(False, False, "the dumpsaver module is not loaded", **common)
    armed = _read(p.state / "armed")
    if armed is None:
        return ArmedState(True, False, f"cannot read {p.state}/armed", **common)
    region = None
    m = re.fullmatch(r"([0-9a-f]+)-([0-9a-f]+)", _read(p.state / "region") or "")
    if m:
        region = (int(m[1], 16), int(m[2], 16) + 1)
    est: dict[str, int] = {}
    if estimate and armed == "1":
        for line in (_read(p.state / "estimate") or "").splitlines():
            k, _, v = line.partition(" ")
            if v.strip().isdigit():
                est[k] = int(v)
    return ArmedState(
        True, armed == "1", "" if armed == "1" else (_read(p.state / "reason") or "unknown"),
        region=region, codec=_read(p.state / "codec"), estimate=est, **common,
    )


def crash_notes(cpus: Path) -> list[int]:
    """Each CPU's crash_notes physical address, indexed by CPU number (0: none)."""
    found: dict[int, int] = {}
    for d in cpus.glob("cpu[0-9]*"):
        text = _read(d / "crash_notes")
        if text and re.fullmatch(r"(0x)?[0-9a-fA-F]+", text):
            found[int(d.name[3:])] = int(text, 16)
    return [found.get(i, 0) for i in range(max(found) + 1)] if found else []


def kernel_image(iomem: Path) -> tuple[int, int, int] | None:
    """Where the kernel image lies, from /proc/iomem: (start, end of text and rodata,
    end of data and bss), physical.  Its text and rodata are the least useful pages
    (vmlinux holds them), its data and bss the most (init_task, per-cpu offsets)."""
    from dumpsaver.locate import parse_iomem

    parts = {name: r for r, name in parse_iomem(_read(iomem, 1 << 20) or "")
             if name.startswith("Kernel ")}
    text = [parts[n] for n in ("Kernel code", "Kernel rodata") if n in parts]
    data = [parts[n] for n in ("Kernel data", "Kernel bss") if n in parts]
    if not text or text[0].start == 0:  # absent, or zeros (not root)
        return None
    text_end = max(r.end for r in text)
    return text[0].start, text_end, max([r.end for r in data] + [text_end])


def module_params(region: tuple[int, int], *, boot_id: str, notes: Sequence[int],
                  reboot: str = "hang", codec: str = "zlib",
                  image: tuple[int, int, int] | None = None) -> list[str]:
    """The module's parameters (kmod/README.md) for ``region`` (start, size)."""
    params = [f"region_start={region[0]:#x}", f"region_size={region[1]:#x}",
              f"reboot={REBOOT[reboot]}"]
    if image:
        params += [f"text_start={image[0]:#x}", f"text_end={image[1]:#x}",
                   f"image_end={image[2]:#x}"]
    if codec != "zlib":
        params.append(f"codec={codec}")
    if re.fullmatch(r"[0-9a-fA-F-]{36}", boot_id):
        params.append(f"boot_id={boot_id}")
    if notes:
        params.append("crash_notes=" + ",".join(f"{a:#x}" for a in notes))
    return params


Runner = Callable[[Sequence[str]], None]


def run(argv: Sequence[str]) -> None:
    """Run a module loader; its error output becomes the error message."""
    try:
        r = subprocess.run(list(argv), capture_output=True, text=True, timeout=120)
    except OSError as e:
        raise DumpsaverError(f"cannot run {argv[0]}: {e.strerror}") from None
    if r.returncode:
        err = (r.stderr or r.stdout).strip().splitlines()
        msg = err[-1] if err else f"exit status {r.returncode}"
        hint = SECURE_BOOT_HINT if "Key was rejected" in msg or "Required key" in msg else None
        if "not found" in msg and argv[0] == "modprobe":
            hint = "install the dumpsaver-dkms package (or give --module PATH)"
        raise DumpsaverError(f"{' '.join(argv[:2])}: {msg}", hint=hint)


def disarm(paths: KernelPaths | None = None, *, runner: Runner = run) -> bool:
    """Unload the module; True when it was loaded."""
    p = paths or KernelPaths()
    if not p.module.exists():
        return False
    runner(["rmmod", MODULE])
    return True


def arm(
    cands: Sequence[Candidate],
    mem_path: str,
    *,
    paths: KernelPaths | None = None,
    module: Path | None = None,
    reboot: str = "hang",
    codec: str = "zlib",
    runner: Runner = run,
) -> ArmedState:
    """Arm the panic side over the first reserved region of ``cands``."""
    from dumpsaver.save import open_dump

    p = paths or KernelPaths()
    if codec not in CODECS:
        raise DumpsaverError(f"unknown codec {codec!r}", hint=", ".join(CODECS))
    if any(c.method == "sysfs" for c in cands):
        raise DumpsaverError("a dump is waiting (the kernel's mcore interface shows one)",
                             hint="save it first: dumpsaver save")
    if not cands:
        raise DumpsaverError("no reserved region to arm",
                             hint="boot with memmap=SIZE$ADDR (see /etc/default/grub.d/"
                             "dumpsaver.cfg) or name a region in the configuration")
    cand = cands[0]
    region = cand.ranges[0]
    if cand.pmem is not None:
        check_movable(cand.pmem)
    try:
        mem, _ = open_dump(cand, mem_path)
    except FormatError:
        pass  # no valid dump: the region is free
    else:
        mem.close()
        raise DumpsaverError(f"a dump is waiting in {region}: refusing to overwrite it",
                             hint="save it first: dumpsaver save")
    disarm(p, runner=runner)
    try:
        p.post_notifiers.write_text("Y\n")
    except OSError as e:
        raise DumpsaverError(f"cannot set {p.post_notifiers}: {e.strerror}") from None
    params = module_params((region.start, region.size), boot_id=_read(p.boot_id) or "",
                           notes=crash_notes(p.cpus), reboot=reboot, codec=codec,
                           image=kernel_image(p.iomem))
    if codec != "zlib":  # the codec's module first: dumpsaver.ko takes its ops at load
        name = f"{MODULE}_{codec}"
        if module is None:
            runner(["modprobe", name])
        elif not (p.module.parent / name).exists():
            runner(["modprobe", f"{codec}_compress"])
            runner(["insmod", str(module.with_name(f"{name}.ko"))])
    runner(["insmod", str(module), *params] if module else ["modprobe", MODULE, *params])
    st = armed_state(p)
    if not st.armed:
        raise DumpsaverError(f"the module did not arm: {st.reason}")
    return st


def check_movable(area: PmemArea) -> None:
    """memmap=! memory: the module writes over the dump range (pmem.dump_range) only
    while every memory block of it is online in ZONE_MOVABLE (it holds user and
    page-cache pages only, which a dump never keeps).  Say why not, before loading."""
    from dumpsaver.hotplug import movable_state

    if area.dump is None:
        raise DumpsaverError(f"{area.describe()}: its dump range is not known yet",
                             hint="dumpsaver save gives the range back at boot "
                             "(ndctl and daxctl must be installed)")
    if not area.given_back:
        raise DumpsaverError(
            f"the memmap=! range {area.dump} is not online RAM yet ({area.describe()})",
            hint="dumpsaver save gives it back once no dump waits there; by hand: "
            f"daxctl reconfigure-device --mode=system-ram {area.dax.name if area.dax else '...'}")
    _, bad = movable_state(area)
    if bad:
        raise DumpsaverError(
            f"the memmap=! range {area.dump} is not all online in ZONE_MOVABLE: "
            + ", ".join(bad[:4]) + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else ""),
            hint="online its blocks movable (daxctl online-memory --movable, or echo "
            "online_movable > /sys/devices/system/memory/memoryN/state)")


# -- the command line (wired into dumpsaver.commands) -----------------------------------


ARM_HELP = "load the panic-side kernel module over the reserved region (after the boot's save)"
DISARM_HELP = "unload the panic-side kernel module"


def options(s: argparse.ArgumentParser) -> None:
    """arm's own options (the location options are the saver's: commands adds them)."""
    s.add_argument("--module", type=Path, metavar="PATH",
                   help="insmod this dumpsaver.ko instead of modprobe (the DKMS-built one)")
    s.add_argument("--reboot", choices=tuple(REBOOT), default="hang",
                   help="after writing the dump: reboot never, only when panic() would hang "
                   "(panic=0), or always (default: %(default)s)")
    s.add_argument("--codec", choices=CODECS, default="zlib",
                   help="per-page compression at panic (default: %(default)s; lz4 is faster, "
                   "zstd smaller)")


def cmd_arm(ctx: Any) -> int:
    a = ctx.args
    where = ctx.where
    st = arm(where.candidates(ctx.cfg), where.mem, module=a.module, reboot=a.reboot,
             codec=a.codec)
    print(f"dumpsaver: {st.line()}")
    return 0


def cmd_disarm(ctx: Any) -> int:
    print("dumpsaver: disarmed" if disarm() else "dumpsaver: was not armed")
    return 0
