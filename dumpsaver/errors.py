"""The exit codes (one table), and the error types the CLI turns into a one-line
message and an exit code.  Decisions branch on these types, never on message text."""

from __future__ import annotations

import enum


class Exit(enum.IntEnum):
    """Documented exit codes: ``dumpsaver --help`` and dumpsaver(8) are made from / checked
    against this table (tests/test_cli.py)."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    NO_DUMP = 3
    INCOMPLETE = 4
    NO_SPACE = 5
    CORRUPT = 6
    BUSY = 7
    GAVE_UP = 8
    NO_PERMISSION = 9
    # status's verdicts for monitoring (besides 0 ready, 8 gave up, 9 permission denied)
    NOT_READY = 10
    DUMP_WAITING = 11
    NOT_ARMED = 12

    @property
    def meaning(self) -> str:
        return _MEANING[self]


_MEANING = {
    Exit.OK: "ok",
    Exit.FAILURE: "failure",
    Exit.USAGE: "usage or config",
    Exit.NO_DUMP: "no dump (--check)",
    Exit.INCOMPLETE: "saved incomplete",
    Exit.NO_SPACE: "not enough space (dump kept)",
    Exit.CORRUPT: "corrupt header (nothing saved)",
    Exit.BUSY: "another saver is running",
    Exit.GAVE_UP: "gave up after max_attempts",
    Exit.NO_PERMISSION: "permission denied",
    Exit.NOT_READY: "status: no dump area, a crash would not be caught",
    Exit.DUMP_WAITING: "status: a dump is waiting to be saved",
    Exit.NOT_ARMED: "status: the kernel side is not armed",
}

# The names the code has always used.
EXIT_OK = Exit.OK
EXIT_FAILURE = Exit.FAILURE
EXIT_USAGE = Exit.USAGE
EXIT_NO_DUMP = Exit.NO_DUMP
EXIT_INCOMPLETE = Exit.INCOMPLETE
EXIT_NO_SPACE = Exit.NO_SPACE
EXIT_CORRUPT = Exit.CORRUPT
EXIT_BUSY = Exit.BUSY
EXIT_GAVE_UP = Exit.GAVE_UP


def exit_codes_text() -> str:
    """``exit codes: 0 ok, 1 failure, ...``: the --help epilog."""
    return "exit codes: " + ", ".join(f"{int(c)} {c.meaning}" for c in Exit)


class DumpsaverError(Exception):
    """An expected failure: printed as ``error: message`` plus an optional hint."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = EXIT_FAILURE):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code


class FormatError(DumpsaverError):
    """The dump in memory is malformed: header, directory or a page."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message, hint, exit_code=EXIT_CORRUPT)


class UnverifiedHeaderError(FormatError):
    """The area begins with the dump magic, but no header its own CRC vouches for follows
    (wrong version, inconsistent sizes, checksum mismatch).  Corruption of a dump, or
    other data that happens to begin with the magic: memmap=! memory, which holds user
    pages between crashes, takes it for the latter (docs/sysfs-abi.md)."""


class NoDumpError(FormatError):
    """The area holds no dump at all (not the dump magic): not corruption, nothing to do."""


class AlreadySavedError(NoDumpError):
    """The header was invalidated by a completed save; only the release may be unfinished."""


class OutsideAreaError(FormatError):
    """A read would leave the reserved dump area: treated as corruption, never performed."""


class BusyError(DumpsaverError):
    """Another saver holds the lock: not a failed attempt (the other one is trying)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message, hint, exit_code=EXIT_BUSY)


class DestinationError(DumpsaverError):
    """The dump directory cannot be used (not a directory, not ours, cannot be created):
    an operator's or the configuration's mistake, found before the dump is read, so not
    a failed attempt at the dump."""


class NoPermissionError(DumpsaverError):
    """The caller may not read what the answer depends on: refused, never answered "none"."""

    def __init__(self, what: str, e: OSError):
        super().__init__(f"permission denied: cannot read {what}: {e.strerror}",
                         hint="run as root", exit_code=Exit.NO_PERMISSION)


class ConfigError(DumpsaverError):
    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message, hint, exit_code=EXIT_USAGE)
