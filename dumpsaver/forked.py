"""Work in a forked process, its result handed back over a pipe (the ELF writer's
second CPU).

The child shares the parent's open dump (the fork copies nothing until written)
and never returns into the parent's code: it runs one function, writes what it
returned, and leaves with ``os._exit`` (no atexit handlers, no buffered output,
no cleanup of the parent's files).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

OK, FAILED = b"\0", b"\1"


class ChildFailed(RuntimeError):
    """The forked process died or raised; the message says how."""


class Child:
    """``fn()`` running in a forked process; ``result()`` waits for the bytes it returned."""

    def __init__(self, fn: Callable[[], bytes]) -> None:
        r, w = os.pipe()
        try:
            pid = os.fork()
        except OSError:  # (EAGAIN, ENOMEM: the caller does the work itself)
            os.close(r)
            os.close(w)
            raise
        if pid == 0:  # the child: never returns, never runs the parent's cleanup
            code = 1
            try:
                os.close(r)
                data = OK + fn()
                code = 0
            except BaseException as e:  # reported to the parent
                data = FAILED + f"{type(e).__name__}: {e}".encode(errors="replace")
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(w, view) :]
            finally:
                os._exit(code)
        os.close(w)
        self.pid: int | None = pid
        self.fd = r

    def result(self) -> bytes:
        """What ``fn`` returned; ChildFailed when it raised or the process died."""
        chunks = []
        try:
            while b := os.read(self.fd, 1 << 20):
                chunks.append(b)
        finally:
            os.close(self.fd)
            status = self._reap()
        data = b"".join(chunks)
        code = os.waitstatus_to_exitcode(status)
        if code == 0 and data[:1] == OK:
            return data[1:]
        if data[:1] == FAILED:
            raise ChildFailed(data[1:].decode(errors="replace"))
        raise ChildFailed(f"exit status {code}" if code >= 0 else f"killed by signal {-code}")

    def kill(self) -> None:
        """Stop the child (the parent failed): it must not go on writing."""
        if self.pid is not None:
            os.close(self.fd)
            os.kill(self.pid, signal.SIGKILL)
            self._reap()

    def _reap(self) -> int:
        assert self.pid is not None
        _pid, status = os.waitpid(self.pid, 0)
        self.pid = None
        return status
