"""Ask systemd (PID 1) for the clean restart, and read the unit's last run.

dumpsaver runs before sysinit.target, when the D-Bus system bus does not exist yet; PID 1's
private socket (``/run/systemd/private``, root only) does, and it is what ``systemctl``
uses that early.  We talk to it peer-to-peer through pystemd's ``DBusAddress`` and call
the Manager's methods directly (``bus.call_method``), without pystemd's introspection: it
is faster (no lxml) and the same API in Debian's python3-pystemd 0.11 and PyPI's 0.15.

The restart is ``StartUnit("reboot.target", "replace-irreversibly")``, which is what
``systemctl reboot`` does: a clean shutdown that stops every unit (this one included, with
SIGTERM) and unmounts the file systems.  ``Manager.Reboot()`` would be ``systemctl reboot
--force``: no clean stop of the services, so it is not used.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from .errors import DumpsaverError
from .paths import PID1_PRIVATE

PRIVATE_ADDRESS: Final = b"unix:path=" + PID1_PRIVATE.encode()
DESTINATION: Final = b"org.freedesktop.systemd1"
MANAGER_PATH: Final = b"/org/freedesktop/systemd1"
MANAGER_IFACE: Final = b"org.freedesktop.systemd1.Manager"
UNIT_IFACE: Final = b"org.freedesktop.systemd1.Unit"
SERVICE_IFACE: Final = b"org.freedesktop.systemd1.Service"

class RestartAction(enum.StrEnum):
    """What follows a saved dump (the ``restart`` setting)."""

    REBOOT = "reboot"
    POWEROFF = "poweroff"
    CONTINUE = "continue"


ACTIONS: Final = {
    RestartAction.REBOOT: "reboot.target",
    RestartAction.POWEROFF: "poweroff.target",
    RestartAction.CONTINUE: None,
}

# Factory for an open-able pystemd bus object; injectable for tests.
BusFactory = Callable[[], Any]


def _private_bus_factory(address: bytes) -> BusFactory:
    from pystemd.dbuslib import DBusAddress

    return lambda: DBusAddress(address, peer_to_peer=True)


def _system_bus_factory() -> BusFactory:
    from pystemd.dbuslib import DBus

    return lambda: DBus()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def request_restart(
    action: str,
    *,
    address: bytes = PRIVATE_ADDRESS,
    bus_factory: BusFactory | None = None,
    sync: bool = True,
) -> None:
    """Ask PID 1 to ``reboot`` or ``poweroff`` cleanly; ``continue`` does nothing.

    Returns once systemd has queued the job: the caller must have logged and fsynced
    everything it needs before, since systemd stops this unit right after.  Raises
    :class:`DumpsaverError` when systemd cannot be reached or refuses.
    """
    try:
        target = ACTIONS[RestartAction(action)]
    except ValueError:
        raise DumpsaverError(
            f"unknown restart action {action!r}",
            hint="use one of: " + ", ".join(ACTIONS),
            exit_code=2,
        ) from None
    if target is None:
        return
    if sync:
        os.sync()
    if bus_factory is None:
        try:
            bus_factory = _private_bus_factory(address)
        except ImportError:
            _restart_with_systemctl(action)
            return
    try:
        from pystemd.dbuslib import apply_signature

        args = apply_signature(b"ss", [target.encode(), b"replace-irreversibly"])
        with bus_factory() as bus:
            bus.call_method(DESTINATION, MANAGER_PATH, MANAGER_IFACE, b"StartUnit", args)
    except ImportError:
        _restart_with_systemctl(action)
    except Exception as e:  # pystemd raises its own DBus*Error family
        raise DumpsaverError(
            f"could not ask systemd to {action}: {type(e).__name__}: {e}",
            hint=f"is systemd PID 1 and {address.decode()} reachable (root only)?",
        ) from e


def _restart_with_systemctl(action: str) -> None:
    """Fallback without pystemd: ``systemctl --no-block reboot`` (same job, same socket)."""
    import shutil
    import subprocess

    systemctl = shutil.which("systemctl")
    if systemctl is None:
        raise DumpsaverError(
            f"cannot {action}: neither pystemd nor systemctl is available",
            hint="install python3-pystemd",
        )
    r = subprocess.run(
        [systemctl, "--no-block", action], capture_output=True, text=True, check=False
    )
    if r.returncode != 0:
        raise DumpsaverError(
            f"systemctl {action} failed: {r.stderr.strip() or r.returncode}",
            hint="is systemd PID 1?",
        )


def _usec_to_iso(usec: int) -> str | None:
    if not usec:
        return None
    return datetime.fromtimestamp(usec / 1e6, UTC).isoformat(timespec="seconds")


_UNIT_PROPS: Final = [
    ("load_state", UNIT_IFACE, b"LoadState", b"s"),
    ("active_state", UNIT_IFACE, b"ActiveState", b"s"),
    ("sub_state", UNIT_IFACE, b"SubState", b"s"),
    ("inactive_exit_usec", UNIT_IFACE, b"InactiveExitTimestamp", b"t"),
    ("active_enter_usec", UNIT_IFACE, b"ActiveEnterTimestamp", b"t"),
    ("active_enter_monotonic_usec", UNIT_IFACE, b"ActiveEnterTimestampMonotonic", b"t"),
    ("inactive_exit_monotonic_usec", UNIT_IFACE, b"InactiveExitTimestampMonotonic", b"t"),
]
_SERVICE_PROPS: Final = [
    ("result", SERVICE_IFACE, b"Result", b"s"),
    ("exec_main_code", SERVICE_IFACE, b"ExecMainCode", b"i"),
    ("exec_main_status", SERVICE_IFACE, b"ExecMainStatus", b"i"),
    ("exec_main_start_usec", SERVICE_IFACE, b"ExecMainStartTimestamp", b"t"),
    ("exec_main_exit_usec", SERVICE_IFACE, b"ExecMainExitTimestamp", b"t"),
]


def default_bus_factory() -> BusFactory:
    """PID 1's private socket when we are root and it exists, else the system bus."""
    if os.geteuid() == 0 and os.path.exists(PID1_PRIVATE):
        return _private_bus_factory(PRIVATE_ADDRESS)
    return _system_bus_factory()


