"""Failed attempts, remembered across boots so that a failing save never loops.

state_dir/attempts.json: {"dump_id": ..., "identity": ..., "count": n, "reason": ...,
"time": ...} for the dump in memory that could not be saved (``identity``: see
dumpsaver.catalogue.identity; a new crash under a reused dump id starts afresh).
Cleared once a dump is saved.  A busy lock is not an attempt: the caller does not
record it.
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dumpsaver.errors import NoPermissionError
from dumpsaver.faults import checkpoint

FILE = "attempts.json"


def load(state_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((state_dir / FILE).read_bytes()[: 1 << 20])
    except PermissionError as e:  # the attempts cannot be known: refused, not "none"
        raise NoPermissionError(str(state_dir), e) from None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def attempts_for(state_dir: Path, dump_id: str, identity: str | None = None) -> int:
    s = load(state_dir)
    count = s.get("count", 0)
    same = s.get("dump_id") == dump_id and s.get("identity", identity) == identity
    return count if same and isinstance(count, int) else 0


def record_failure(state_dir: Path, dump_id: str, reason: str, identity: str | None = None) -> int:
    """Count one more failed attempt for ``dump_id``; return the new count.  Durable."""
    count = attempts_for(state_dir, dump_id, identity) + 1
    data = {"dump_id": dump_id, "count": count, "reason": reason,
            "time": datetime.now(UTC).isoformat()}
    if identity is not None:
        data["identity"] = identity
    with contextlib.suppress(OSError):  # a read-only /var must not turn a failure into a crash
        write_json(state_dir, FILE, data, checkpoint_name="state")
    return count


def write_json(state_dir: Path, name: str, data: dict[str, Any], *,
               checkpoint_name: str | None = None) -> None:
    """Write state_dir/name durably: temp file, fsync, rename, fsync the directory."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = state_dir / (name + ".tmp")
    # Never through a symlink or hard link planted under the temporary name: remove it,
    # then create the file afresh (O_EXCL), root-only.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    if checkpoint_name:
        checkpoint(checkpoint_name)
    os.replace(tmp, state_dir / name)
    fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clear(state_dir: Path) -> None:
    checkpoint("state-clear")
    with contextlib.suppress(OSError):
        (state_dir / FILE).unlink()
