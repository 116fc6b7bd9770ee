"""What ``dumpsaver upload`` decides: which dumps go where, what is marked and deleted."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dumpsaver.config import Config
from dumpsaver.errors import EXIT_USAGE, DumpsaverError
from dumpsaver.upload import local

log = logging.getLogger("dumpsaver")


class Target(Protocol):
    name: str

    def url(self, name: str) -> str: ...

    def send(self, d: local.LocalDump) -> dict[str, Any]: ...

    def forget(self, present: set[str]) -> list[str]: ...


def targets(cfg: Config, state_dir: Path) -> list[Target]:
    host = local.host_name(cfg.upload_host)
    out: list[Target] = []
    if cfg.s3_bucket:
        from dumpsaver.upload.s3 import S3Target

        out.append(S3Target(cfg, host, state_dir))
    if cfg.ssh_destination:
        from dumpsaver.upload.ssh import SshTarget

        out.append(SshTarget(cfg, host))
    return out


def configured(cfg: Config, state_dir: Path) -> list[Target]:
    ts = targets(cfg, state_dir)
    if not ts:
        raise DumpsaverError("no upload target is configured",
                             hint="set s3_bucket and/or ssh_destination in dumpsaver.yaml",
                             exit_code=EXIT_USAGE)
    return ts


def pending(cfg: Config, dest: Path, state_dir: Path
            ) -> list[tuple[local.LocalDump, list[Target]]]:
    ts = configured(cfg, state_dir)
    out = []
    for d in local.saved(dest):
        have = local.read_marker(d.dir)
        missing = [t for t in ts if t.url(d.name) not in have]
        if missing:
            out.append((d, missing))
    return out


@dataclass
class Report:
    sent: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    failed: dict[str, DumpsaverError] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    left: int = 0


def upload(cfg: Config, dest: Path, state_dir: Path,
           on_sent: Callable[[str, str, dict[str, Any]], None] | None = None) -> Report:
    """Send every dump some target lacks, oldest first.  A target that fails is left
    alone for the rest of this run (its store is down, full or refusing us); the
    dump stays here, and the timer runs this again."""
    rep = Report()
    with local.upload_lock(state_dir):
        todo = pending(cfg, dest, state_dir)
        all_targets = configured(cfg, state_dir)
        for d, missing in todo:
            for t in missing:
                if t.name in rep.failed:
                    continue
                try:
                    rec = t.send(d)
                except DumpsaverError as e:
                    e.message = f"{t.name}: {d.name}: {e.message}"
                    rep.failed[t.name] = e
                    continue
                if not local.mark(dest, d.name, t.url(d.name), {
                        "mode": rec.get("mode", "full")}):
                    log.info("%s was removed here while it was sent; the store has it", d.name)
                rep.sent.append((t.name, d.name, rec))
                if on_sent:
                    on_sent(t.name, d.name, rec)
            have = local.read_marker(d.dir)
            if cfg.upload_delete and have and all(
                    have.get(t.url(d.name), {}).get("mode") == "full" for t in all_targets):
                local.delete(dest, d.name)
                rep.deleted.append(d.name)
        present = {d.name for d in local.saved(dest)}
        for t in all_targets:
            if t.name not in rep.failed:
                try:
                    for name in t.forget(present):
                        log.info("%s: dropped the unfinished upload of %s (gone here)",
                                 t.name, name)
                except DumpsaverError as e:
                    rep.failed[t.name] = e
        rep.left = len(pending(cfg, dest, state_dir))
    return rep
