"""dumpsaver.journal: structured events, logging setup, sd_notify (with injected senders)."""

from __future__ import annotations

import io
import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dumpsaver import journal

REPO = Path(__file__).resolve().parent.parent


class Recorder:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def __call__(self, message: str, **fields: Any) -> None:
        self.sent.append({"MESSAGE": message, **fields})


@pytest.fixture
def rec() -> Iterator[Recorder]:
    r = Recorder()
    journal.setup_logging(sender=r, environ={})
    yield r
    journal.setup_logging(environ={}, stream=io.StringIO())


def test_event_carries_message_id_and_fields(rec: Recorder) -> None:
    def saver_function() -> None:
        journal.log_event("saved", "Saved dump 42", dump_id="42", dump_dir="/var/dumps/42",
                          pages=1234)  # fmt: skip

    saver_function()
    (e,) = rec.sent
    assert e["MESSAGE"] == "Saved dump 42"
    assert e["MESSAGE_ID"] == journal.EVENTS["saved"].message_id
    assert e["DUMPSAVER_EVENT"] == "saved"
    assert e["PRIORITY"] == "5"
    assert e["SYSLOG_IDENTIFIER"] == "dumpsaver"
    assert e["DUMP_ID"] == "42" and e["DUMP_DIR"] == "/var/dumps/42" and e["PAGES"] == "1234"
    assert e["CODE_FUNC"] == "saver_function"  # the caller, not log_event


@pytest.mark.parametrize(
    ("event", "priority"),
    [("dump-found", "5"), ("incomplete", "4"), ("failed", "3"), ("released", "6"),
     ("restart-requested", "5")],
)  # fmt: skip
def test_every_event_priority(rec: Recorder, event: str, priority: str) -> None:
    journal.log_event(event, "x")
    assert rec.sent[-1]["PRIORITY"] == priority
    assert rec.sent[-1]["MESSAGE_ID"] == journal.EVENTS[event].message_id


def test_plain_log_records_go_to_the_journal_too(rec: Recorder) -> None:
    logging.getLogger("dumpsaver.save").warning("disk is slow")
    (e,) = rec.sent
    assert e["PRIORITY"] == "4" and "MESSAGE_ID" not in e


def test_exception_text_is_a_field(rec: Recorder) -> None:
    try:
        raise OSError(28, "No space left on device")
    except OSError:
        logging.getLogger("dumpsaver").exception("write failed")
    assert "No space left on device" in rec.sent[-1]["EXCEPTION_TEXT"]


def test_unknown_event_and_bad_field_are_rejected(rec: Recorder) -> None:
    with pytest.raises(ValueError, match="unknown event"):
        journal.log_event("exploded", "x")
    with pytest.raises(ValueError, match="field name"):
        journal.log_event("saved", "x", **{"bad field": "1"})
    assert rec.sent == []


def test_message_ids_are_fixed_unique_128_bit() -> None:
    ids = [e.message_id for e in journal.EVENTS.values()]
    assert len(set(ids)) == len(ids) == 8
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert set(journal.EVENTS) == {
        "dump-found", "saved", "incomplete", "failed", "released", "restart-requested",
        "given-back", "give-back-failed",
    }  # fmt: skip


def test_catalog_documents_every_event() -> None:
    text = (REPO / "units" / "dumpsaver.catalog").read_text()
    catalog_ids = re.findall(r"^-- ([0-9a-f]{32})$", text, re.M)
    assert sorted(catalog_ids) == sorted(e.message_id for e in journal.EVENTS.values())
    for block in text.split("\n-- ")[1:]:
        assert "\nSubject: " in block and "\nDefined-By: dumpsaver" in block


@pytest.mark.parametrize(
    ("value", "level"),
    [("debug", logging.DEBUG), ("7", logging.DEBUG), ("info", logging.INFO),
     ("notice", logging.INFO), ("warning", logging.WARNING), ("4", logging.WARNING),
     ("err", logging.ERROR), ("crit", logging.CRITICAL), ("", None), ("loud", None),
     ("9", None)],
)  # fmt: skip
def test_level_from_env(value: str, level: int | None) -> None:
    assert journal.level_from_env({"SYSTEMD_LOG_LEVEL": value}) == level


def test_stderr_logging_outside_systemd() -> None:
    buf = io.StringIO()
    logger = journal.setup_logging(environ={"SYSTEMD_LOG_LEVEL": "warning"}, stream=buf)
    assert logger.level == logging.WARNING
    logger.info("hidden")
    journal.log_event("failed", "no space on /var/dumps", reason="ENOSPC")
    assert buf.getvalue() == "error: no space on /var/dumps\n"


def test_verbose_wins_over_env() -> None:
    buf = io.StringIO()
    logger = journal.setup_logging(True, environ={"SYSTEMD_LOG_LEVEL": "err"}, stream=buf)
    assert logger.level == logging.DEBUG


def test_journal_stream_detection(tmp_path: Path) -> None:
    f = tmp_path / "stream"
    f.write_text("")
    with f.open("w") as fh:
        st = os.fstat(fh.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert journal.stderr_is_journal(env, fd=fh.fileno())
        assert not journal.stderr_is_journal({"JOURNAL_STREAM": "1:2"}, fd=fh.fileno())
        assert not journal.stderr_is_journal({"JOURNAL_STREAM": "junk"}, fd=fh.fileno())
        assert not journal.stderr_is_journal({}, fd=fh.fileno())


def test_syslog_prefix_formatter() -> None:
    fmt = journal._PrefixFormatter(syslog_prefix=True)
    rec = logging.LogRecord("dumpsaver", logging.ERROR, __file__, 1, "a\nb", None, None)
    assert fmt.format(rec) == "<3>a\n<3>b"
    rec.journal_fields = {"PRIORITY": "5"}
    assert fmt.format(rec) == "<5>a\n<5>b"


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setattr(journal, "_notifier", None)
    yield s
    s.close()


def test_notify_status_reaches_the_socket(notify_socket: socket.socket) -> None:
    assert journal.notify_status("Saving dump: 10%\n(1/10)")
    assert notify_socket.recv(4096) == b"STATUS=Saving dump: 10% (1/10)"


def test_raw_notify_without_python_systemd(notify_socket: socket.socket) -> None:
    assert journal.notify_status("hello", notifier=journal._raw_notify)
    assert notify_socket.recv(4096) == b"STATUS=hello"


def test_raw_notify_abstract_socket() -> None:
    name = f"dumpsaver-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(2)
        assert journal._raw_notify("STATUS=x", {"NOTIFY_SOCKET": "@" + name})
        assert s.recv(100) == b"STATUS=x"


def test_notify_is_a_cheap_noop_without_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert journal.notify_status("x") is False
    assert journal._raw_notify("STATUS=x", {}) is False
    assert journal._raw_notify("STATUS=x", {"NOTIFY_SOCKET": "relative"}) is False


def test_notifier_errors_never_escape() -> None:
    def broken(state: str) -> bool:
        raise OSError("gone")

    assert journal.notify_status("x", notifier=broken) is False


def test_degrades_without_python_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under systemd but without the systemd module: stderr with <N> prefixes, raw notify."""
    import builtins

    real_import = builtins.__import__

    def no_systemd(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "systemd" or name.startswith("systemd."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_systemd)
    logger = journal.setup_logging(environ={"INVOCATION_ID": "x", "JOURNAL_STREAM": "1:1"})
    assert isinstance(logger.handlers[0], logging.StreamHandler)
    assert journal.default_notifier() is journal._raw_notify
    journal.setup_logging(environ={}, stream=io.StringIO())
