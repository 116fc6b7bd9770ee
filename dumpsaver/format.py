"""The in-memory dump format, shared by the panic side and the saver.

Byte-by-byte description: docs/format.md.  In short, the dump is a *logical
stream* laid over one or more physical extents (the pages the panic side wrote
into).  The stream holds, in this order:

    header block   fixed 256 bytes, the extent table, a CRC32 of both
    meta section   TLV records: panic string, uts, registers, VMCOREINFO, dmesg
    page data      each saved page compressed on its own (or stored raw)
    directory      one 32-byte entry per saved page, ascending PFN, each with
                   its own CRC and the CRC of the page's stored bytes

Every length and offset read back is checked before it is used; nothing here
trusts the dump.  The decoder never allocates more than a bounded amount for
any single field, so a hostile header cannot make it eat memory.
"""

from __future__ import annotations

import enum
import struct
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from dumpsaver.codecs import Codec
from dumpsaver.errors import AlreadySavedError, FormatError, NoDumpError, UnverifiedHeaderError

MAGIC = b"MCOREDMP"
#: What the saver writes over MAGIC once the dump is durable on disk.
SAVED_MAGIC = b"MCORESVD"
VERSION = 1

MAX_EXTENTS = 65536
MAX_META_BYTES = 64 << 20
MAX_STRING = 1 << 20
MAX_LOG = 32 << 20  # the DMESG record is cut here (docs/format.md)
MAX_CPUS = 8192
PAGE_SIZES = (4096, 8192, 16384, 65536)


class PageClass(enum.IntEnum):
    """What a physical page was used for at the moment of the panic."""

    KERNEL_TEXT = 0
    KERNEL_DATA = 1  # kernel data, slab, stacks
    PAGE_TABLE = 2
    FREE = 3
    USER_ANON = 4
    USER_SHARED = 5
    FILE_CACHE = 6
    LOCKED = 7  # mlocked / pinned: never used as dump space

    @property
    def label(self) -> str:
        return self.name.lower()


#: The seed's rule: these are not worth keeping, and are where the dump goes.
DEFAULT_EXCLUDED = frozenset(
    {PageClass.FREE, PageClass.USER_ANON, PageClass.USER_SHARED, PageClass.FILE_CACHE}
)


class HeaderFlag(enum.IntFlag):
    NONE = 0
    TRUNCATED = 0x1  # the panic side ran out of space: some selected pages are missing


class EntryFlag(enum.IntFlag):
    ZERO = 0x1  # all-zero page: recorded, not stored
    RAW = 0x2  # stored uncompressed (compression did not make it smaller)


# Plain ints for the per-page hot path (IntFlag operators cost microseconds each).
_ZERO = int(EntryFlag.ZERO)
_RAW = int(EntryFlag.RAW)


class Meta(enum.IntEnum):
    PANIC = 1
    UTS = 2  # six NUL-padded 65-byte fields, like struct new_utsname
    PRSTATUS = 3  # one raw struct elf_prstatus per CPU, in CPU order
    VMCOREINFO = 4
    DMESG = 5
    MACHINE = 6  # ELF e_machine, u16


UTS_FIELDS = ("sysname", "nodename", "release", "version", "machine", "domainname")
UTS_LEN = 65

# Fixed header, 256 bytes (offsets in docs/format.md).
FIXED = struct.Struct("<8sIIIIIIII QQ16s16s QQQ QQQQQQ I I 8Q")
assert FIXED.size == 232, FIXED.size
FIXED_SIZE = 256
EXTENT = struct.Struct("<QQ")
CRC = struct.Struct("<I")
ENTRY = struct.Struct("<QQIIII")
assert ENTRY.size == 32
META_REC = struct.Struct("<HHI")


#: Reads ``length`` bytes at a logical offset of the dump stream.
ReadFn = Callable[[int, int], bytes]


