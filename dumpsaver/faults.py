"""Kill points for the interruption tests: a leaf module (it imports nothing of the
project), so every stage can call it without an import cycle.

``DUMPSAVER_KILL_AT=name[:n]`` makes the process SIGKILL itself the n-th time
(default the 1st) it passes ``checkpoint(name)``.  Unset, a checkpoint costs one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "DUMPSAVER_KILL_AT"

#: How often each kill point was passed in this process (reset by forked test children).
hits: dict[str, int] = {}


def armed(prefix: str) -> bool:
    """True when a kill point starting with ``prefix`` is armed (for hot loops)."""
    return os.environ.get(ENV, "").startswith(prefix)


def checkpoint(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    want, _, nth = spec.partition(":")
    if want != name:
        return
    hits[name] = hits.get(name, 0) + 1
    if hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
