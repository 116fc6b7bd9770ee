"""Both targets at once, the checksum mode, forgotten uploads, and the settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from dumpsaver import config
from dumpsaver.errors import ConfigError
from tests.upload.conftest import Dumps, one_line_error
from tests.upload.servers import Sshd, Weed
from tests.upload.test_s3 import assert_complete, prefix_of

MiB = 1 << 20


def test_checksum_mode_when_required(weed: Weed, dumps: Dumps) -> None:
    name = dumps.add(7 * MiB)
    dumps.s3_config(weed, s3_checksum="when_required")
    r = dumps.upload()
    assert r.returncode == 0, r.stderr
    assert_complete(weed, dumps, name)


def test_deleted_only_when_every_target_has_it(weed: Weed, sshd: Sshd, dumps: Dumps,
                                               tmp_path: Path) -> None:
    name = dumps.add(2 * MiB)
    common = {"ssh_destination": f"root@127.0.0.1:{tmp_path / 'remote'}",
              "ssh_port": sshd.port, "ssh_options": sshd.options(), "upload_delete": True}
    dumps.s3_config(weed, ssh_identity=str(sshd.host_key), **common)  # ssh refuses this key
    r = dumps.upload()
    assert r.returncode == 1
    assert one_line_error(r.stderr).startswith("error: ssh: ")
    assert (dumps.dest / name / "vmcore").exists()
    assert [u[:5] for u in dumps.marker(name)] == ["s3://"]
    dumps.s3_config(weed, ssh_identity=str(sshd.client_key), **common)
    assert dumps.upload("--check").stdout.strip() == f"{name}: not yet in ssh"
    r = dumps.upload()
    assert r.returncode == 0, r.stderr
    assert "deleted" in r.stdout and not (dumps.dest / name).exists()
    assert (tmp_path / "remote" / "testhost" / name / "vmcore").exists()


def test_unfinished_upload_of_a_removed_dump_is_aborted(weed: Weed, dumps: Dumps) -> None:
    gone = dumps.add(12 * MiB)
    dumps.s3_config(weed, s3_concurrency=1)
    assert dumps.upload(env={"DUMPSAVER_KILL_AT": "upload-part:1"}).returncode == -9
    base = f"{prefix_of(dumps)}/testhost/{gone}/"
    assert [k for k in weed.open_uploads() if k.startswith(base)]
    import shutil

    shutil.rmtree(dumps.dest / gone)  # retention, or a person
    dumps.add(1 * MiB)
    assert dumps.upload().returncode == 0
    assert not [k for k in weed.open_uploads() if k.startswith(base)]
    assert not list((dumps.state / "upload").glob("s3-*.json"))


@pytest.mark.parametrize(("text", "key"), [
    ("s3_part_size: 1M", "s3_part_size"), ("s3_checksum: always", "s3_checksum"),
    ("ssh_mode: rsync", "ssh_mode"), ("s3_credentials_file: relative", "s3_credentials_file"),
    ("ssh_options: '-oFoo=bar'", "ssh_options"), ("s3_concurrency: 0", "s3_concurrency"),
])
def test_bad_upload_settings_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(text + "\n")
    with pytest.raises(ConfigError) as e:
        config.load(p)
    assert repr(key) in e.value.message


def test_no_target_configured(dumps: Dumps) -> None:
    dumps.add(4096)
    dumps.write_config()
    r = dumps.upload()
    assert r.returncode == 2 and "no upload target" in one_line_error(r.stderr)
    assert dumps.upload("--check").returncode == 2  # the timer's service skips quietly


def test_bad_ssh_destination(dumps: Dumps) -> None:
    dumps.add(4096)
    dumps.write_config(ssh_destination="host-without-path")
    r = dumps.upload()
    assert r.returncode == 1 and "is not [user@]host:/directory" in one_line_error(r.stderr)
