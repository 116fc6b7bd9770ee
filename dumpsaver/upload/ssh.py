"""Upload over ssh, the way kdump-tools' ssh target does, with the same rule as S3:
the remote has it all before anything here changes.

The dump goes to ``<dir>/<host>/.tmp-<dump>/`` on the remote, either copied as it
is (``ssh_mode: copy``; resumable: a rerun appends to what the remote already has)
or as makedumpfile's flattened stream into ``makedumpfile -R`` there
(``ssh_mode: makedumpfile``).  Then one remote command checks the SHA-256 of every
file against ours, syncs them and renames the directory to ``<dir>/<host>/<dump>``:
a directory under its final name is complete.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
from typing import IO, Any

from dumpsaver.config import Config
from dumpsaver.errors import DumpsaverError
from dumpsaver.faults import checkpoint
from dumpsaver.sanitize import clean_text
from dumpsaver.sizes import human
from dumpsaver.upload.local import LocalDump, store_info
from dumpsaver.writers.flat import END, RECORD, flat_header

CHUNK = 1 << 20
EXIT_MISMATCH = 10


def parse_destination(dest: str) -> tuple[str, str]:
    """``[user@]host:/dir`` (``[v6addr]:/dir`` too) -> (ssh host argument, remote dir)."""
    if dest.startswith("[") or "@[" in dest:
        host, sep, path = dest.partition("]:")
        host = host.replace("[", "")
    else:
        host, sep, path = dest.partition(":")
    if not sep or not host or not path.startswith("/") or host.startswith("-"):
        raise DumpsaverError(f"ssh_destination {dest!r} is not [user@]host:/directory")
    return host, path.rstrip("/") or "/"


class SshTarget:
    name = "ssh"

    def __init__(self, cfg: Config, host: str) -> None:
        self.cfg = cfg
        self.host = host
        self.remote, self.dir = parse_destination(cfg.ssh_destination)

    def url(self, name: str) -> str:
        return f"ssh://{self.remote}:{self.cfg.ssh_port}{self.dir}/{self.host}/{name}"

    def _argv(self, script: str) -> list[str]:
        t = self.cfg.upload_timeout
        argv = ["ssh", "-p", str(self.cfg.ssh_port), "-o", "BatchMode=yes",
                "-o", f"ConnectTimeout={t}", "-o", f"ServerAliveInterval={max(1, t // 4)}",
                "-o", "ServerAliveCountMax=4"]
        if self.cfg.ssh_identity is not None:
            argv += ["-i", str(self.cfg.ssh_identity), "-o", "IdentitiesOnly=yes"]
        for o in self.cfg.ssh_options:
            argv += ["-o", o]
        return [*argv, "--", self.remote, script]

    def _fail(self, what: str, rc: int, err: bytes) -> DumpsaverError:
        lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
        why = clean_text(lines[-1], 300) if lines else f"exit status {rc}"
        if rc == 255:
            return DumpsaverError(f"ssh to {self.remote} failed during {what}: {why}",
                                  hint="check ssh_destination, ssh_identity and the host key; "
                                  "the dump is kept here")
        return DumpsaverError(f"the remote command for {what} failed on {self.remote}: {why}",
                              hint="the dump is kept here; the timer tries again")

    def _run(self, what: str, script: str, data: bytes = b"") -> str:
        p = subprocess.run(self._argv(script), input=data, capture_output=True, check=False)
        if p.returncode != 0:
            raise self._fail(what, p.returncode, p.stderr)
        return p.stdout.decode(errors="replace")

    def _stream(self, what: str, script: str, feed: Any) -> None:
        """Run ``script`` remotely with ``feed(pipe)`` writing its standard input."""
        with open(os.devnull, "wb") as null, subprocess.Popen(
                self._argv(script), stdin=subprocess.PIPE, stdout=null,
                stderr=subprocess.PIPE) as p:
            assert p.stdin is not None and p.stderr is not None
            try:
                feed(p.stdin)
                p.stdin.close()
            except BrokenPipeError:
                pass
            err = p.stderr.read()
            rc = p.wait()
        if rc != 0:
            raise self._fail(what, rc, err)

    # -- one dump ---------------------------------------------------------------------------

    def send(self, d: LocalDump) -> dict[str, Any]:
        q = shlex.quote
        final = f"{self.dir}/{self.host}/{d.name}"
        tmp = f"{self.dir}/{self.host}/.tmp-{d.name}"
        out = self._run("checking the remote", f"if test -f {q(final)}/info.json; then "
                        f"echo present; exit 0; fi; umask 077 && mkdir -p {q(tmp)} && "
                        f"(stat -c %s {q(tmp)}/vmcore 2>/dev/null || echo 0)").strip()
        if out == "present":
            return {"mode": "full", "already": True}
        have = int(out) if out.isdigit() else 0
        size = os.path.getsize(d.vmcore)
        h = hashlib.sha256()
        with open(d.vmcore, "rb") as f:
            if self.cfg.ssh_mode == "makedumpfile":
                have = 0
                self._stream("makedumpfile -R", f"makedumpfile -R {q(tmp)}/vmcore >/dev/null",
                             lambda pipe: _flattened(f, pipe, h))
            else:
                if have > size:
                    have = 0
                while f.tell() < have:  # what the remote has: hashed here, not sent again
                    chunk = f.read(min(CHUNK, have - f.tell()))
                    if not chunk:
                        break
                    h.update(chunk)
                redirect = ">>" if have else ">"
                self._stream("copying the vmcore", f"cat {redirect} {q(tmp)}/vmcore",
                             lambda pipe: _copy(f, pipe, h))
        checkpoint("ssh-vmcore")
        dmesg = d.dmesg.read_bytes()
        info = store_info(d, self.host, "full", vmcore={"size": size, "sha256": h.hexdigest()})
        for name, data in (("dmesg.txt", dmesg), ("info.json", info)):
            self._run(f"copying {name}", f"cat > {q(tmp)}/{name}", data)
        sums = "".join(f"{x}  {n}\\n" for x, n in ((h.hexdigest(), "vmcore"),
                       (hashlib.sha256(dmesg).hexdigest(), "dmesg.txt"),
                       (hashlib.sha256(info).hexdigest(), "info.json")))
        checkpoint("ssh-rename")
        p = subprocess.run(self._argv(
            f"cd {q(tmp)} && {{ printf '{sums}' | sha256sum -c --quiet --strict - >&2 || "
            f"{{ rm -f vmcore; exit {EXIT_MISMATCH}; }}; }} && sync vmcore dmesg.txt info.json . "
            f"&& cd / && mv -T {q(tmp)} {q(final)} && sync {q(os.path.dirname(final))}"),
            capture_output=True, check=False)
        if p.returncode == EXIT_MISMATCH:
            raise DumpsaverError(f"the copy of {d.name} on {self.remote} does not match ours "
                                 "(SHA-256): removed there, sent again next time")
        if p.returncode != 0:
            raise self._fail("the final check and rename", p.returncode, p.stderr)
        return {"mode": "full", "bytes_sent": size - have, "bytes_resumed": have,
                "sha256": h.hexdigest()}


    def forget(self, present: set[str]) -> list[str]:
        """Nothing kept here for ssh: a partial copy on the remote is its .tmp-* directory."""
        return []


def _copy(f: IO[bytes], pipe: IO[bytes], h: Any) -> None:
    for chunk in iter(lambda: f.read(CHUNK), b""):
        h.update(chunk)
        pipe.write(chunk)


def _flattened(f: IO[bytes], pipe: IO[bytes], h: Any) -> None:
    """The file as makedumpfile's flattened stream: one record per chunk."""
    pipe.write(flat_header())
    off = 0
    for chunk in iter(lambda: f.read(CHUNK), b""):
        h.update(chunk)
        pipe.write(RECORD.pack(off, len(chunk)))
        pipe.write(chunk)
        off += len(chunk)
    pipe.write(END)


def describe(r: dict[str, Any]) -> str:
    if r.get("already"):
        return "already complete on the remote"
    text = f"{human(int(r.get('bytes_sent', 0)))} sent"
    if r.get("bytes_resumed"):
        text += f", {human(int(r['bytes_resumed']))} already on the remote"
    return text

