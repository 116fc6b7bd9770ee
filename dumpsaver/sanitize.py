"""Text from a crashed kernel is hostile until cleaned.

Panic strings, uts fields and the log come from memory we do not trust: they
may hold terminal escape sequences, NULs, path separators or be huge.  Every
string shown on a terminal, written to JSON or the journal passes through here.

The cleaner is one ``str.translate`` with a fixed table: linear in the text,
no per-character Python call, and its output at most 6 characters per input
character (``\\u202e``), so a log of escape bytes costs a bounded multiple of
its size.
"""

from __future__ import annotations

#: Bidi controls and line/paragraph separators: they reorder or break what a
#: terminal shows (LRM, RLM and the Arabic letter mark included).
_BIDI = [0x061C, 0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_C0_C1 = [*range(0x00, 0x20), *range(0x7F, 0xA0)]


def _escape(c: int) -> str:
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


_TABLE = {c: _escape(c) for c in _C0_C1 + _BIDI}
_TABLE_NL = {c: e for c, e in _TABLE.items() if c not in (0x09, 0x0A)}  # keeps tab, newline

#: Every character the cleaner escapes (for tests and other checkers).
ESCAPED = frozenset(_TABLE)


def clean_text(text: str, limit: int | None, *, keep_newlines: bool = False) -> str:
    """Escape control characters (and bidi controls); cut to ``limit`` characters."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    return text.translate(_TABLE_NL if keep_newlines else _TABLE)
