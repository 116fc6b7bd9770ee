"""Logging, structured journal events and sd_notify status for dumpsaver.

Everything here degrades gracefully: without python-systemd (module ``systemd``) or
outside a systemd service, messages go to stderr and ``notify_status`` is a no-op unless
``NOTIFY_SOCKET`` is set (then it speaks the sd_notify datagram protocol itself).

Events are logged through stdlib :mod:`logging` (logger ``dumpsaver``), so there is one
path for every message; the journal handler turns the record's ``journal_fields`` into
journal fields (``MESSAGE_ID``, ``DUMPSAVER_EVENT``, ``DUMP_ID``, ...).  Every system
dependency is a parameter: the journal sender and the notifier can be injected.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import TYPE_CHECKING

# No typing/dataclasses machinery at run time: this module is on the boot path of every
# boot, dump or not, and under emulation each import and class build shows.
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, Final, TypeAlias

    # A journal sender has the signature of systemd.journal.send(MESSAGE, **fields).
    Sender: TypeAlias = Callable[..., Any]
    # A notifier takes one sd_notify state string ("STATUS=...") and says if it was sent.
    Notifier: TypeAlias = Callable[[str], bool]

LOGGER_NAME: Final = "dumpsaver"
SYSLOG_IDENTIFIER: Final = "dumpsaver"


class Event:
    """One kind of journal event: its fixed MESSAGE_ID and syslog priority."""

    __slots__ = ("message_id", "name", "priority")

    def __init__(self, name: str, message_id: str, priority: int) -> None:
        self.name = name
        self.message_id = message_id
        self.priority = priority  # syslog: 3 err, 4 warning, 5 notice, 6 info

    def __repr__(self) -> str:
        return f"Event({self.name!r}, {self.message_id!r}, {self.priority})"

    @property
    def level(self) -> int:
        return _PRIORITY_TO_LEVEL[self.priority]


# Fixed 128-bit ids; the catalog (units/dumpsaver.catalog) documents each one.
EVENTS: Final[Mapping[str, Event]] = {
    e.name: e
    for e in (
        Event("dump-found", "3617e9eabf8d4b3cbad816518469194c", 5),
        Event("saved", "f62a2b40aec14f8dbfa9c1d267a125ae", 5),
        Event("incomplete", "28427db9822e480cb531e9c9a3bce285", 4),
        Event("failed", "c83423f13f77488da8dda7356256eaa3", 3),
        Event("released", "834f198336b440c9aaa2ea162cf1355b", 6),
        Event("given-back", "c7196109ac984bf0b8342e449e7ee616", 6),
        Event("give-back-failed", "99ea6f113b584592974ae55149e1c0d1", 4),
        Event("restart-requested", "52c957937a5749abb569209db54f10b7", 5),
    )
}

_PRIORITY_TO_LEVEL: Final = {
    0: logging.CRITICAL,
    1: logging.CRITICAL,
    2: logging.CRITICAL,
    3: logging.ERROR,
    4: logging.WARNING,
    5: logging.INFO,
    6: logging.INFO,
    7: logging.DEBUG,
}
_LEVEL_NAMES: Final = {
    "emerg": 0,
    "alert": 1,
    "crit": 2,
    "err": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}
_FIELD_RE: Final = re.compile(r"^[A-Z0-9][A-Z0-9_]*$")


def _level_to_priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def journal_field_name(key: str) -> str:
    """``dump_id`` -> ``DUMP_ID``; reject names the journal would drop."""
    name = key.upper().replace("-", "_")
    if not _FIELD_RE.match(name) or len(name) > 64:
        raise ValueError(f"invalid journal field name: {key!r}")
    return name


class JournalHandler(logging.Handler):
    """Send log records to the journal with structured fields.

    ``sender`` defaults to :func:`systemd.journal.send`; tests pass a list's ``append``
    wrapper.  Fields come from the record's ``journal_fields`` attribute (set through
    ``extra=``), plus PRIORITY, SYSLOG_IDENTIFIER and CODE_* for every record.
    """

    def __init__(self, sender: Sender | None = None, identifier: str = SYSLOG_IDENTIFIER):
        super().__init__()
        self._sender = sender
        self.identifier = identifier

    @property
    def sender(self) -> Sender:
        # Imported on the first record, not at setup: a boot with nothing to say (no
        # dump) never pays for systemd.journal.
        if self._sender is None:
            from systemd import journal  # optional dependency

            self._sender = journal.send
        return self._sender

    @staticmethod
    def available() -> bool:
        import importlib.util

        try:
            return importlib.util.find_spec("systemd.journal") is not None
        except ImportError:
            return False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {
                "PRIORITY": str(_level_to_priority(record.levelno)),
                "SYSLOG_IDENTIFIER": self.identifier,
                "CODE_FILE": record.pathname,
                "CODE_LINE": record.lineno,
                "CODE_FUNC": record.funcName,
            }
            if record.exc_info and record.exc_info[0] is not None:
                import traceback

                fields["EXCEPTION_TEXT"] = "".join(traceback.format_exception(*record.exc_info))
            extra = getattr(record, "journal_fields", None)
            if extra:
                fields.update(extra)
            self.sender(record.getMessage(), **fields)
        except Exception:
            self.handleError(record)


class _PrefixFormatter(logging.Formatter):
    """stderr lines; with ``<N>`` syslog prefixes when stderr is a journal stream."""

    def __init__(self, syslog_prefix: bool):
        super().__init__()
        self.syslog_prefix = syslog_prefix

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info and record.levelno <= logging.DEBUG:
            msg += "\n" + self.formatException(record.exc_info)
        if self.syslog_prefix:
            pri = getattr(record, "journal_fields", {}).get("PRIORITY")
            pri = int(pri) if pri is not None else _level_to_priority(record.levelno)
            return "\n".join(f"<{pri}>{line}" for line in msg.splitlines() or [""])
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {msg}"
        return msg


def level_from_env(environ: Mapping[str, str] | None = None) -> int | None:
    """The stdlib level for ``SYSTEMD_LOG_LEVEL`` (a name or 0-7), None when unset/invalid."""
    env = os.environ if environ is None else environ
    raw = env.get("SYSTEMD_LOG_LEVEL", "").strip().lower()
    if not raw:
        return None
    if raw.isdigit() and 0 <= int(raw) <= 7:
        return _PRIORITY_TO_LEVEL[int(raw)]
    if raw in _LEVEL_NAMES:
        return _PRIORITY_TO_LEVEL[_LEVEL_NAMES[raw]]
    return None


def stderr_is_journal(environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """True when ``fd`` is the journal stream systemd connected (JOURNAL_STREAM=dev:ino)."""
    env = os.environ if environ is None else environ
    stream = env.get("JOURNAL_STREAM", "")
    if not stream:
        return False
    try:
        dev, ino = (int(x) for x in stream.split(":", 1))
        st = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return st.st_dev == dev and st.st_ino == ino


def running_under_systemd(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return stderr_is_journal(env) or bool(env.get("INVOCATION_ID") and not sys.stderr.isatty())


def setup_logging(
    verbose: bool = False,
    *,
    sender: Sender | None = None,
    environ: Mapping[str, str] | None = None,
    stream: Any = None,
) -> logging.Logger:
    """Configure the ``dumpsaver`` logger; idempotent (replaces its handlers).

    Level: DEBUG with ``verbose``, else ``SYSTEMD_LOG_LEVEL``, else INFO.  Handler: the
    journal (python-systemd, or ``sender``) when running under systemd, else stderr.
    """
    env = os.environ if environ is None else environ
    logger = logging.getLogger(LOGGER_NAME)
    for h in list(logger.handlers):
        logger.removeHandler(h)
    logger.propagate = False
    level = logging.DEBUG if verbose else (level_from_env(env) or logging.INFO)
    logger.setLevel(level)

    handler: logging.Handler | None = None
    if sender is not None:
        handler = JournalHandler(sender)
    elif running_under_systemd(env) and JournalHandler.available():
        handler = JournalHandler()
    if handler is None:
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
        handler.setFormatter(
            _PrefixFormatter(syslog_prefix=stream is None and stderr_is_journal(env))
        )
    logger.addHandler(handler)
    return logger


def log_event(event: str, message: str, **fields: str | int) -> None:
    """Log one structured event (see :data:`EVENTS`) with extra journal fields.

    ``log_event("saved", "Saved dump 1234 to /var/dumps/1234", dump_id="1234",
    size=4096)`` gives MESSAGE_ID, DUMPSAVER_EVENT=saved, DUMP_ID=1234, SIZE=4096.
    """
    ev = EVENTS.get(event)
    if ev is None:
        raise ValueError(f"unknown event {event!r}; known: {', '.join(EVENTS)}")
    journal_fields: dict[str, str] = {
        "MESSAGE_ID": ev.message_id,
        "DUMPSAVER_EVENT": ev.name,
        "PRIORITY": str(ev.priority),
    }
    for key, value in fields.items():
        journal_fields[journal_field_name(key)] = str(value)
    logger = logging.getLogger(LOGGER_NAME)
    logger.log(ev.level, message, extra={"journal_fields": journal_fields}, stacklevel=2)


# --- sd_notify ------------------------------------------------------------------------


def _raw_notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """The sd_notify protocol without libsystemd: one datagram to $NOTIFY_SOCKET."""
    env = os.environ if environ is None else environ
    addr = env.get("NOTIFY_SOCKET")
    if not addr or addr[0] not in "/@":
        return False
    target = "\0" + addr[1:] if addr[0] == "@" else addr
    import socket  # only here: the no-dump boot path never needs it

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), target)
    except OSError:
        return False
    return True


def default_notifier() -> Notifier:
    """systemd.daemon.notify when python-systemd is there, else the built-in protocol."""
    try:
        from systemd import daemon
    except ImportError:
        return _raw_notify

    def notify(state: str) -> bool:
        return bool(daemon.notify(state))

    return notify


_notifier: Notifier | None = None


def notify(state: str, *, notifier: Notifier | None = None) -> bool:
    """Send an sd_notify state string (``STATUS=...``, ``EXTEND_TIMEOUT_USEC=...``)."""
    global _notifier
    if notifier is None:
        if "NOTIFY_SOCKET" not in os.environ:
            return False  # cheap path: not under a notify-aware manager
        if _notifier is None:
            _notifier = default_notifier()
        notifier = _notifier
    try:
        return notifier(state)
    except Exception:  # never let status reporting break a save
        logging.getLogger(LOGGER_NAME).debug("sd_notify failed", exc_info=True)
        return False


def notify_status(text: str, *, notifier: Notifier | None = None) -> bool:
    """Show ``text`` as the unit's status line (``systemctl status dumpsaver``)."""
    return notify("STATUS=" + text.replace("\n", " "), notifier=notifier)
