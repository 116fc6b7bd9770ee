"""`dumpsaver arm`: the region by the saver's rules, the refusals, the parameters the
module gets, and the state `status` shows.  The kernel side is a tree of plain files
(KernelPaths) and the loader a function that plays the module's load: loading a real
module happens in the QEMU tier (tests/e2e), never into the host's kernel."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from dumpsaver import arm, locate
from dumpsaver.errors import DumpsaverError
from dumpsaver.simulate import simulate

from .conftest import run_cli
from .test_selftest import machine

BOOT_ID = "0b4c8bd6-7d4e-4a57-9d0b-9a4d4f7f1c11"


class FakeKernel:
    """The files arming reads and writes, and a loader that behaves like the module:
    it arms unless told to refuse, and shows its state under /sys/kernel/dumpsaver."""

    def __init__(self, root: Path, refuse: str = "") -> None:
        self.paths = arm.KernelPaths(
            state=root / "kernel/dumpsaver", module=root / "module/dumpsaver",
            post_notifiers=root / "module/kernel/parameters/crash_kexec_post_notifiers",
            cpus=root / "cpu", boot_id=root / "boot_id", lockdown=root / "lockdown",
            iomem=root / "iomem")
        root.mkdir(parents=True)
        self.paths.iomem.write_text(
            "00100000-2fffffff : System RAM\n  0a000000-0ae02516 : Kernel code\n"
            "  0b000000-0b6dafff : Kernel rodata\n  0b800000-0bb5e9bf : Kernel data\n"
            "30000000-30ffffff : Reserved\n")
        self.paths.post_notifiers.parent.mkdir(parents=True)
        self.paths.post_notifiers.write_text("N\n")
        for cpu, addr in ((0, 0x23FC17A00), (1, 0x23FC97A00), (3, 0x23FD97A00)):
            (self.paths.cpus / f"cpu{cpu}").mkdir(parents=True)
            (self.paths.cpus / f"cpu{cpu}/crash_notes").write_text(f"{addr:x}\n")
        (self.paths.cpus / "cpufreq").mkdir()
        self.paths.boot_id.write_text(BOOT_ID + "\n")
        self.paths.lockdown.write_text("[none] integrity confidentiality\n")
        self.refuse = refuse
        self.calls: list[list[str]] = []

    def run(self, argv: Sequence[str]) -> None:
        self.calls.append(list(argv))
        if argv[0] == "rmmod":
            for f in self.paths.state.glob("*"):
                f.unlink()
            self.paths.state.rmdir()
            self.paths.module.rmdir()
            return
        if argv[1] in ("dumpsaver_lz4", "dumpsaver_zstd", "lz4_compress") or \
                argv[1].endswith("dumpsaver_lz4.ko"):
            return  # a codec module
        params = dict(a.split("=", 1) for a in argv[2:])
        start, size = int(params["region_start"], 16), int(params["region_size"], 16)
        self.paths.module.mkdir(parents=True)
        self.paths.state.mkdir(parents=True)
        files = {"armed": "0" if self.refuse else "1", "reason": self.refuse,
                 "region": f"{start:016x}-{start + size - 1:016x}",
                 "codec": params.get("codec", "zlib"),
                 "estimate": "kept_pages 40000\nestimate_bytes 60000000\n"
                             "region_bytes 16777216\nkernel_text 9000\n"}
        for k, v in files.items():
            (self.paths.state / k).write_text(v + "\n")


def cands(tmp_path: Path) -> tuple[list[locate.Candidate], str]:
    where = machine(tmp_path)
    found = locate.candidates(sysfs=tmp_path / "nosys", cmdline=tmp_path / "cmdline",
                              iomem=tmp_path / "iomem", use_memmap=True)
    return found, where[1]


def test_arm_loads_the_module_with_the_region(tmp_path: Path) -> None:
    k = FakeKernel(tmp_path / "k")
    found, mem = cands(tmp_path)
    st = arm.arm(found, mem, paths=k.paths, runner=k.run)
    assert k.paths.post_notifiers.read_text() == "Y\n"
    assert k.calls == [["modprobe", "dumpsaver", "region_start=0x30000000",
                        "region_size=0x1000000", "reboot=1", "text_start=0xa000000",
                        "text_end=0xb6db000", "image_end=0xbb5e9c0", f"boot_id={BOOT_ID}",
                        "crash_notes=0x23fc17a00,0x23fc97a00,0x0,0x23fd97a00"]]
    assert st.armed and st.region == (0x30000000, 0x31000000) and st.post_notifiers
    assert st.line() == "armed: yes, 16.0 MiB region, zlib"
    # No "Kernel code" in /proc/iomem (or zeros, not root): no text range passed.
    k.paths.iomem.write_text("00000000-00000000 : Kernel code\n")
    assert arm.kernel_image(k.paths.iomem) is None
    # Re-arming unloads first; an explicit module is insmod-ed.
    arm.arm(found, mem, paths=k.paths, runner=k.run, module=Path("/tmp/x.ko"), reboot="always")
    assert k.calls[1] == ["rmmod", "dumpsaver"]
    assert k.calls[2][:2] == ["insmod", "/tmp/x.ko"] and "reboot=2" in k.calls[2]


def test_arm_with_a_codec_module(tmp_path: Path) -> None:
    """lz4 and zstd live in their own modules, loaded before dumpsaver.ko."""
    k = FakeKernel(tmp_path / "k")
    found, mem = cands(tmp_path)
    st = arm.arm(found, mem, paths=k.paths, runner=k.run, codec="zstd")
    assert k.calls[0] == ["modprobe", "dumpsaver_zstd"]
    assert "codec=zstd" in k.calls[1] and st.codec == "zstd"
    k.calls.clear()
    arm.arm(found, mem, paths=k.paths, runner=k.run, codec="lz4", module=Path("/b/dumpsaver.ko"))
    assert k.calls[1:3] == [["modprobe", "lz4_compress"], ["insmod", "/b/dumpsaver_lz4.ko"]]
    with pytest.raises(DumpsaverError, match="unknown codec"):
        arm.arm(found, mem, paths=k.paths, runner=k.run, codec="lzo")


def test_state_with_estimate(tmp_path: Path) -> None:
    k = FakeKernel(tmp_path / "k")
    found, mem = cands(tmp_path)
    arm.arm(found, mem, paths=k.paths, runner=k.run)
    st = arm.armed_state(k.paths, estimate=True)
    assert st.estimate["kept_pages"] == 40000 and st.estimate["kernel_text"] == 9000
    assert st.line() == ("armed: yes, 16.0 MiB region, zlib; kernel pages now ~156.2 MiB, "
                         "DO NOT fit ~57.2 MiB compressed")
    assert json.loads(json.dumps(st.as_dict()))["armed"] is True
    k.paths.lockdown.write_text("none [integrity] confidentiality\n")
    assert "lockdown 'integrity'" in arm.armed_state(k.paths).line()
    k.paths.lockdown.unlink()  # no securityfs: no lockdown shown
    assert arm.disarm(k.paths, runner=k.run) and not arm.disarm(k.paths, runner=k.run)
    st = arm.armed_state(k.paths)
    assert not st.loaded and st.line() == "armed: no, the dumpsaver module is not loaded"


def test_refuses_while_a_dump_waits(tmp_path: Path) -> None:
    k = FakeKernel(tmp_path / "k")
    found, mem = cands(tmp_path)
    simulate(tmp_path / "sim", memory=8 << 20, profile="idle", seed=1, target_mem=mem,
             target_region=(0x30000000, 16 << 20), ground_truth=False)
    with pytest.raises(DumpsaverError, match="a dump is waiting"):
        arm.arm(found, mem, paths=k.paths, runner=k.run)
    assert k.calls == [] and k.paths.post_notifiers.read_text() == "N\n"
    sysfs = locate.Candidate("sysfs", "mcore", found[0].ranges, 0x30000000)
    with pytest.raises(DumpsaverError, match="mcore interface"):
        arm.arm([sysfs, *found], mem, paths=k.paths, runner=k.run)


def test_no_region(tmp_path: Path) -> None:
    k = FakeKernel(tmp_path / "k")
    with pytest.raises(DumpsaverError, match="no reserved region") as e:
        arm.arm([], "/dev/null", paths=k.paths, runner=k.run)
    assert e.value.hint and "memmap=" in e.value.hint


def test_module_refusal_is_the_error(tmp_path: Path) -> None:
    k = FakeKernel(tmp_path / "k", refuse="the region overlaps System RAM in use by the kernel")
    found, mem = cands(tmp_path)
    with pytest.raises(DumpsaverError, match="did not arm: the region overlaps System RAM"):
        arm.arm(found, mem, paths=k.paths, runner=k.run)
    assert arm.armed_state(k.paths).line().startswith("armed: no, the region overlaps")


def test_loader_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DumpsaverError, match="Key was rejected") as e:
        arm.run(["sh", "-c", "echo 'insmod: ERROR: Key was rejected by service' >&2; exit 1"])
    assert e.value.hint and "mokutil" in e.value.hint
    with pytest.raises(DumpsaverError, match="cannot run"):
        arm.run(["/nonexistent/modprobe"])


def test_cli(tmp_path: Path) -> None:
    r = run_cli("arm", "--help")
    assert r.returncode == 0 and "--module" in r.stdout
    where = machine(tmp_path)
    s = json.loads(run_cli("status", "--json", *where).stdout)
    assert s["armed"]["armed"] is False and s["armed"]["reason"]
    assert "panic side:  armed: " in run_cli("status", *where).stdout


def test_arm_unit(tmp_path: Path) -> None:
    """The unit verifies, runs after the save, may load modules, and is sandboxed."""
    exe = shutil.which("systemd-analyze")
    if exe is None or not Path("/lib/systemd/system/sysinit.target").exists():
        pytest.skip("systemd-analyze and systemd's units are needed (Debian: systemd)")
    repo = Path(__file__).resolve().parent.parent
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/dumpsaver").write_text("#!/bin/sh\n")
    (tmp_path / "usr/bin/dumpsaver").chmod(0o755)
    shutil.copytree("/lib/systemd/system", tmp_path / "usr/lib/systemd/system", symlinks=True)
    units = tmp_path / "etc/systemd/system"
    units.mkdir(parents=True)
    for name in ("dumpsaver.service", "dumpsaver-arm.service"):
        shutil.copyfile(repo / "units" / name, units / name)
    r = subprocess.run([exe, "verify", "--man=no", f"--root={tmp_path}",
                        "dumpsaver-arm.service"], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    text = (units / "dumpsaver-arm.service").read_text()
    assert "After=dumpsaver.service" in text and "ExecStart=/usr/bin/dumpsaver arm" in text
    # it loads a module and writes a /sys/module parameter
    assert "CAP_SYS_MODULE" in text
    assert not re.search(r"^(ProtectKernelModules|ProtectKernelTunables)=", text, re.M)
    r = subprocess.run([exe, "security", "--offline=yes", f"--root={tmp_path}", "--no-pager",
                        "dumpsaver-arm.service"], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for dumpsaver-arm\.service: ([0-9.]+)", r.stdout)
    assert m and float(m[1]) <= 3.0, r.stdout[-2000:] + r.stderr
