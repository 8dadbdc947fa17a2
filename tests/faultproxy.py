"""A real TCP proxy that injects faults between the worker and SeaweedFS (runs in its own thread).

Every request gets `Connection: close`, so each request has a connection of its own and its own
draw of behaviour by weight: pass through, answer 503 (or 403), drop the connection before
forwarding, drop the *response* after the server has done the work (the case that tests exactly-once:
the write happened but the client never heard), or delay.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

_503 = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_DENIED = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
_403 = (
    b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nConnection: close\r\n"
    + b"Content-Length: %d\r\n\r\n" % len(_DENIED)
    + _DENIED
)


@dataclass
class Faults:
    drop: float = 0.0  # close before forwarding anything
    drop_response: float = 0.0  # forward the request, swallow the answer, close
    unavailable: float = 0.0  # answer 503
    forbidden: float = 0.0  # answer 403 AccessDenied (as a bucket lock or a narrower token would)
    delay: float = 0.0  # wait delay_seconds before forwarding
    delay_seconds: float = 1.0
    seed: int = 1
    methods: tuple[str, ...] = ()  # only requests of these methods get faults (empty: all of them)


@dataclass
class FaultProxy:
    upstream_port: int
    faults: Faults = field(default_factory=Faults)
    port: int = 0
    seen: Counter[str] = field(default_factory=Counter)
    received: int = 0  # bytes the upstream sent back through the proxy (what a client downloaded)
    requests: list[str] = field(default_factory=list)  # each request's first line, in order

    def lists(self, prefix: str = "") -> int:
        """LIST requests seen so far (ListObjectsV2 / ListObjects), of keys under `prefix` if given."""
        from urllib.parse import quote

        want = "prefix=" + quote(prefix, safe="") if prefix else ""
        return sum(1 for r in self.requests if r.startswith("GET ") and "list-type=" in r and want in r)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.faults.seed)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
        server.close()
        # Connections still in a delay or a pipe: cancel them, so none outlives the loop.
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _pick(self) -> str:
        f = self.faults
        r = self._rng.random()
        for name, weight in (
            ("drop", f.drop),
            ("drop_response", f.drop_response),
            ("unavailable", f.unavailable),
            ("forbidden", f.forbidden),
            ("delay", f.delay),
        ):
            if r < weight:
                return name
            r -= weight
        return "pass"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await _request_head(reader, writer)
        if head is None:
            return
        methods = self.faults.methods
        mode = self._pick() if not methods or head.split(b" ", 1)[0].decode() in methods else "pass"
        self.seen[mode] += 1
        self.requests.append(head.split(b"\r\n", 1)[0].decode("latin-1"))  # e.g. "GET /b?list-type=2…"
        try:
            if mode == "drop":
                return
            if mode in ("unavailable", "forbidden"):
                writer.write(_503 if mode == "unavailable" else _403)
                await writer.drain()
                return
            if mode == "delay":
                await asyncio.sleep(self.faults.delay_seconds)
            lines = [ln for ln in head[:-4].split(b"\r\n") if not ln.lower().startswith(b"connection:")]

            async def relay(up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
                up_writer.write(b"\r\n".join([*lines, b"Connection: close", b"", b""]))
                await asyncio.gather(
                    self._pipe(reader, up_writer),
                    self._pipe(up_reader, writer, swallow=mode == "drop_response", count=True),
                )

            await self._upstream(relay)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _upstream(
        self, relay: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[object]]
    ) -> None:
        """A connection to the upstream for `relay(reader, writer)`, closed after it."""
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            await relay(up_reader, up_writer)
        finally:
            up_writer.close()

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, swallow: bool = False, count: bool = False
    ) -> None:
        try:
            while data := await src.read(65536):
                if swallow:
                    # The server answered, so it did the work; the client never hears of it.
                    dst.transport.abort()
                    return
                if count:
                    self.received += len(data)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if not dst.is_closing():
                dst.close()


@dataclass
class LaggyProxy(FaultProxy):
    """A plain TCP proxy (any protocol: Redis) that passes every byte on `lag` seconds after it came:
    latency, not a cap on bandwidth (a long answer is late by `lag`, not by `lag` per piece)."""

    lag: float = 1.0

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._upstream(
                lambda up_r, up_w: asyncio.gather(self._late(reader, up_w), self._late(up_r, writer))
            )
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _late(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def take() -> None:  # stamps each piece as it arrives
            try:
                while data := await src.read(65536):
                    queue.put_nowait((loop.time() + self.lag, data))
            except (ConnectionError, OSError):
                pass
            queue.put_nowait((loop.time() + self.lag, b""))

        taker = asyncio.ensure_future(take())
        try:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    return
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            taker.cancel()
            if not dst.is_closing():
                dst.close()


@dataclass
class HashCheckingProxy(FaultProxy):
    """Checks what SeaweedFS does not and S3 does: a PUT's `X-Amz-Content-SHA256` is the SHA-256 of
    the body that follows. A mismatch is answered 400 `XAmzContentSHA256Mismatch`, as S3 answers it.
    `hashed` counts the PUTs whose hash was checked, `mismatched` those refused."""

    hashed: int = 0
    mismatched: int = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await _request_head(reader, writer)
        if head is None:
            return
        self.requests.append(head.split(b"\r\n", 1)[0].decode("latin-1"))
        lines = head[:-4].split(b"\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in lines[1:])}
        claimed = headers.get(b"x-amz-content-sha256", b"").decode("latin-1")
        try:
            body = b""
            if lines[0].startswith(b"PUT ") and len(claimed) == 64:
                if headers.get(b"expect", b"").lower() == b"100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    await writer.drain()
                body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
                self.hashed += 1
                if hashlib.sha256(body).hexdigest() != claimed:
                    self.mismatched += 1
                    refusal = b"<Error><Code>XAmzContentSHA256Mismatch</Code></Error>"
                    writer.write(
                        b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/xml\r\n"
                        + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(refusal)
                        + refusal
                    )
                    await writer.drain()
                    return
            kept = [ln for ln in lines if not ln.lower().startswith((b"connection:", b"expect:"))]

            async def relay(up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
                up_writer.write(b"\r\n".join([*kept, b"Connection: close", b"", b""]) + body)
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer, count=True))

            await self._upstream(relay)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def _request_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes | None:
    """A request's line and headers; None (the connection closed) when the client sent none."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        writer.close()
        return None
