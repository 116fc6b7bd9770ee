"""Retention: keep the dump directory within ``keep_dumps`` and ``max_use``, deleting
the oldest saved dumps first, never the one just saved."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path

from dumpsaver.catalogue import TMP_PREFIX, UPLOADED, saved_dumps
from dumpsaver.config import Config
from dumpsaver.faults import checkpoint

log = logging.getLogger("dumpsaver")


def rmtree_at(dest_fd: int, name: str) -> None:
    """Remove dest/name without following symlinks (shutil.rmtree is symlink-safe with fds)."""
    shutil.rmtree(name, dir_fd=dest_fd)


def vacuum(dest: Path, dest_fd: int, cfg: Config, protect: str) -> list[str]:
    """Delete the oldest saved dumps until keep_dumps and max_use hold (never ``protect``)."""
    dumps = saved_dumps(dest)
    sizes = {n: _du(dest_fd, n) for n, _ in dumps}
    removed = []
    while dumps:
        over_count = cfg.keep_dumps and len(dumps) > cfg.keep_dumps
        over_size = cfg.max_use and sum(sizes[n] for n, _ in dumps) > cfg.max_use
        if not (over_count or over_size):
            break
        victim = next((n for n in retention_order(dest_fd, [n for n, _ in dumps])
                       if n != protect), None)
        if victim is None:
            break
        log.info("retention: removing old dump %s", victim)
        # Out of sight first (atomically), then delete: an interrupted deletion leaves a
        # .tmp-* the next run removes, never a dump with some of its files gone.
        doomed = f"{TMP_PREFIX}old-{victim}"
        try:
            os.rename(victim, doomed, src_dir_fd=dest_fd, dst_dir_fd=dest_fd)
            checkpoint("retention-delete")
            rmtree_at(dest_fd, doomed)
        except OSError as e:  # the new dump is saved: a failed cleanup is only a warning
            log.warning("retention: cannot remove %s: %s", victim, e.strerror)
            break
        removed.append(victim)
        dumps = [(n, i) for n, i in dumps if n != victim]
    return removed


def retention_order(dest_fd: int, names: list[str]) -> list[str]:
    """The order in which retention deletes: dumps a store holds in full (their
    uploaded.json says so) before those that exist only here; oldest first within
    each (``names`` is oldest first)."""
    def uploaded(name: str) -> bool:
        try:
            fd = os.open(f"{name}/{UPLOADED}", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=dest_fd)
            with os.fdopen(fd, "rb") as f:
                targets = json.loads(f.read(1 << 20)).get("targets", {})
            return any(t.get("mode") == "full" for t in targets.values())
        except (OSError, ValueError, AttributeError):
            return False

    return sorted(names, key=lambda n: not uploaded(n))  # stable: age order kept


def _du(dest_fd: int, name: str) -> int:
    total = 0
    with contextlib.suppress(OSError):
        sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dest_fd)
        try:
            for f in os.listdir(sub):
                st = os.stat(f, dir_fd=sub, follow_symlinks=False)
                total += st.st_blocks * 512
        finally:
            os.close(sub)
    return total
