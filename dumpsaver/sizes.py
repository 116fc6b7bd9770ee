"""Sizes in and out: '512M' -> bytes, bytes -> '512.0 MiB'."""

from __future__ import annotations

from dumpsaver.errors import DumpsaverError

_MULT = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str, *, allow_zero: bool = False) -> int:
    """'512M', '4G', '65536', '0x30000000', '16MiB' -> bytes."""
    t = text.strip().upper()
    if not t.startswith("0X"):  # hex has no unit suffix (B is a digit there)
        t = t.removesuffix("IB").removesuffix("B")
    mult = 1 if t.startswith("0X") else _MULT.get(t[-1:], 1)
    num = t[:-1] if mult != 1 else t
    try:
        value = int(num, 0) * mult
    except ValueError:
        raise DumpsaverError(f"bad size {text!r}", hint="use e.g. 512M, 4G or 0x1000000") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise DumpsaverError(f"size must be positive: {text!r}")
    return value


def human(n: int) -> str:
    v = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(v) < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    raise AssertionError
