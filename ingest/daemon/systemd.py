"""systemd's notify protocol (sd_notify(3)), spoken directly: a datagram to `$NOTIFY_SOCKET`.

`READY=1` once the worker has recovered its spool and its sources run (so `systemctl start` returns
when it really works), `STOPPING=1` when a signal starts the drain, and `WATCHDOG=1` every half
`WatchdogSec` from a task on the event loop: a loop stuck on something gets the service restarted.
Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.
"""

from __future__ import annotations

import os
import socket

import anyio

from ingest.logs import get_logger

log = get_logger("ingest.daemon.systemd")


def notify(*states: str) -> bool:
    """Send `KEY=value` lines to the service manager; False when there is none (or it is gone)."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    target = "\0" + address[1:] if address[0] == "@" else address  # '@': the abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.setblocking(False)  # one small datagram; never wait for the manager
        try:
            sock.sendto("\n".join(states).encode(), target)
        except OSError as exc:
            log.warning("systemd notify failed", error=str(exc), states=list(states))
            return False
    return True


def watchdog_interval() -> float | None:
    """Half the watchdog timeout systemd set for this process, or None when it set none."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6 / 2


async def keep_alive(interval: float) -> None:
    """Feed the watchdog from the event loop until cancelled."""
    while True:
        notify("WATCHDOG=1")
        await anyio.sleep(interval)
