"""The boot job's first look: can a dump be waiting at all?

``dumpsaver save`` runs at every boot and almost every boot has no dump.  That case is
decided here, from a few small files, with nothing imported but ``os``: no argparse,
no YAML, no dataclasses, enum or re (each costs milliseconds natively and far more at
boot, when every module is a cold read).  Any doubt answers "maybe": the full path
(dumpsaver.commands) then looks properly and reports what it finds.  So this module may
only ever be wrong towards "maybe", never towards "no dump".

How each way to a dump is decided (the order of dumpsaver.locate):

- the kernel's sysfs shim (docs/sysfs-abi.md): it exists only while a dump waits, so
  its header attribute existing is a "maybe";
- ``memmap=SIZE$ADDR`` reservations: the first bytes of each range are read through the
  memory device (after /proc/iomem says the range is Reserved, as the full path checks);
  a dump's magic there is a "maybe";
- legacy persistent memory (``memmap=SIZE!ADDR``): its range is readable only through
  the pmem or dax device, whose modules arrive late in the boot: always a "maybe";
- configured regions: only the settings that change where dumps are looked for
  (LOCATING_KEYS) matter.  Every other setting is irrelevant to "is a dump waiting", so
  a configuration that sets only those (SAFE_KEYS) is not parsed at all.  A line this
  module cannot classify for sure is a "maybe".

The parsers of the kernel command line and /proc/iomem live here, once: dumpsaver.locate
wraps them.
"""

import os

#: dumpsaver.format.MAGIC (a test keeps them equal): the start of a waiting dump.
DUMP_MAGIC = b"MCOREDMP"
#: A configuration file above this is refused (here: "maybe"; the full path says why).
MAX_CONFIG = 1 << 20
#: Physical addresses are below 2^63 (dumpsaver.physmem.MAX_PHYS).
MAX_PHYS = 1 << 63

#: Settings that change where a dump is looked for or how it is read.  A configuration
#: setting any of them (or any key not in SAFE_KEYS) sends the boot down the full path.
LOCATING_KEYS = ("sysfs", "regions", "mem_device")
#: Settings that cannot make a dump appear (a test checks that every setting of
#: dumpsaver.config.SETTINGS is in one of these two tuples: a new setting must be put in
#: one).  use_memmap can only remove a place to look, and pmem_wait matters only with
#: memmap=SIZE!ADDR, which takes the full path anyway.
SAFE_KEYS = (
    "dump_dir", "format", "minfree", "keep_dumps", "max_use", "restart", "max_attempts",
    "use_memmap", "pmem_wait", "state_dir", "upload_host", "s3_bucket", "s3_endpoint", "s3_prefix",
    "s3_region", "s3_verify_tls", "s3_checksum", "s3_credentials_file", "s3_part_size",
    "s3_concurrency", "ssh_destination", "ssh_port", "ssh_identity", "ssh_options",
    "ssh_mode", "upload_delete", "upload_full_limit", "upload_timeout", "upload_retries",
)  # fmt: skip

_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
_SIZE_CHARS = frozenset("0123456789abcdefx")
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


# -- the kernel command line ------------------------------------------------------------


def _memmap_number(text: str, *, allow_zero: bool) -> int | None:
    """A ``memmap=`` size or address as dumpsaver reads it: hex (0x...) or decimal with an
    optional K/M/G; None when it is not one."""
    low = text.lower()
    body = low[:-1] if low[-1:] in ("k", "m", "g") else low
    if not body or not set(body) <= _SIZE_CHARS:
        return None
    t = text.upper()
    if not t.startswith("0X"):  # hex has no unit suffix (B is a digit there)
        t = t.removesuffix("IB").removesuffix("B")
    mult = 1 if t.startswith("0X") else _UNITS.get(t[-1:], 1)
    try:
        value = int(t[:-1] if mult != 1 else t, 0) * mult
    except ValueError:
        return None
    return value if value > 0 or (allow_zero and value == 0) else None


def memmap_items(cmdline: str) -> list[tuple[str, int, int]]:
    """Every ``memmap=SIZE<kind>ADDR`` item of a kernel command line as (kind, start, end):
    kind ``$`` reserves the range, ``!`` makes it legacy persistent memory, ``#`` ACPI
    data, ``@`` usable RAM.  Other forms (exactmap, junk) are skipped, as the kernel
    ignores them; so is a range beyond 2^63."""
    out = []
    for word in cmdline.split():
        if not word.startswith("memmap="):
            continue
        for item in word[len("memmap="):].split(","):
            for kind in "$!#@":
                size_text, sep, addr_text = item.partition(kind)
                if sep:
                    break
            else:
                continue
            size = _memmap_number(size_text, allow_zero=False)
            addr = _memmap_number(addr_text, allow_zero=True)
            if size is not None and addr is not None and addr + size <= MAX_PHYS:
                out.append((kind, addr, addr + size))
    return out


