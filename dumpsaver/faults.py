"""Kill points for the interruption tests: a leaf module (it imports nothing of the
project), so every stage can call it without an import cycle.

``DUMPSAVER_KILL_AT=name[:n]`` makes the process SIGKILL itself the n-th time
(default the 1st) it passes ``checkpoint(name)``; ``DUMPSAVER_RAISE_AT=name[:n]``
makes it raise InjectedFault there instead (an unexpected error, not a
DumpsaverError: how a bug or a MemoryError looks to the boot job).  Unset, a
checkpoint costs two dictionary lookups.
"""

from __future__ import annotations

import os
import signal

ENV = "DUMPSAVER_KILL_AT"
RAISE_ENV = "DUMPSAVER_RAISE_AT"


class InjectedFault(RuntimeError):
    """Raised at a checkpoint named by DUMPSAVER_RAISE_AT."""


#: How often each kill point was passed in this process (reset by forked test children).
hits: dict[str, int] = {}


def armed(prefix: str) -> bool:
    """True when a kill or raise point starting with ``prefix`` is armed (for hot loops)."""
    return (os.environ.get(ENV, "").startswith(prefix)
            or os.environ.get(RAISE_ENV, "").startswith(prefix))


def checkpoint(name: str) -> None:
    for env in (ENV, RAISE_ENV):
        spec = os.environ.get(env)
        if not spec:
            continue
        want, _, nth = spec.partition(":")
        if want != name:
            continue
        hits[name] = hits.get(name, 0) + 1
        if hits[name] < int(nth or 1):
            continue
        if env == ENV:
            os.kill(os.getpid(), signal.SIGKILL)
        raise InjectedFault(f"injected fault at {name}")
