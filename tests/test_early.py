"""The boot's no-dump fast path (dumpsaver.early, dumpsaver.cli): it may say "maybe" too
often, never "no dump" when one waits.  Each way to a dump is set up for real (the
simulator writes the dump into a memory file, a sysfs tree, a /proc/iomem and a command
line), then the fast path's answer is checked against the full path's (``save --check``:
0 a dump waits, 3 none).  The files stand in for /proc and /dev/mem (fakes for what a
test cannot have; the QEMU e2e test runs the same code on a real kernel)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from dumpsaver import cli, config, early, paths
from dumpsaver import format as fmt
from dumpsaver.errors import Exit
from dumpsaver.simulate import simulate

REGION = (0x2000000, 16 << 20)
IOMEM = ("00000000-01ffffff : System RAM\n"
         "02000000-02ffffff : Reserved\n"
         "03000000-03ffffff : System RAM\n")  # fmt: skip
MEMMAP = "memmap=16M$0x2000000"
PMEM = "memmap=16M!0x2000000"


@dataclass(frozen=True)
class Machine:
    """A boot's view: the files the fast path and the full path read."""

    dir: Path
    ram: Path  # /dev/mem
    sysfs: Path  # /sys/kernel/mcore (exists only while a dump waits there)

    def files(self, cmdline: str, cfg: str | None, iomem: str = IOMEM) -> dict[str, str]:
        (self.dir / "cmdline").write_text(cmdline + "\n")
        (self.dir / "iomem").write_text(iomem)
        c = self.dir / "dumpsaver.yaml"
        if cfg is None:
            c.unlink(missing_ok=True)
        else:
            c.write_text(cfg)
        return {"config": str(c), "sysfs_header": str(self.sysfs / "header"),
                "cmdline": str(self.dir / "cmdline"), "iomem": str(self.dir / "iomem"),
                "mem": str(self.ram)}  # fmt: skip


def _ram(path: Path) -> Path:
    with open(path, "wb") as f:
        f.truncate(64 << 20)
    return path


@pytest.fixture(scope="module")
def machines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Machine]:
    """``memmap``: a dump at the start of REGION of the memory file; ``empty``: zeros
    there; ``sysfs``: the simulator's kernel sysfs tree with its own memory file."""
    out = {}
    d = tmp_path_factory.mktemp("memmap")
    ram = _ram(d / "ram")
    simulate(d / "sim", memory=8 << 20, profile="idle", seed=1, target_mem=str(ram),
             target_region=REGION, ground_truth=False)
    out["memmap"] = Machine(d, ram, d / "no-sysfs")
    d = tmp_path_factory.mktemp("empty")
    out["empty"] = Machine(d, _ram(d / "ram"), d / "no-sysfs")
    d = tmp_path_factory.mktemp("sysfs")
    simulate(d / "sim", memory=8 << 20, profile="idle", seed=1, ground_truth=False)
    out["sysfs"] = Machine(d, d / "sim" / "mem", d / "sim" / "sys")
    return out


def full_path(f: dict[str, str], sysfs: Path | None, mem: str | None) -> int:
    """``dumpsaver save --check`` with the same files: 0 a dump waits, 3 none.  ``sysfs``
    and ``mem`` None: as the configuration says."""
    argv = ["save", "--check", "--cmdline", f["cmdline"], "--iomem", f["iomem"]]
    argv += ["--sysfs", str(sysfs)] if sysfs is not None else []
    argv += ["--mem", mem] if mem is not None else []
    if Path(f["config"]).exists():
        argv += ["--config", f["config"]]
    return cli.main(argv)


