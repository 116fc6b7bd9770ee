"""The flattened form of a kdump-compressed file (``makedumpfile -F``), for pipes.

A kdump-compressed file is written at several offsets at once (page_desc and
page data, the header last), which a pipe cannot do.  The flattened form turns
each write into a record that says where its bytes belong:

    makedumpfile_header     "makedumpfile" (16 bytes, NUL padded), type 1, version 1,
                            big endian i64s, zero padded to 4096 bytes
    records                 {i64 offset, i64 size} big endian, then ``size`` bytes
    end                     {-1, -1}

``makedumpfile -R FILE < stream`` rebuilds the file (seeking to each record's
offset); crash also reads the flattened form directly.  The content is exactly
what KdumpWriter writes to a file, so the rebuilt file is byte for byte that file.

    dumpsaver save --stdout | ssh host 'makedumpfile -R /var/crash/vmcore'
"""

from __future__ import annotations

import errno
import os
import struct

from dumpsaver.decode import Dump, Scan
from dumpsaver.errors import DumpsaverError
from dumpsaver.writers import Progress, Written
from dumpsaver.writers.kdump import BITMAP_CHUNK, DATA_FLUSH, DESC_BATCH, Layout
from dumpsaver.writers.kdump import write_kdump as _write_kdump

SIGNATURE = b"makedumpfile"
TYPE_FLAT_HEADER = 1
VERSION_FLAT_HEADER = 1
HEADER_SIZE = 4096
FLAT_HEADER = struct.Struct(">16sqq")
RECORD = struct.Struct(">qq")
END = RECORD.pack(-1, -1)


def flat_header() -> bytes:
    return FLAT_HEADER.pack(SIGNATURE, TYPE_FLAT_HEADER, VERSION_FLAT_HEADER).ljust(
        HEADER_SIZE, b"\0"
    )


class FlatSink:
    """A Sink writing records to a stream (pipe, socket, terminal-less stdout) in order."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0  # bytes written to the stream
        self._write(flat_header())

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except BrokenPipeError:
                raise DumpsaverError(
                    "the reader of the flattened dump went away (broken pipe)",
                    hint="the dump stays in memory; check the receiving side",
                ) from None
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            view = view[n:]
            self.size += n

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if not len(data):
            return
        self._write(RECORD.pack(offset, len(data)))
        self._write(data)

    def close(self) -> None:
        self._write(END)


def estimate(dump: Dump, scan: Scan) -> int:
    """An upper bound of the stream's length: the file plus one record header per write."""
    lay = Layout(dump, scan)
    data = lay.max_size - lay.data_off
    records = (
        2  # header block, sub header and notes
        + 2 * (lay.bitmap_bytes // BITMAP_CHUNK + 2)
        + lay.nr_desc // DESC_BATCH + 1
        + data // DATA_FLUSH + 1
    )
    return HEADER_SIZE + lay.max_size + RECORD.size * (records + 1)


def write_flat(fd: int, dump: Dump, scan: Scan, progress: Progress | None) -> Written:
    """Write the flattened kdump-compressed dump to ``fd`` (need not be seekable).

    Returns Written with ``size`` = bytes of the stream (not of the rebuilt file)."""
    sink = FlatSink(fd)
    written, _status = _write_kdump(sink, dump, scan, progress)
    sink.close()
    return Written(sink.size, written.pages)


def stream(dump: Dump, fd: int, progress: Progress | None = None) -> tuple[Written, Scan]:
    """Scan ``dump`` and stream it to ``fd`` in the flattened form: ``dumpsaver save --stdout``.

    Nothing here releases the dump: with a stream nothing durable is known on
    this side, so the caller keeps the dump unless told otherwise (--release):
    dumpsaver.save.stream_save.
    """
    if os.isatty(fd):
        raise DumpsaverError(
            "refusing to write a binary dump to a terminal",
            hint="pipe it: dumpsaver save --stdout | makedumpfile -R vmcore",
        )
    scan = dump.scan()
    return write_flat(fd, dump, scan, progress), scan
