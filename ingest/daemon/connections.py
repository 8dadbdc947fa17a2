"""Connections to the worker's server, within the process's file-descriptor limit.

Every connection holds a file descriptor, and so do spool files, the journal, and the sockets to R2
and Redis. Under the common soft limit of 1,024, about a thousand idle connections (a client pool
kept alive, a flood) used to leave nothing for the rest: uploads failed with `Too many open
files`, probes stopped answering, and asyncio logged a traceback at every failed accept. Now:

- at start the soft limit is raised to the hard one (`ingest.daemon.limits`);
- at most `server.max_connections` are open (default: three quarters of the soft limit). At the
  cap, the connection idle the longest (waiting for a request's headers, or kept alive between
  requests) is closed to make room, as HTTP allows; if none is idle, the new one gets a 503 and is
  closed. A probe therefore still gets through a flood of idle connections;
- what was closed or refused, and accept failures, are logged once per `LOG_INTERVAL`, not per event.

Headers must also arrive within `server.header_timeout` (slowloris), see `HeaderDeadline`.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ingest import metrics
from ingest.daemon.limits import Tally
from ingest.logs import get_logger

log = get_logger("ingest.daemon.server")
_REFUSAL = b'{"error": "too many connections (server.max_connections); send again"}'
REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Type: application/json\r\n"
    + f"Content-Length: {len(_REFUSAL)}\r\nConnection: close\r\n\r\n".encode()
    + _REFUSAL
)


_AT_CAP = "too many connections: the longest idle closed, or the new one refused (server.max_connections)"


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol with a limit on the wait for a request's headers: from the connection's
    start, and on a kept-alive connection from the next request's first byte (uvicorn's keep-alive
    timeout closes it while it is idle). uvicorn has no such limit, and its keep-alive timer stops at
    the first byte, so a client sending a header byte now and then (slowloris) held a connection and
    its file descriptor for ever. Bodies have their own limit (`body_timeout`). It also keeps the
    connections within `max_connections` (see the module)."""

    header_timeout = 30.0
    max_connections = 0  # 0: no cap
    # Per server (set by `header_deadline`): open connections, and the idle ones, oldest first.
    open: ClassVar[set[HeaderDeadline]] = set()
    idle: ClassVar[dict[HeaderDeadline, None]] = {}
    tally: ClassVar[Tally] = Tally(_AT_CAP)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._between = False  # kept alive after an answer; no byte of the next request yet
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        cls = type(self)
        if cls.max_connections and len(cls.open) >= cls.max_connections:
            victim = next(iter(cls.idle), None)
            if victim is None:  # every connection is in the middle of a request
                self._refused = True
                transport.write(REFUSED)
                transport.close()
                metrics.CONNECTIONS_SHED.labels("refused").inc()
                cls.tally.add("refused", max_connections=cls.max_connections, open=len(cls.open))
                return
            victim._forget()
            victim.transport.close()
            metrics.CONNECTIONS_SHED.labels("idle_closed").inc()
            cls.tally.add("idle_closed", max_connections=cls.max_connections, open=len(cls.open))
        super().connection_made(transport)
        cls.open.add(self)
        self._idle()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._forget()
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._between:
            self._between = False
            self._arm()
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # the headers are in (or the connection is done)
            self._disarm()
            type(self).idle.pop(self, None)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._between = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if self._between:
            self._idle()

    def _idle(self) -> None:
        idle = type(self).idle
        idle.pop(self, None)
        idle[self] = None  # the newest idle one: closed last

    def _forget(self) -> None:
        type(self).open.discard(self)
        type(self).idle.pop(self, None)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            metrics.SLOW_HEADERS.inc()
            log.debug("closed a connection whose request headers did not arrive in time", client=self.client)
            self.transport.close()


def header_deadline(seconds: float, max_connections: int = 0) -> type[HeaderDeadline]:
    """The protocol class with its limits (uvicorn builds one per connection, without arguments)."""
    attributes = {
        "header_timeout": seconds,
        "max_connections": max_connections,
        "open": set(),
        "idle": {},
        "tally": Tally(_AT_CAP),
    }
    return type("HeaderDeadline", (HeaderDeadline,), attributes)
