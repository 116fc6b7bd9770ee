"""``dumpsaver upload`` and ``dumpsaver list --remote``: parse, call the engine, print."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dumpsaver.errors import EXIT_NO_DUMP, EXIT_OK, DumpsaverError

HELP = ("send saved dumps to the configured S3 store and/or ssh destination "
        "(dumpsaver-upload.service)")


def options(s: argparse.ArgumentParser) -> None:
    s.add_argument("--dest", type=Path, help="dump directory (default: dump_dir)")
    s.add_argument("--state-dir", type=Path, help="state directory (default: state_dir)")
    s.add_argument("--check", action="store_true",
                   help="only check: exit 0 if a dump is left to send, 3 if not")
    s.add_argument("--json", action="store_true", help="print what was sent as JSON")


def add_list_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--remote", action="store_true",
                   help="the dumps in the S3 store, all machines, grouped by kernel and panic")


def run(ctx: Any) -> int:
    from dumpsaver.upload import engine

    if ctx.args.check:
        left = engine.pending(ctx.cfg, ctx.where.dest, ctx.where.state_dir)
        for d, ts in left:
            print(f"{d.name}: not yet in {', '.join(t.name for t in ts)}")
        return EXIT_OK if left else EXIT_NO_DUMP

    def sent(target: str, name: str, rec: dict[str, Any]) -> None:
        if ctx.args.json:
            return
        if target == "s3":
            from dumpsaver.upload.s3 import describe
        else:
            from dumpsaver.upload.ssh import describe
        print(f"dumpsaver: {target}: {name}: {describe(rec)}")

    rep = engine.upload(ctx.cfg, ctx.where.dest, ctx.where.state_dir, on_sent=sent)
    if ctx.args.json:
        print(json.dumps({"sent": [{"target": t, "dump": n, **r} for t, n, r in rep.sent],
                          "failed": {t: e.message for t, e in rep.failed.items()},
                          "deleted": rep.deleted, "left": rep.left}, indent=1))
    for name in rep.deleted:
        print(f"dumpsaver: deleted {name} here (every target has all of it)")
    if rep.failed:
        errors = list(rep.failed.values())
        first = errors[0]
        msg = "; ".join(e.message for e in errors)
        n = f"{rep.left} dump{'s' if rep.left != 1 else ''} left to send"
        raise DumpsaverError(f"{msg}; {n}", hint=first.hint,
                             exit_code=first.exit_code)
    if not rep.sent and not ctx.args.json:
        print("dumpsaver: nothing to upload")
    return EXIT_OK


def list_remote(ctx: Any) -> int:
    from dumpsaver.upload import engine, fleet
    from dumpsaver.upload.s3 import S3Target

    t = next((t for t in engine.configured(ctx.cfg, ctx.cfg.state_dir)
              if isinstance(t, S3Target)), None)
    if t is None:
        raise DumpsaverError("list --remote reads the S3 store, and no s3_bucket is set",
                             hint="set s3_bucket (and s3_endpoint) in dumpsaver.yaml")
    rows = fleet.remote_groups(t)
    if ctx.args.json:
        print(json.dumps(rows, indent=1))
    else:
        print("\n".join(fleet.table(rows)))
    return EXIT_OK
