"""dumpsaver.restart against a fake bus, and pystemd's real error path.

The real thing (PID 1 receiving the request, the container rebooting) is in
tests/test_nspawn.py; on a real kernel in tests/e2e.
"""

from __future__ import annotations

from typing import Any

import pytest

from dumpsaver import restart
from dumpsaver.errors import DumpsaverError

pystemd_dbuslib = pytest.importorskip("pystemd.dbuslib", reason="pystemd is not installed")


class FakeReply:
    def __init__(self, body: Any) -> None:
        self.body = body


class FakeBus:
    def __init__(self, props: dict[bytes, Any] | None = None, fail: Exception | None = None):
        self.calls: list[tuple[Any, ...]] = []
        self.props = props or {}
        self.fail = fail
        self.opened = self.closed = 0

    def __enter__(self) -> FakeBus:
        if self.fail:
            raise self.fail
        self.opened += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed += 1

    def call_method(self, dest: bytes, path: bytes, iface: bytes, method: bytes, args: Any) -> Any:
        self.calls.append((dest, path, iface, method, args))
        if method == b"LoadUnit":
            return FakeReply(b"/org/freedesktop/systemd1/unit/dumpsaver_2eservice")
        return FakeReply(b"/org/freedesktop/systemd1/job/42")

    def get_property(self, dest: bytes, path: bytes, iface: bytes, prop: bytes, sig: bytes) -> Any:
        return self.props[prop]


@pytest.mark.parametrize(("action", "target"), [("reboot", b"reboot.target"),
                                                ("poweroff", b"poweroff.target")])  # fmt: skip
def test_request_restart_starts_the_target_irreversibly(action: str, target: bytes) -> None:
    bus = FakeBus()
    restart.request_restart(action, bus_factory=lambda: bus, sync=False)
    ((dest, path, iface, method, args),) = bus.calls
    assert (dest, path, iface, method) == (
        b"org.freedesktop.systemd1", b"/org/freedesktop/systemd1",
        b"org.freedesktop.systemd1.Manager", b"StartUnit",
    )  # fmt: skip
    values = [v for _, v in args]
    assert values == [target, b"replace-irreversibly"]
    assert bus.opened == bus.closed == 1


def test_continue_does_not_touch_systemd() -> None:
    bus = FakeBus()
    restart.request_restart("continue", bus_factory=lambda: bus)
    assert bus.calls == [] and bus.opened == 0


def test_unknown_action() -> None:
    with pytest.raises(DumpsaverError) as ei:
        restart.request_restart("explode", bus_factory=FakeBus, sync=False)
    assert ei.value.exit_code == 2
    assert ei.value.hint is not None and "reboot" in ei.value.hint


def test_unreachable_systemd_is_a_dumpsaver_error(tmp_path: Any) -> None:
    """The real pystemd error (no socket there) becomes a one-line error with a hint."""
    addr = f"unix:path={tmp_path}/nothing".encode()
    with pytest.raises(DumpsaverError) as ei:
        restart.request_restart("reboot", address=addr, sync=False)
    assert "could not ask systemd to reboot" in ei.value.message
    assert ei.value.hint is not None and "PID 1" in ei.value.hint
    assert ei.value.exit_code == 1


def test_bus_errors_are_wrapped() -> None:
    bus = FakeBus(fail=PermissionError("denied"))
    with pytest.raises(DumpsaverError, match="PermissionError"):
        restart.request_restart("poweroff", bus_factory=lambda: bus, sync=False)


PROPS: dict[bytes, Any] = {
    b"LoadState": b"loaded",
    b"ActiveState": b"active",
    b"SubState": b"exited",
    b"InactiveExitTimestamp": 1_700_000_000_000_000,
    b"ActiveEnterTimestamp": 1_700_000_000_200_000,
    b"ActiveEnterTimestampMonotonic": 15_200_000,
    b"InactiveExitTimestampMonotonic": 15_000_000,
    b"Result": b"success",
    b"ExecMainCode": 1,
    b"ExecMainStatus": 0,
    b"ExecMainStartTimestamp": 1_700_000_000_010_000,
    b"ExecMainExitTimestamp": 1_700_000_000_190_000,
}


def test_unit_last_run_reads_state_and_times() -> None:
    bus = FakeBus(PROPS)
    info = restart.unit_last_run(bus_factory=lambda: bus)
    assert info is not None
    assert info["unit"] == "dumpsaver.service"
    assert info["active_state"] == "active" and info["result"] == "success"
    assert info["exec_main_status"] == 0
    assert info["started_at"] == "2023-11-14T22:13:20+00:00"
    assert info["finished_at"] == "2023-11-14T22:13:20+00:00"
    assert bus.calls[0][3] == b"LoadUnit"


def test_unit_last_run_never_ran() -> None:
    props = PROPS | {b"ExecMainStartTimestamp": 0, b"ExecMainExitTimestamp": 0,
                     b"InactiveExitTimestamp": 0, b"ActiveState": b"inactive"}  # fmt: skip
    info = restart.unit_last_run(bus_factory=lambda: FakeBus(props))
    assert info is not None
    assert info["started_at"] is None and info["finished_at"] is None


def test_unit_last_run_unknown() -> None:
    assert restart.unit_last_run(bus_factory=lambda: FakeBus(fail=OSError("no bus"))) is None
    not_found = PROPS | {b"LoadState": b"not-found"}
    assert restart.unit_last_run(bus_factory=lambda: FakeBus(not_found)) is None


def test_unit_last_run_without_systemd_returns_none(tmp_path: Any) -> None:
    """A real pystemd bus to nowhere: None, not an exception."""
    addr = f"unix:path={tmp_path}/nothing".encode()
    assert restart.unit_last_run(bus_factory=restart._private_bus_factory(addr)) is None


def _no_pystemd(address: bytes) -> Any:
    raise ImportError("pystemd")


def test_fallback_to_systemctl_without_pystemd(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No pystemd: the same request through ``systemctl --no-block reboot``."""
    log = tmp_path / "calls"
    fake = tmp_path / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))

    monkeypatch.setattr(restart, "_private_bus_factory", _no_pystemd)
    restart.request_restart("poweroff", sync=False)
    assert log.read_text() == "--no-block poweroff\n"


def test_fallback_failure_is_reported(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "systemctl"
    fake.write_text("#!/bin/sh\necho 'System has not been booted with systemd' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(restart, "_private_bus_factory", _no_pystemd)
    with pytest.raises(DumpsaverError, match="not been booted with systemd"):
        restart.request_restart("reboot", sync=False)
