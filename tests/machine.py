"""The one simulated-machine fixture of every test tier (style.md, item 3: the
simulator is the fixture factory).

A ``Sim`` is a crash written to disk by dumpsaver.simulate (``mem`` as the next
boot sees it, ``before.mem`` the ground truth, ``sys/`` the kernel's sysfs tree,
``manifest.json``) plus what a test needs to judge a save of it.  tests/conftest.py
makes them per test (``make_sim``), the reliability campaign per session.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dumpsaver import simulate
from dumpsaver.codecs import Codec
from dumpsaver.locate import Candidate, from_sysfs
from dumpsaver.physmem import Range


@dataclass
class Sim:
    dir: Path
    manifest: dict[str, Any]

    @property
    def mem(self) -> Path:
        return self.dir / "mem"

    @property
    def sys(self) -> Path:
        return self.dir / "sys"

    sysfs = sys

    @property
    def before(self) -> Path:
        return self.dir / "before.mem"

    @property
    def page_size(self) -> int:
        return int(self.manifest["page_size"])

    @property
    def area(self) -> list[Range]:
        """Ground truth: where the simulator put the dump."""
        return [Range(a, b) for a, b in self.manifest["dump_area"]]

    @property
    def header_paddr(self) -> int:
        return int(self.manifest["dump_area"][0][0])

    def saved_pfns(self) -> list[int]:
        return [p for a, b in self.manifest["saved"] for p in range(a, b + 1)]

    def truth(self, pfn: int) -> bytes:
        ps = self.page_size
        with open(self.before, "rb") as f:
            f.seek(pfn * ps)
            return f.read(ps)

    def truth_pages(self) -> dict[int, bytes]:
        ps = self.page_size
        data = self.before.read_bytes()
        return {p: data[p * ps : (p + 1) * ps] for p in self.saved_pfns()}

    def magic(self) -> bytes:
        with open(self.mem, "rb") as f:
            f.seek(self.header_paddr)
            return f.read(8)

    def candidate(self) -> Candidate:
        c = from_sysfs(self.sys)
        assert c is not None
        return c

    def cli_args(self, dest: Path) -> list[str]:
        return ["--mem", str(self.mem), "--sysfs", str(self.sys), "--cmdline", "/dev/null",
                "--dest", str(dest), "--state-dir", str(dest.parent / "state")]

    def copy(self, to: Path) -> Sim:
        """A private copy (mem, sys, manifest; before.mem shared by a symlink)."""
        to.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.mem, to / "mem")
        shutil.copytree(self.sys, to / "sys")
        shutil.copyfile(self.dir / "manifest.json", to / "manifest.json")
        with contextlib.suppress(FileExistsError):
            os.symlink(self.before, to / "before.mem")
        return Sim(to, self.manifest)


def make(into: Path, *, memory: int = 1 << 20, profile: str = "idle", seed: int = 1,
         codec: Codec = Codec.ZLIB, **kw: Any) -> Sim:  # fmt: skip
    """Crash a simulated machine into ``into``."""
    simulate.simulate(into, memory=memory, profile=profile, seed=seed, codec=codec, **kw)
    return load(into)


def load(into: Path) -> Sim:
    return Sim(into, json.loads((into / "manifest.json").read_text()))
