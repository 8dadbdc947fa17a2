"""Request bodies that wait for a parse are parsed together.

A body's parse has a fixed cost (pyarrow's reader starting, the sample of lines, the timestamp
rules) that is half of it for a 1,000-record body. One parse runs at a time, in a thread (pyarrow's
reader spreads one over every core); a request whose body is waiting when the parse is free takes the
oldest waiting body and the others waiting for its table (up to GROUP_BODIES and GROUP_BYTES, as
sent) into one thread call, and `bodies.records_together` parses their JSON lines in one pyarrow
call when that gives each body exactly its own rows. Nobody waits for a group to fill: when requests
come one at a time, each body is parsed alone, at once; when they come faster than they are parsed,
the ones that queued share a parse. A big body (BIG_BODY), or a parse that runs long (`slow_parse`),
never holds the others: while every parse running is one of those, another starts, up to `lanes` at
once.

One parse at a time, not one a core: with two, the bodies of a busy minute were mostly parsed alone
(a lane was free as each came), at the whole fixed cost each, and two parses beside a batch's encode
left the event loop less of the cores (measured in docs/performance.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import anyio.to_thread

from ingest import metrics
from ingest.sources.http.bodies import Media, Records, decompress, records_together

GROUP_BODIES = 8  # measured: 1,000-record bodies cost 4.8 ms alone, 3.0 by 4, 2.5 by 8, 2.7 by 16
GROUP_BYTES = 8 << 20
BIG_BODY = 1 << 20  # a body whose parse would hold others' for about 10 ms or more


@dataclass(eq=False)
class _Body:
    body: bytes
    media: Media
    encoding: str
    source: str
    table: str
    taken: bool = False  # in a group being parsed
    done: anyio.Event = field(default_factory=anyio.Event)
    result: Records | None = None
    error: BaseException | None = None


class Parses:
    # A parse running this long (seconds) holds the bodies behind it as a big one does: a small body
    # can take seconds (20,000 keys a line, nesting to fold), and nobody else should wait that long.
    slow_parse = 0.1

    def __init__(self, max_request_bytes: int, max_record: int, lanes: int, name: str = "http") -> None:
        self.name = name
        self.max_request_bytes = max_request_bytes
        self.max_record = max_record
        self.lanes = lanes
        self._waiting: list[_Body] = []
        self._running: dict[object, tuple[bool, float]] = {}  # parse → (holds a big body, started)
        self._free = anyio.Event()  # set when a parse ends or a big one starts

    async def records(self, body: bytes, media: Media, encoding: str, source: str, table: str) -> Records:
        """The body's records (decompressed and parsed in a thread), or the error its parse raises.
        Only bodies for one table are parsed together."""
        job = _Body(body, media, encoding, source, table)
        self._waiting.append(job)
        try:
            while not job.taken:
                if self._may_lead():
                    await self._lead()
                else:
                    with anyio.move_on_after(self.slow_parse):
                        await self._free.wait()
            await job.done.wait()
        finally:
            if not job.taken:  # cancelled while waiting: nobody parses it
                self._waiting.remove(job)
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _may_lead(self) -> bool:
        """Whether a waiting body may start a parse: none runs, or each running one holds a big body
        or has run for `slow_parse` (up to `lanes` at once)."""
        if len(self._running) >= self.lanes:
            return False
        now = anyio.current_time()
        return all(big or now - started >= self.slow_parse for big, started in self._running.values())

    async def _lead(self) -> None:
        """Parse the oldest waiting body, and the others waiting for its table, in one thread call."""
        first = self._waiting[0]
        group = [first]
        size = len(first.body)
        for job in self._waiting[1:]:
            if len(group) == GROUP_BODIES:
                break
            if job.table == first.table and size + len(job.body) <= GROUP_BYTES:
                group.append(job)
                size += len(job.body)
        for job in group:
            job.taken = True
            self._waiting.remove(job)
        big = any(_parsed_size(job) >= BIG_BODY for job in group)
        token = object()
        self._running[token] = (big, anyio.current_time())
        if big:  # the bodies waiting behind it may take another lane
            self._wake()
        metrics.HTTP_PARSES.labels(self.name).inc()
        try:
            await anyio.to_thread.run_sync(self._parse, group)
        except Exception as exc:  # not a body's own error (those are each body's): every body's
            for job in group:
                job.error = job.error or exc
        finally:
            del self._running[token]
            for job in group:
                if job.result is None and job.error is None:
                    job.error = RuntimeError("the body's parse did not finish")
                job.done.set()
            self._wake()

    def _wake(self) -> None:
        self._free.set()
        self._free = anyio.Event()

    def _parse(self, group: list[_Body]) -> None:
        plain: list[_Body] = []
        bodies = []
        for job in group:
            try:
                data = decompress(job.body, job.encoding, self.max_request_bytes)
            except Exception as exc:
                job.error = exc
                continue
            plain.append(job)
            bodies.append((data, job.media, job.source))
        for job, out in zip(plain, records_together(bodies, self.max_record), strict=True):
            if isinstance(out, Exception):
                job.error = out
            else:
                job.result = out


def _parsed_size(job: _Body) -> int:
    """About how many bytes the body's parse reads: compressed JSON is taken at 8 times its size."""
    return len(job.body) if job.encoding in ("", "identity") else 8 * len(job.body)
