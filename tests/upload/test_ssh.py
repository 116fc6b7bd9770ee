"""dumpsaver upload over ssh to a real sshd on 127.0.0.1: copy and makedumpfile -R,
resume, the final rename only after the remote's SHA-256 check."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.upload.conftest import Dumps, one_line_error
from tests.upload.servers import Sshd

MiB = 1 << 20


def ssh_config(dumps: Dumps, sshd: Sshd, remote: Path, **kw: object) -> None:
    settings = {"ssh_destination": f"root@127.0.0.1:{remote}", "ssh_port": sshd.port,
                "ssh_identity": str(sshd.client_key), "ssh_options": sshd.options(), **kw}
    dumps.write_config(**settings)


@pytest.mark.parametrize("mode", ["copy", "makedumpfile"])
def test_ssh_upload(sshd: Sshd, dumps: Dumps, tmp_path: Path, mode: str) -> None:
    name = dumps.add(5 * MiB + 123)
    remote = tmp_path / "remote"
    ssh_config(dumps, sshd, remote, ssh_mode=mode)
    r = dumps.upload()
    assert r.returncode == 0, r.stderr
    final = remote / "testhost" / name
    for leaf in ("vmcore", "dmesg.txt"):
        assert hashlib.sha256((final / leaf).read_bytes()).hexdigest() == dumps.sha256(name, leaf)
    info = json.loads((final / "info.json").read_text())
    assert info["upload"]["vmcore"]["sha256"] == dumps.sha256(name)
    assert not list((remote / "testhost").glob(".tmp-*"))
    assert any(u.startswith("ssh://") for u in dumps.marker(name))
    assert "already" not in dumps.upload().stdout  # marked: nothing left to send


def test_ssh_resume_and_interrupted_rename(sshd: Sshd, dumps: Dumps, tmp_path: Path) -> None:
    name = dumps.add(6 * MiB)
    remote = tmp_path / "remote"
    ssh_config(dumps, sshd, remote)
    tmp = remote / "testhost" / f".tmp-{name}"
    tmp.mkdir(parents=True)
    (tmp / "vmcore").write_bytes((dumps.dest / name / "vmcore").read_bytes()[: 2 * MiB])
    r = dumps.upload(env={"DUMPSAVER_KILL_AT": "ssh-rename"})  # everything sent, not renamed
    assert r.returncode == -9
    assert not (remote / "testhost" / name).exists() and not dumps.marker(name)
    r = dumps.upload("--json")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)["sent"][0]
    assert rec["bytes_resumed"] == 6 * MiB and rec["bytes_sent"] == 0
    assert hashlib.sha256((remote / "testhost" / name / "vmcore").read_bytes()
                          ).hexdigest() == dumps.sha256(name)


def test_ssh_damaged_partial_copy_is_sent_again(sshd: Sshd, dumps: Dumps, tmp_path: Path
                                                ) -> None:
    name = dumps.add(3 * MiB)
    remote = tmp_path / "remote"
    ssh_config(dumps, sshd, remote)
    tmp = remote / "testhost" / f".tmp-{name}"
    tmp.mkdir(parents=True)
    (tmp / "vmcore").write_bytes(os.urandom(MiB))  # not our bytes
    r = dumps.upload()
    assert r.returncode == 1
    assert "does not match ours" in one_line_error(r.stderr)
    assert not (remote / "testhost" / name).exists() and not dumps.marker(name)
    assert dumps.upload().returncode == 0
    assert hashlib.sha256((remote / "testhost" / name / "vmcore").read_bytes()
                          ).hexdigest() == dumps.sha256(name)


def test_ssh_refused(sshd: Sshd, dumps: Dumps, tmp_path: Path) -> None:
    name = dumps.add(1 * MiB)
    ssh_config(dumps, sshd, tmp_path / "remote", ssh_identity=str(sshd.host_key))  # wrong key
    r = dumps.upload()
    assert r.returncode == 1
    assert "ssh to root@127.0.0.1 failed" in one_line_error(r.stderr)
    assert (dumps.dest / name / "vmcore").exists() and not dumps.marker(name)
