"""One error type that the CLI turns into a one-line message and an exit code."""

from __future__ import annotations

# Documented exit codes (see docs/man/dumpsaver.8).
EXIT_OK = 0
EXIT_FAILURE = 1  # generic failure
EXIT_USAGE = 2  # bad command line or configuration
EXIT_NO_DUMP = 3  # status/check: no dump waiting (like kdumpctl status' 3)
EXIT_INCOMPLETE = 4  # a dump was saved but is incomplete
EXIT_NO_SPACE = 5  # not enough free space: the dump was kept in memory
EXIT_CORRUPT = 6  # the dump header cannot be trusted: nothing saved
EXIT_BUSY = 7  # another saver holds the lock
EXIT_GAVE_UP = 8  # too many failed attempts: no longer trying


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


class OutsideAreaError(FormatError):
    """A read would leave the reserved dump area: treated as corruption, never performed."""


class ConfigError(DumpsaverError):
    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message, hint, exit_code=EXIT_USAGE)
