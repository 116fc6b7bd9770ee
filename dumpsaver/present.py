"""How the CLI shows things to people: one time format, the table of ``list``, the layout
of ``info``.  Machine forms (--json) do not pass through here.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from dumpsaver.sanitize import clean_text
from dumpsaver.sizes import human
from dumpsaver.status import SavedDump, crash_ts


def when(ts: float | None, *, now: float | None = None, age: bool | None = None) -> str:
    """The one time format: local time with its zone, like coredumpctl, and the relative
    age on a terminal (``age`` forces it on or off)."""
    if ts is None:
        return "?"
    text = time.strftime("%a %Y-%m-%d %H:%M:%S %Z", time.localtime(ts))
    if age is None:
        age = sys.stdout.isatty()
    if age:
        text += f" ({ago((now or time.time()) - ts)})"
    return text


def ago(seconds: float) -> str:
    s = int(seconds)
    if s < 0:
        return "in the future"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s // size}{unit} ago"
    return f"{s}s ago"


def iso_ts(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


def short_ids(dumps: Sequence[SavedDump], width: int = 25) -> list[str]:
    """Each name cut to ``width``: still a prefix ``info`` and ``list`` select by, and the
    whole name where the cut would be shared by two dumps."""
    cut = [d.id[:width] for d in dumps]
    return [c if cut.count(c) == 1 else d.id for c, d in zip(cut, dumps, strict=True)]


def state(d: SavedDump) -> str:
    if d.complete is True:
        return "complete"
    return "TRUNCATED" if d.dropped_at_panic else "INCOMPLETE"


def table(dumps: Sequence[SavedDump], *, tty: bool) -> list[str]:
    """``list``'s table: headers, one dump a line.  On a terminal the names are cut (to a
    prefix that still selects), lines to the width, and the time carries its age; into a
    pipe everything is whole."""
    # what matters most first: a narrow terminal cuts the kernel and the panic string
    heads = ("TIME", "ID", "STATE", "SIZE", "FORMAT", "KERNEL", "PANIC")
    rows = [(when(crash_ts(d), age=tty), i, state(d),
             human(d.size) if isinstance(d.size, int) else "?", str(d.format or "-"),
             d.kernel or "-", d.panic)
            for d, i in zip(dumps, short_ids(dumps) if tty else [d.id for d in dumps],
                            strict=True)]
    widths = [max([len(h)] + [len(r[c]) for r in rows]) for c, h in enumerate(heads[:-1])]
    lines = []
    for r in [heads, *rows]:
        cells = [f"{v:>{w}}" if c == 3 else f"{v:<{w}}" for c, (v, w)
                 in enumerate(zip(r[:-1], widths, strict=True))]
        lines.append("  ".join([*cells, r[-1]]))
    if tty:
        cols = shutil.get_terminal_size().columns
        lines = [ln if len(ln) <= cols else ln[: max(cols - 1, 0)] + "…" for ln in lines]
    return lines


def info_lines(info: dict[str, Any], path: str) -> list[str]:
    """``info``'s layout for people (labels right-aligned, like coredumpctl info)."""
    def get(d: Any, k: str) -> Any:
        return d.get(k) if isinstance(d, dict) else None

    def txt(v: Any, n: int = 300) -> str:
        return clean_text(str(v), n)

    kernel, pages = info.get("kernel"), info.get("pages")
    out: list[tuple[str, str]] = [("ID", txt(info.get("id"), 200)),
                                  ("Dump ID", txt(info.get("dump_id"), 100))]
    reasons = info.get("incomplete_reasons") or []
    if info.get("complete") is True:
        out.append(("State", "complete"))
    else:
        out.append(("State", "INCOMPLETE"))
        out += [("", "- " + txt(r)) for r in (reasons if isinstance(reasons, list) else [])]
        if get(pages, "dropped_at_panic"):
            out.append(("Hint", "enlarge the dump area (memmap= or the kernel's mcore size) "
                                "so that the next crash fits"))
    out.append(("Crash time", when(iso_ts(info.get("crash_time")))))
    took = info.get("duration_s")
    out.append(("Saved", when(iso_ts(info.get("save_time")))
                + (f", took {took} s" if isinstance(took, int | float) else "")))
    if isinstance(kernel, dict):
        out.append(("Kernel", f"{txt(kernel.get('release', '?'))} "
                              f"{txt(kernel.get('version', ''))} ({txt(kernel.get('machine'))})"))
        out.append(("Hostname", txt(kernel.get("nodename", "?"))))
    out.append(("Panic", txt(info.get("panic"), 2000)))
    size = info.get("file_size")
    out.append(("Format", f"{txt(info.get('format'))}, "
                          f"{human(size) if isinstance(size, int) else '?'}"))
    mem, inmem = info.get("memory_bytes"), info.get("dump_bytes_in_memory")
    if isinstance(mem, int) and isinstance(inmem, int):
        out.append(("Memory", f"{human(mem)} machine, {info.get('page_size')}-byte pages; "
                              f"{human(inmem)} compressed in memory ({txt(info.get('codec'))})"))
    if isinstance(pages, dict):
        out.append(("Pages", f"{pages.get('saved')} saved, {pages.get('zero')} zero, "
                             f"{pages.get('damaged')} damaged, "
                             f"{pages.get('dropped_at_panic')} dropped at panic"))
        excl = pages.get("excluded_by_class")
        if isinstance(excl, dict) and excl:
            out.append(("Excluded", ", ".join(f"{txt(k, 40)} {v}" for k, v in excl.items())))
    out.append(("Found by", txt(info.get("found_by"))))
    out.append(("Storage", clean_text(path, 1000)))
    width = max(len(k) for k, _ in out)
    return [f"{k:>{width}}: {v}" if k else f"{'':>{width}}  {v}" for k, v in out]
