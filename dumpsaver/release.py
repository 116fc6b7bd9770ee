"""Handing the dump area back, once the copy is durable (never before).

Two steps: overwrite the header's magic in memory (a later boot sees "already
saved", never the same dump again), then hand the memory back: with the kernel's
mcore interface, write its ``release`` attribute so the kernel frees the pages;
with ``memmap=!`` persistent memory, give the range to the page allocator as
movable RAM (dumpsaver.hotplug).  A save interrupted between the two finds the
header invalidated and finishes only the second step (:func:`hand_back`).
"""

from __future__ import annotations

import os

from dumpsaver import format as fmt
from dumpsaver.errors import DumpsaverError
from dumpsaver.faults import checkpoint
from dumpsaver.hotplug import GiveBack, give_back
from dumpsaver.locate import Candidate
from dumpsaver.pmemio import open_area


def release(cand: Candidate, mem_path: str) -> GiveBack | None:
    """Invalidate the header in memory, then hand the pages back (sysfs, or the
    memmap=! range to the page allocator: what came back is returned)."""
    with open_area(cand, mem_path, writable=True) as mem:
        mem.write(cand.header, fmt.SAVED_MAGIC)
        if os.path.isfile(mem.path):  # an image file in tests; /dev/mem needs no fsync
            try:
                os.fsync(mem.fd)
            except OSError as e:
                raise DumpsaverError(
                    f"cannot invalidate the dump header in {mem.path}: {e.strerror}"
                ) from None
    checkpoint("release-sysfs")
    return hand_back(cand)


def hand_back(cand: Candidate) -> GiveBack | None:
    """The second step alone: also for an area whose header is already invalidated (a
    save interrupted between the two steps) or that never held a dump (memmap=!
    memory reserved again by a clean reboot: it goes back to the system too)."""
    if cand.pmem is not None:
        return give_back(cand.pmem, magic=fmt.MAGIC)
    release_sysfs(cand)
    return None


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
