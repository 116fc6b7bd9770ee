"""The bash completion (completions/dumpsaver), run by a real bash: it offers every
subcommand and exactly each subcommand's options, and the saved dumps for an ID."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import pytest

from dumpsaver.commands import parser

from .conftest import REPO

SCRIPT = REPO / "completions" / "dumpsaver"


def complete(*words: str) -> list[str]:
    """COMPREPLY for the command line ``dumpsaver WORDS`` (the last word being typed)."""
    if shutil.which("bash") is None:
        pytest.skip("bash is missing")
    line = " ".join(["dumpsaver", *(f"'{w}'" for w in words)])
    script = (f"source {SCRIPT}\nCOMP_WORDS=({line})\nCOMP_CWORD={len(words)}\n"
              "_dumpsaver\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    r = subprocess.run(["bash", "--norc", "--noprofile", "-O", "extglob", "-c", script],
                       capture_output=True, text=True, check=True)  # fmt: skip
    return sorted(w for w in r.stdout.splitlines() if w)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_subcommands_and_their_options_agree_with_the_parser() -> None:
    subs = _subparsers()
    assert complete("") == sorted([*subs, "--config", "--debug", "--help", "--version"])
    for name, sp in subs.items():
        want = sorted({o for a in sp._actions for o in a.option_strings} - {"-h"})
        assert complete(name, "-") == want, name


def test_values_and_dump_names(tmp_path: Path) -> None:
    assert complete("save", "--format", "") == ["elf", "kdump"]
    assert complete("debug", "--debugger", "") == ["crash", "drgn", "gdb"]
    (tmp_path / "20261202T010203Z-abc").mkdir()
    assert complete("info", "--dest", str(tmp_path), "2026") == ["20261202T010203Z-abc"]
    assert complete("list", "--dest", str(tmp_path), "la") == ["latest"]
