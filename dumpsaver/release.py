"""Handing the dump area back, once the copy is durable (never before).

Two steps: overwrite the header's magic in memory (a later boot sees "already
saved", never the same dump again), then, with the kernel's mcore interface, write
its ``release`` attribute so the kernel frees the pages.  A save interrupted between
the two finds the header invalidated and finishes only the second step.
"""

from __future__ import annotations

import os

from dumpsaver import format as fmt
from dumpsaver.errors import DumpsaverError
from dumpsaver.faults import checkpoint
from dumpsaver.locate import Candidate
from dumpsaver.physmem import PhysMem


def release(cand: Candidate, mem_path: str) -> None:
    """Invalidate the header in memory, then hand the pages back (sysfs)."""
    with PhysMem(mem_path, cand.ranges, writable=True) as mem:
        mem.write(cand.header, fmt.SAVED_MAGIC)
        if os.path.isfile(mem_path):  # an image file in tests; /dev/mem needs no fsync
            try:
                os.fsync(mem.fd)
            except OSError as e:
                raise DumpsaverError(
                    f"cannot invalidate the dump header in {mem_path}: {e.strerror}"
                ) from None
    checkpoint("release-sysfs")
    release_sysfs(cand)


def release_sysfs(cand: Candidate) -> None:
    """Hand the pages back to the kernel (sysfs ``release``); a no-op without one.

    Also called for a dump whose header is already invalidated: a save interrupted
    between invalidating the header and this write must still free the memory."""
    if cand.release is not None:
        try:
            with open(cand.release, "w") as f:
                f.write("1\n")
        except OSError as e:
            raise DumpsaverError(
                f"cannot release the dump via {cand.release}: {e.strerror}"
            ) from None