def _crc(data: bytes | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


@dataclass(frozen=True)
class Extent:
    """A piece of the dump area: logical stream bytes [logical, logical+length) live at paddr."""

    paddr: int
    length: int


@dataclass(frozen=True)
class Header:
    page_size: int
    codec: Codec
    mem_pages: int
    crash_time_ns: int
    dump_id: uuid.UUID
    boot_id: uuid.UUID
    excluded: frozenset[PageClass]
    class_pages: tuple[int, ...]  # pages per PageClass in the whole machine
    extents: tuple[Extent, ...]
    nr_cpus: int = 0
    flags: HeaderFlag = HeaderFlag.NONE
    nr_entries: int = 0
    nr_zero: int = 0
    nr_dropped: int = 0
    meta_offset: int = 0
    meta_bytes: int = 0
    meta_crc: int = 0
    data_offset: int = 0
    data_bytes: int = 0
    dir_offset: int = 0
    version: int = VERSION

    @property
    def header_bytes(self) -> int:
        return FIXED_SIZE + EXTENT.size * len(self.extents) + CRC.size

    @property
    def area_bytes(self) -> int:
        return sum(e.length for e in self.extents)

    @property
    def dir_bytes(self) -> int:
        return self.nr_entries * ENTRY.size

    @property
    def truncated(self) -> bool:
        return bool(self.flags & HeaderFlag.TRUNCATED)

    def encode(self) -> bytes:
        excl = 0
        for c in self.excluded:
            excl |= 1 << c
        fixed = FIXED.pack(
            MAGIC,
            self.version,
            self.header_bytes,
            int(self.flags),
            self.page_size,
            int(self.codec),
            excl,
            self.nr_cpus,
            len(self.extents),
            self.mem_pages,
            self.crash_time_ns,
            self.dump_id.bytes,
            self.boot_id.bytes,
            self.nr_entries,
            self.nr_zero,
            self.nr_dropped,
            self.meta_offset,
            self.meta_bytes,
            self.data_offset,
            self.data_bytes,
            self.dir_offset,
            0,
            self.meta_crc,
            0,
            *self.class_pages,
        )
        body = fixed.ljust(FIXED_SIZE, b"\0") + b"".join(
            EXTENT.pack(e.paddr, e.length) for e in self.extents
        )
        return body + CRC.pack(_crc(body))


def peek_header_size(fixed: bytes) -> int:
    """Check the magic and version of the first FIXED_SIZE bytes; return the header block size."""
    if len(fixed) < FIXED_SIZE:
        raise FormatError(f"dump header truncated: {len(fixed)} of {FIXED_SIZE} bytes")
    magic = fixed[:8]
    if magic == SAVED_MAGIC:
        raise AlreadySavedError("the dump was already saved (header invalidated)")
    if magic == bytes(len(MAGIC)):  # fresh RAM, a cleared area: the normal case
        raise NoDumpError("no dump")
    if magic != MAGIC:
        raise NoDumpError(f"no dump (bad dump magic {magic!r}, expected {MAGIC!r})")
    version, header_size = struct.unpack_from("<II", fixed, 8)
    assert isinstance(header_size, int)
    if version != VERSION:
        raise UnverifiedHeaderError(
            f"unsupported dump format version {version} (this saver reads {VERSION})")
    (n_extents,) = struct.unpack_from("<I", fixed, 36)
    if not 1 <= n_extents <= MAX_EXTENTS:
        raise UnverifiedHeaderError(
            f"dump header claims {n_extents} extents (1..{MAX_EXTENTS} allowed)")
    expect = FIXED_SIZE + EXTENT.size * n_extents + CRC.size
    if header_size != expect:
        raise UnverifiedHeaderError(
            f"dump header size {header_size} does not match {n_extents} extents")
    return header_size


def decode_header(block: bytes, *, force: bool = False) -> Header:
    """Decode and check a whole header block.  ``force`` accepts a bad header CRC only."""
    size = peek_header_size(block[:FIXED_SIZE])
    if len(block) < size:
        raise UnverifiedHeaderError(f"dump header truncated: {len(block)} of {size} bytes")
    (crc,) = CRC.unpack_from(block, size - CRC.size)
    if crc != _crc(block[: size - CRC.size]) and not force:
        raise UnverifiedHeaderError("dump header checksum mismatch",
                                    hint="--force salvages what it can")
    v = FIXED.unpack_from(block, 0)
    (
        _magic, version, _hsize, flags, page_size, codec, excl, nr_cpus, n_ext, mem_pages,
        crash_ns, dump_id, boot_id, nr_entries, nr_zero, nr_dropped, meta_off, meta_bytes,
        data_off, data_bytes, dir_off, _r0, meta_crc, _r1,
    ) = v[:24]
    class_pages = tuple(v[24:32])
    if page_size not in PAGE_SIZES:
        raise FormatError(f"bad page size {page_size}")
    try:
        codec_v = Codec(codec)
    except ValueError:
        raise FormatError(f"unknown page codec {codec}") from None
    if excl >> len(PageClass):
        raise FormatError(f"unknown page classes in exclusion mask {excl:#x}")
    if nr_cpus > MAX_CPUS:
        raise FormatError(f"dump header claims {nr_cpus} CPUs")
    extents = tuple(
        Extent(*EXTENT.unpack_from(block, FIXED_SIZE + i * EXTENT.size)) for i in range(n_ext)
    )
    for e in extents:
        if e.length <= 0 or e.length % page_size or e.paddr % page_size:
            raise FormatError(f"dump extent {e.paddr:#x}+{e.length:#x} is not page aligned")
    h = Header(
        page_size=page_size,
        codec=codec_v,
        mem_pages=mem_pages,
        crash_time_ns=crash_ns,
        dump_id=uuid.UUID(bytes=dump_id),
        boot_id=uuid.UUID(bytes=boot_id),
        excluded=frozenset(c for c in PageClass if excl & (1 << c)),
        class_pages=class_pages,
        extents=extents,
        nr_cpus=nr_cpus,
        flags=HeaderFlag(flags & int(HeaderFlag.TRUNCATED)),
        nr_entries=nr_entries,
        nr_zero=nr_zero,
        nr_dropped=nr_dropped,
        meta_offset=meta_off,
        meta_bytes=meta_bytes,
        meta_crc=meta_crc,
        data_offset=data_off,
        data_bytes=data_bytes,
        dir_offset=dir_off,
        version=version,
    )
    _check_layout(h)
    return h


#: Physical addresses are below 2^63: /dev/mem offsets are a signed 64-bit off_t.
MAX_PHYS = 1 << 63


def _check_layout(h: Header) -> None:
    # Extents must not overlap: each byte of the reserved area is in the logical stream
    # at most once, so the stream (and every count derived from it: directory entries,
    # pages, work) is bounded by the size of the reserved area, whatever the header says.
    prev_end = 0
    for e in sorted(h.extents, key=lambda x: x.paddr):
        if e.paddr + e.length > MAX_PHYS:
            raise FormatError(f"dump extent {e.paddr:#x}+{e.length:#x} beyond physical memory")
        if e.paddr < prev_end:
            raise FormatError(f"dump extents overlap at {e.paddr:#x}")
        prev_end = e.paddr + e.length
    area = h.area_bytes
    if h.mem_pages <= 0 or h.mem_pages > (1 << 52) // h.page_size:
        raise FormatError(f"implausible memory size: {h.mem_pages} pages")
    sections = [
        ("header", 0, h.header_bytes),
        ("meta", h.meta_offset, h.meta_bytes),
        ("data", h.data_offset, h.data_bytes),
        ("directory", h.dir_offset, h.nr_entries * ENTRY.size),
    ]
    for name, off, n in sections:
        if off < 0 or n < 0 or off + n > area:
            raise FormatError(
                f"dump {name} [{off:#x}, {off + n:#x}) lies outside the dump area ({area:#x} bytes)"
            )
    if h.meta_bytes > MAX_META_BYTES:
        raise FormatError(f"dump meta section too large: {h.meta_bytes} bytes")
    if h.nr_entries > h.mem_pages:
        raise FormatError(f"directory has {h.nr_entries} entries for {h.mem_pages} pages")
    if h.header_bytes > h.extents[0].length:
        raise FormatError("dump header does not fit its first extent")


@dataclass
class MetaInfo:
    panic: str = ""
    uts: dict[str, str] = field(default_factory=dict)
    prstatus: list[bytes] = field(default_factory=list)
    vmcoreinfo: str = ""
    dmesg: str = ""
    machine: int = 62  # EM_X86_64

    def encode(self) -> bytes:
        out = bytearray()

        def rec(kind: Meta, data: bytes) -> None:
            out.extend(META_REC.pack(kind, 0, len(data)))
            out.extend(data)
            out.extend(b"\0" * (-len(out) % 8))

        rec(Meta.MACHINE, struct.pack("<H", self.machine))
        rec(Meta.PANIC, self.panic.encode("utf-8", "replace")[:MAX_STRING])
        uts = b"".join(
            self.uts.get(k, "").encode("utf-8", "replace")[: UTS_LEN - 1].ljust(UTS_LEN, b"\0")
            for k in UTS_FIELDS
        )
        rec(Meta.UTS, uts)
        for regs in self.prstatus:
            rec(Meta.PRSTATUS, regs)
        rec(Meta.VMCOREINFO, self.vmcoreinfo.encode("utf-8", "replace")[:MAX_STRING])
        rec(Meta.DMESG, self.dmesg.encode("utf-8", "replace")[:MAX_LOG])
        return bytes(out)


def decode_meta(data: bytes) -> MetaInfo:
    """Parse the meta section; unknown record types are skipped, lengths are bounds-checked."""
    m = MetaInfo()
    off = 0
    while off + META_REC.size <= len(data):
        kind, _r, n = META_REC.unpack_from(data, off)
        off += META_REC.size
        if n > len(data) - off:
            raise FormatError(f"meta record {kind} of {n} bytes overruns the meta section")
        body = data[off : off + n]
        off += n + (-(off + n) % 8)
        text = body[:MAX_STRING].decode("utf-8", "replace") if kind != Meta.DMESG else ""
        if kind == Meta.PANIC:
            m.panic = text
        elif kind == Meta.UTS and n == UTS_LEN * len(UTS_FIELDS):
            for i, k in enumerate(UTS_FIELDS):
                raw = body[i * UTS_LEN : (i + 1) * UTS_LEN].split(b"\0", 1)[0]
                m.uts[k] = raw.decode("utf-8", "replace")
        elif kind == Meta.PRSTATUS:
            if len(m.prstatus) < MAX_CPUS:
                m.prstatus.append(bytes(body[:4096]))
        elif kind == Meta.VMCOREINFO:
            m.vmcoreinfo = text
        elif kind == Meta.DMESG:
            m.dmesg = body[:MAX_LOG].decode("utf-8", "replace")
        elif kind == Meta.MACHINE and n == 2:
            (m.machine,) = struct.unpack("<H", body)
    return m


@dataclass(frozen=True, slots=True)
class Entry:
    pfn: int
    offset: int  # logical offset of the stored bytes
    length: int
    crc: int  # CRC32 of the stored bytes
    flags: int

    @property
    def zero(self) -> bool:
        return bool(self.flags & _ZERO)

    @property
    def raw(self) -> bool:
        return bool(self.flags & _RAW)

    def encode(self) -> bytes:
        head = ENTRY.pack(self.pfn, self.offset, self.length, self.crc, self.flags, 0)[:28]
        return head + CRC.pack(_crc(head))


class EntryProblem(enum.Enum):
    ENTRY_CRC = "directory entry checksum mismatch"
    ORDER = "directory entry out of order or repeated"
    PFN = "page frame number beyond the end of memory"
    BOUNDS = "page data lies outside the data section"
    LENGTH = "bad stored length"
    FLAGS = "unknown entry flags"


def check_entry(
    raw: bytes | memoryview, off: int, h: Header, prev_pfn: int
) -> tuple[Entry | None, EntryProblem | None]:
    """Decode one directory entry at ``off`` of ``raw`` and check it against the header."""
    t = ENTRY.unpack_from(raw, off)
    if t[5] != _crc(raw[off : off + 28]):
        return None, EntryProblem.ENTRY_CRC
    e = Entry(*t[:5])
    if t[0] <= prev_pfn:
        return e, EntryProblem.ORDER
    return e, entry_problem(t, h)


#: A directory entry as ``ENTRY.unpack`` gives it: (pfn, offset, length, crc, flags, ecrc).
RawEntry = tuple[int, int, int, int, int, int]


def entry_problem(t: RawEntry, h: Header) -> EntryProblem | None:
    """What is wrong with a CRC-valid entry, judged against the header alone (not order)."""
    pfn, doff, length, _, flags, _ = t
    if pfn >= h.mem_pages:
        return EntryProblem.PFN
    if flags & ~(_ZERO | _RAW):
        return EntryProblem.FLAGS
    if flags & _ZERO:
        if length != 0:
            return EntryProblem.LENGTH
        return None
    if length == 0 or length > h.page_size or (flags & _RAW and length != h.page_size):
        return EntryProblem.LENGTH
    if doff < h.data_offset or doff + length > h.data_offset + h.data_bytes:
        return EntryProblem.BOUNDS
    return None


def check_entries(
    chunk: bytes, h: Header
) -> tuple[list[RawEntry], list[EntryProblem | None] | None]:
    """Decode and check a run of whole directory entries at once.

    Returns the decoded entries and None when every entry passes its own CRC and every
    check of ``entry_problem`` (the common case, judged in bulk), else the problem of
    each entry (ENTRY_CRC for a failed CRC: its fields mean nothing).  Order is the
    caller's to judge (decode.Dump), as for ``check_entry``.
    """
    ents: list[RawEntry] = list(ENTRY.iter_unpack(chunk))
    view = memoryview(chunk)
    crc32 = zlib.crc32
    crcs = [crc32(view[o : o + 28]) for o in range(0, len(ents) * ENTRY.size, ENTRY.size)]
    end, ps = h.mem_pages, h.page_size
    lo, hi = h.data_offset, h.data_offset + h.data_bytes
    raw_len = ps
    # All the checks of entry_problem, as one expression per entry (no call per entry).
    if all(
        t[5] == c
        and t[0] < end
        and (
            (t[4] in (_ZERO, _ZERO | _RAW) and t[2] == 0)
            if t[4] & _ZERO
            else (
                (0 < t[2] <= ps if t[4] == 0 else t[4] == _RAW and t[2] == raw_len)
                and lo <= t[1]
                and t[1] + t[2] <= hi
            )
        )
        for t, c in zip(ents, crcs, strict=True)
    ):
        return ents, None
    problems = [
        entry_problem(t, h) if t[5] == c else EntryProblem.ENTRY_CRC
        for t, c in zip(ents, crcs, strict=True)
    ]
    return ents, problems


def page_crc(stored: bytes | memoryview) -> int:
    return _crc(stored)


def iter_entries_raw(
    h: Header, read: ReadFn, chunk_entries: int = 8192, start: int = 0, stop: int | None = None
) -> Iterator[bytes]:
    """Yield the directory's entries [start, stop) in chunks of at most ``chunk_entries``
    entries (bounded memory)."""
    done = start
    end = h.nr_entries if stop is None else min(stop, h.nr_entries)
    while done < end:
        n = min(chunk_entries, end - done)
        yield read(h.dir_offset + done * ENTRY.size, n * ENTRY.size)
        done += n