SAFE = "dump_dir: /var/dumps\nformat: kdump\nssh_options:\n  - BatchMode=yes\nminfree: 1G\n"
# (machine, kernel command line, configuration (None: no file), a dump waits?)
CASES = {
    "nothing configured": ("empty", "root=/dev/vda", None, False),
    "memmap, no dump": ("empty", f"root=/dev/vda {MEMMAP}", None, False),
    "memmap, dump": ("memmap", f"root=/dev/vda {MEMMAP}", None, True),
    "memmap, an already saved dump": ("memmap", MEMMAP, "saved", False),
    "memmap, safe settings, no dump": ("empty", MEMMAP, SAFE, False),
    "memmap, safe settings, dump": ("memmap", MEMMAP, SAFE, True),
    "memmap beside other memmap forms, dump": (
        "memmap", f"memmap=1G@0 memmap=exactmap {MEMMAP},4K#0x100000", SAFE, True),
    "sysfs shim, dump": ("sysfs", "root=/dev/vda", None, True),
    "sysfs shim, safe settings, dump": ("sysfs", "root=/dev/vda", SAFE, True),
    "sysfs moved by the configuration, dump": ("sysfs", "root=/dev/vda", "sysfs: @SYS@\n", True),
    "config region, dump": ("memmap", "root=/dev/vda", "regions: ['0x2000000:16M']\n", True),
    "config region as a block list, dump": (
        "memmap", "quiet", "minfree: 0\nregions:\n- 0x2000000:16M\n", True),
    "config region, quoted key, dump": (
        "memmap", "quiet", '"regions": ["0x2000000:16M"]\n', True),
    "config region, flow mapping, dump": (
        "memmap", "quiet", '{regions: ["0x2000000:16M"]}\n', True),
    "config region, escaped key, dump": (
        "memmap", "quiet", '"re\\x67ions": ["0x2000000:16M"]\n', True),
    "config region, indented document, dump": (
        "memmap", "quiet", '  minfree: 0\n  regions: ["0x2000000:16M"]\n', True),
    "config region, no dump": ("empty", "quiet", "regions: ['0x2000000:16M']\n", False),
    "memory device moved by the configuration, dump": (
        "memmap", MEMMAP, "mem_device: @RAM@\n", True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_path_agrees_with_the_full_path(machines: dict[str, Machine], case: str) -> None:
    """Never "no dump" where the full path finds one; "no dump" wherever it surely is."""
    which, cmdline, cfg, waits = CASES[case]
    m = machines[which]
    if cfg == "saved":
        with open(m.ram, "r+b") as f:
            f.seek(REGION[0])
            f.write(fmt.SAVED_MAGIC)
        cfg = None
    cfg_text = None if cfg is None else cfg.replace("@SYS@", str(m.sysfs)).replace(
        "@RAM@", str(m.ram))
    f = m.files(cmdline, cfg_text)
    sysfs: Path | None = m.sysfs
    mem: str | None = str(m.ram)
    if cfg_text and "@SYS@" in cfg:  # the default place shows nothing, the setting has it
        f["sysfs_header"], sysfs = str(m.dir / "no-sysfs" / "header"), None
    if cfg_text and "@RAM@" in cfg:  # the default device shows zeros, the setting has it
        f["mem"], mem = str(machines["empty"].ram), None
    fast_none = cli.surely_no_dump(**f)
    full = full_path(f, sysfs, mem)
    try:
        assert full == (Exit.OK if waits else Exit.NO_DUMP), case
        assert not (fast_none and waits), f"{case}: the fast path would skip a waiting dump"
        locating = cfg_text is not None and early.config_may_locate(cfg_text.encode())
        if not waits and not locating:
            assert fast_none, f"{case}: needlessly slow"
    finally:
        if case == "memmap, an already saved dump":
            with open(m.ram, "r+b") as fh:
                fh.seek(REGION[0])
                fh.write(fmt.MAGIC)


def test_legacy_pmem_goes_down_the_full_path(machines: dict[str, Machine]) -> None:
    """memmap=SIZE!ADDR is read only through its pmem/dax device, which appears late in
    the boot: the fast path cannot peek, so it always says "maybe", even with zeros."""
    m = machines["empty"]
    f = m.files(f"root=/dev/vda {PMEM}", None)
    assert early.why_maybe(config=b"", sysfs_header=f["sysfs_header"], cmdline=f["cmdline"],
                           iomem=f["iomem"], mem=f["mem"]) == (
        "memmap=SIZE!ADDR (legacy persistent memory) is read through its device")
    assert not cli.surely_no_dump(**m.files(f"{MEMMAP} {PMEM}", SAFE))


def test_doubts_answer_maybe(machines: dict[str, Machine], tmp_path: Path) -> None:
    m = machines["empty"]
    f = m.files(MEMMAP, None)
    assert cli.surely_no_dump(**f)
    assert not cli.surely_no_dump(**{**f, "cmdline": str(tmp_path / "missing")})
    assert not cli.surely_no_dump(**{**f, "iomem": str(tmp_path / "missing")})
    assert not cli.surely_no_dump(**{**f, "mem": str(tmp_path / "missing")})
    short = tmp_path / "short"
    short.write_bytes(b"\0" * (REGION[0] + 4))  # a short read at the region
    assert not cli.surely_no_dump(**{**f, "mem": str(short)})
    assert not cli.surely_no_dump(**m.files(MEMMAP, None, iomem=IOMEM.replace("Reserved", "RAM")))
    hidden = "00000000-00000000 : Reserved\n00000000-00000000 : System RAM\n"  # not root
    assert not cli.surely_no_dump(**m.files(MEMMAP, None, iomem=hidden))
    assert not cli.surely_no_dump(**m.files(MEMMAP, "minfree: 1G\n" * 100_000))  # > 1 MiB
    unreadable = m.files(MEMMAP, None)
    assert not cli.surely_no_dump(**{**unreadable, "config": str(tmp_path)})  # a directory


def test_config_classification() -> None:
    """Only the settings that change where to look matter, and every setting is classified."""
    keys = {s.key for s in config.SETTINGS}
    assert keys <= set(early.SAFE_KEYS) | set(early.LOCATING_KEYS)
    assert not set(early.SAFE_KEYS) & set(early.LOCATING_KEYS)
    may = early.config_may_locate
    assert not may(b"") and not may(b"# comments\n\n   # only\n")
    assert not may(SAFE.encode()) and not may(b"format: elf # a comment\nrestart: continue\n")
    assert not may(b"ssh_options:\n- -oX=1\nminfree: 0\n")
    for text in (b"regions: []\n", b"sysfs: /x\n", b"mem_device: /dev/m\n", b"colour: x\n",
                 b"---\nminfree: 0\n", b"? regions\n: []\n", b"'minfree': 0\n",
                 b"  minfree: 0\n", b"- x\n", b"minfree 0\n", b"\xef\xbb\xbfminfree: 0\n",
                 b"Minfree: 0\n", b"minfree: \"a\\\n  b\"\n"):
        assert may(text), text
    assert early.DUMP_MAGIC == fmt.MAGIC
    assert early.MAX_CONFIG == config.MAX_FILE


def test_a_broken_safe_setting_no_longer_fails_a_boot_without_dump(
    machines: dict[str, Machine]
) -> None:
    """A setting that cannot make a dump appear is not parsed at boot: a typo in format:
    costs nothing there (status and every other command still refuse it)."""
    f = machines["empty"].files(MEMMAP, "format: nonsense\n")
    assert cli.surely_no_dump(**f)
    with pytest.raises(Exception, match="bad value for 'format'"):
        config.load(Path(f["config"]))


HEAVY = ("yaml", "argparse", "re", "enum", "dataclasses", "pathlib", "typing", "logging",
         "json", "psutil", "systemd", "pystemd", "zlib", "dumpsaver.config",
         "dumpsaver.commands", "dumpsaver.journal", "dumpsaver.locate", "dumpsaver.errors")
PROBE = """
import sys
before = set(sys.modules)
from dumpsaver import cli
answer = cli.surely_no_dump(**{files!r}) if {files!r} else cli.main(["save"]) == 0
new = sorted(set(sys.modules) - before)
import json
print(json.dumps([answer, new]))
"""


def _probe(files: dict[str, str], env: dict[str, str] | None = None) -> tuple[bool, list[str]]:
    r = subprocess.run([sys.executable, "-c", PROBE.format(files=files)], capture_output=True,
                       text=True, check=True, env=env, timeout=60)
    answer, new = json.loads(r.stdout.strip().splitlines()[-1])
    return answer, new


def test_nothing_heavy_is_imported_when_nothing_waits(machines: dict[str, Machine]) -> None:
    """In a fresh interpreter, the no-dump decision (a memmap= region read, a config of safe
    settings) imports dumpsaver.cli, .early and .paths and nothing else."""
    mine = {"dumpsaver", "dumpsaver.cli", "dumpsaver.early", "dumpsaver.paths"}
    answer, new = _probe(machines["empty"].files(MEMMAP, SAFE))
    assert answer is True
    assert set(new) <= mine, sorted(set(new) - mine)
    assert not set(HEAVY) & set(new)


def test_the_entry_point_itself_imports_nothing_heavy(tmp_path: Path) -> None:
    """``dumpsaver save`` as the unit runs it (cli.main(["save"]) on this machine's own
    /proc and /sys, with a configuration of safe settings)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(SAFE)
    data = early.config_bytes(str(cfg), paths.CONFIG, paths.CONFIG_ENV)
    why = early.why_maybe(config=data, sysfs_header=paths.SYSFS_HEADER, cmdline=paths.CMDLINE,
                          iomem=paths.IOMEM, mem=paths.MEM)
    if why is not None:
        pytest.skip(f"this machine may hold a dump ({why}): not running the boot job here")
    env = {**dict(__import__("os").environ), paths.CONFIG_ENV: str(cfg)}
    answer, new = _probe({}, env)
    assert answer is True
    assert not set(HEAVY) & set(new), new
    assert set(new) <= {"dumpsaver", "dumpsaver.cli", "dumpsaver.early", "dumpsaver.paths"}
