"""Text from a crashed kernel is hostile until cleaned.

Panic strings, uts fields and the log come from memory we do not trust: they
may hold terminal escape sequences, NULs, path separators or be huge.  Every
string shown on a terminal, written to JSON or the journal passes through here.
"""

from __future__ import annotations

import re

_BIDI = r"\u2028\u2029\u202a-\u202e\u2066-\u2069"
_CONTROL = re.compile(rf"[\x00-\x1f\x7f-\x9f{_BIDI}]")
_CONTROL_NL = re.compile(rf"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}]")  # keeps tab and newline


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def clean_text(text: str, limit: int | None, *, keep_newlines: bool = False) -> str:
    """Escape control characters (and bidi overrides); cut to ``limit`` characters."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    if keep_newlines:
        return _CONTROL_NL.sub(_escape, text)
    return _CONTROL.sub(_escape, text)