# -- /proc/iomem ------------------------------------------------------------------------


def iomem_items(text: str) -> list[tuple[int, int, str]]:
    """Top-level and nested /proc/iomem entries as (start, end, name), end exclusive."""
    out = []
    for line in text.splitlines():
        span, sep, name = line.strip().partition(" : ")
        a, dash, b = span.partition("-")
        if not sep or not dash:
            continue
        try:
            start, last = int(a, 16), int(b, 16)
        except ValueError:
            continue
        if start <= last < MAX_PHYS:
            out.append((start, last + 1, name.strip()))
    return out


def iomem_hidden(items: list[tuple[int, int, str]]) -> bool:
    """/proc/iomem read without privilege: every address shows as zero."""
    return bool(items) and all(s == 0 and e == 1 for s, e, _ in items)


def reserved(items: list[tuple[int, int, str]], start: int, end: int) -> bool:
    """[start, end) lies inside one entry named Reserved."""
    return any(n == "Reserved" and s <= start and end <= e for s, e, n in items)


# -- the configuration ------------------------------------------------------------------


def config_may_locate(data: bytes) -> bool:
    """False only when the configuration surely sets nothing but SAFE_KEYS.

    Every line that is not blank or a comment must be either a top-level ``key:`` at the
    first column with ``key`` in SAFE_KEYS, or (after such a line) an indented or ``-``
    line, which belongs to that key's value.  Anything else (a LOCATING_KEYS or unknown
    key, quoted or flow-style keys, an indented first line, ``---``, directives, a
    backslash escape, non-ASCII) answers True: the full path parses it."""
    if len(data) > MAX_CONFIG or b"\\" in data:
        return True
    in_safe_key = False
    for raw in data.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith(b"#"):
            continue
        if raw[:1] in (b" ", b"\t", b"-"):
            if not in_safe_key:
                return True
            continue
        key, colon, _ = raw.partition(b":")
        try:
            name = key.decode("ascii")
        except UnicodeDecodeError:
            return True
        if not colon or not name or not set(name) <= _KEY_CHARS or name not in SAFE_KEYS:
            return True
        in_safe_key = True
    return False


def config_bytes(path: str | None, default: str, env_name: str) -> bytes | None:
    """The configuration as dumpsaver.config.load reads it: ``path``, else ``$env_name``,
    else ``default``.  b"" for a default file that does not exist (the built-in
    defaults); None when it cannot be read (the full path says why)."""
    env = os.environ.get(env_name)
    explicit = path is None and env is not None
    p = path or env or default
    try:
        with open(p, "rb") as f:
            return f.read(MAX_CONFIG + 1)
    except FileNotFoundError:
        return None if explicit else b""
    except OSError:
        return None


# -- the decision -----------------------------------------------------------------------


def _read(path: str, limit: int = 1 << 20) -> str | None:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError:
        return None
    return None if len(data) > limit else data.decode("ascii", "replace")


def why_maybe(
    *,
    config: bytes | None,
    sysfs_header: str,
    cmdline: str,
    iomem: str,
    mem: str,
) -> str | None:
    """None when no dump can be waiting; otherwise why the full path must look."""
    if config is None:
        return "the configuration cannot be read here"
    if config_may_locate(config):
        return "the configuration may name where to look"
    if os.path.exists(sysfs_header):
        return f"{sysfs_header} exists"
    text = _read(cmdline)
    if text is None:
        return f"{cmdline} cannot be read"
    items = memmap_items(text)
    if any(kind == "!" for kind, _, _ in items):
        # read only through /dev/pmemN or /dev/daxN.M, which appear late: the full path
        # loads the modules and waits for the device
        return "memmap=SIZE!ADDR (legacy persistent memory) is read through its device"
    ranges = [(start, end) for kind, start, end in items if kind == "$"]
    if not ranges:
        return None
    iomem_text = _read(iomem)
    if iomem_text is None:
        return f"{iomem} cannot be read"
    io = iomem_items(iomem_text)
    if iomem_hidden(io) or not all(reserved(io, s, e) for s, e in ranges):
        return "a memmap= range is not shown Reserved"
    try:
        fd = os.open(mem, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return f"{mem} cannot be opened"
    try:
        for start, end in ranges:
            if end - start < len(DUMP_MAGIC):
                return "a memmap= range is too small for a header"
            # the only read: the magic at the start of a range checked Reserved above
            head = os.pread(fd, len(DUMP_MAGIC), start)
            if head == DUMP_MAGIC or len(head) != len(DUMP_MAGIC):
                return f"a dump's magic (or a short read) at {start:#x}"
    except OSError:
        return f"{mem} cannot be read"
    finally:
        os.close(fd)
    return None