def unit_last_run(
    unit: str = "dumpsaver.service", *, bus_factory: BusFactory | None = None
) -> dict[str, Any] | None:
    """The unit's state and last run as systemd sees it, or None when unknown.

    None when pystemd is missing, systemd is not running or unreachable, or the unit is
    not installed.  Keys: ``unit``, ``load_state``, ``active_state``, ``sub_state``,
    ``result`` (success, exit-code, signal, timeout, ...), ``exec_main_status`` (exit
    status), ``started_at``/``finished_at`` (ISO 8601 UTC or None), and the raw
    ``*_usec`` timestamps.
    """
    try:
        if bus_factory is None:
            bus_factory = default_bus_factory()
        with bus_factory() as bus:
            reply = bus.call_method(
                DESTINATION, MANAGER_PATH, MANAGER_IFACE, b"LoadUnit", [(ord("s"), unit.encode())]
            )
            path = reply.body if hasattr(reply, "body") else reply
            if isinstance(path, (list, tuple)):
                path = path[0]
            info: dict[str, Any] = {"unit": unit}
            props = list(_UNIT_PROPS)
            if unit.endswith(".service"):
                props += _SERVICE_PROPS
            for key, iface, prop, sig in props:
                value = bus.get_property(DESTINATION, path, iface, prop, sig)
                info[key] = _text(value) if sig == b"s" else int(value)
    except ImportError:
        return None
    except Exception:  # not PID 1, no socket, access denied: nothing known
        return None
    if info.get("load_state") == "not-found":
        return None
    info["started_at"] = _usec_to_iso(
        info.get("exec_main_start_usec") or info["inactive_exit_usec"]
    )
    info["finished_at"] = _usec_to_iso(info.get("exec_main_exit_usec", 0))
    return info
