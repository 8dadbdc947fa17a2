"""Bodies parsed together: each request gets exactly the records its own parse gives, the joint
parse is refused whenever that could differ, and bodies are grouped only when they queue."""

from __future__ import annotations

import gzip
import json
from typing import Any

import anyio
import pyarrow as pa
import pytest

from ingest.parsing.jsonlines import parse_joint, parse_lines
from ingest.sources.http.bodies import BodyError, Media, Records, records, records_together
from ingest.sources.http.parses import BIG_BODY, GROUP_BODIES, Parses

MAX = 1 << 20


def _body(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def _events(first: int, n: int, **extra: Any) -> bytes:
    return _body(
        [
            {
                "id": first + i,
                "at": f"2024-08-02T10:{i % 60:02d}:00Z",
                "v": i * 0.5,
                "tags": ["a", "b"][: i % 3],
                "d": {"k": i, "when": "2024-08-02T10:00:00+02:00"},
                **extra,
            }
            for i in range(n)
        ]
    )


def _values(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as the fields they give values to (a column of nulls only is what a missing one is)."""
    return [{k: v for k, v in r.items() if v is not None} for r in rows]


def _rows(recs: Records) -> list[dict[str, Any]]:
    return _values([r for t, _, _ in recs.tables for r in t.to_pylist()])


def _alike(together: Records, alone: Records) -> None:
    """The same rows, lines, block and rejections; each field of the same type, or of the type the
    pipeline would widen it to anyway (see _widened)."""
    assert _rows(together) == _rows(alone)
    assert (together.block, together.lines, together.rejected) == (alone.block, alone.lines, alone.rejected)
    own = {f.name: f.type for t, _, _ in alone.tables for f in t.schema}
    for t, _, _ in together.tables:
        for f in t.schema:
            assert _widened(own[f.name], f.type), (f, own[f.name])


def _widened(alone: pa.DataType, together: pa.DataType) -> bool:
    """`together` is `alone`, or what the pipeline widens it to beside other rows: an int to a
    double, null (no value yet) to a type, at any depth."""
    if alone == together or pa.types.is_null(alone):
        return True
    if pa.types.is_integer(alone) and pa.types.is_floating(together):
        return True
    if pa.types.is_list(alone) and pa.types.is_list(together):
        return _widened(alone.value_type, together.value_type)
    if pa.types.is_struct(alone) and pa.types.is_struct(together):
        mine = {f.name: f.type for f in together}
        return all(f.name in mine and _widened(f.type, mine[f.name]) for f in alone)
    return False


def test_bodies_of_json_lines_are_parsed_together_into_each_ones_own_rows() -> None:
    """Bodies whose first lines have the same fields; later lines may add others (`note`), values
    may be ints in one body and doubles in another."""
    later = _body([json.loads(_events(400, 1)), {"id": 401, "note": "only here", "v": 2.5}])
    ints = _body([{**json.loads(_events(500, 1)), "v": 7}])
    bodies = [_events(0, 300), _events(300, 1), later, ints]
    tables = parse_joint(bodies)
    assert tables is not None and [t.num_rows for t in tables] == [300, 1, 2, 1]
    for body, table in zip(bodies, tables, strict=True):
        [(alone, _, _)], dead = parse_lines(body, "s")
        assert not dead and _values(table.to_pylist()) == _values(alone.to_pylist())
        assert set(table.column_names) <= set(alone.column_names)  # no other body's fields
    assert "note" in tables[2].column_names and "note" not in tables[0].column_names
    # the time fields are typed as alone: zoned at the top and inside the object
    assert tables[0].schema.field("at").type == pa.timestamp("ms", tz="UTC")
    assert tables[0].schema.field("d").type.field("when").type == pa.timestamp("ms", tz="UTC")


@pytest.mark.parametrize(
    "bodies, why",
    [
        ([b'{"id": 0}\n', b'{"id": 1}\n\n{"id": 2}\n'], "a blank line"),
        ([b'{"id": 0}\n', b'{"id": 1}\n{"id": \n'], "a bad line"),
        ([b'{"id": 0}\n', b'{"id": 1}'], "no last newline"),
        ([_body([{"id": 0, "big": "x"}]), _body([{"id": 1, "big": "x" * 2000}])], "an over-long line"),
        (
            [_body([{"at": "2024-08-02T10:00:00Z"}]), _body([{"at": "2024-08-02T10:00:00"}])],
            "zoned and naive",
        ),
        ([_body([{"at": "2024-08-02T10:00:00Z"}]), _body([{"at": "soon"}])], "a time and other text"),
        ([_body([{"d": {"at": "2024-08-02"}}]), _body([{"d": {"at": "later"}}])], "the same, nested"),
        ([_body([{"n": 2**60 + 1}]), _body([{"n": 0.5}])], "an int a double cannot hold"),
        ([_body([{"x": 1}]), _body([{"x": "one"}])], "a number and text"),
        ([b'{"id": 1}\n', b'{"id": 2}\n{}\n'], "an empty record"),
        ([b'{"a": 1}\n', b'{"b": 1}\n'], "first lines of other fields"),
        ([b'{"a": 1}\n', b"[1, 2]\n"], "a first line that is not an object"),
    ],
)
def test_a_joint_parse_that_could_differ_from_each_alone_is_refused(bodies: list[bytes], why: str) -> None:
    assert parse_joint(bodies, max_record=1000) is None, why
    # and `records_together` then gives each body exactly its own records
    together = records_together([(b, "ndjson", f"r{i}") for i, b in enumerate(bodies)], 1000)
    for i, (body, got) in enumerate(zip(bodies, together, strict=True)):
        want = records(body, "ndjson", f"r{i}", 1000)
        assert isinstance(got, Records)
        assert (_rows(got), got.block, got.lines, got.rejected) == (
            _rows(want),
            want.block,
            want.lines,
            want.rejected,
        )


def test_records_together_equal_each_bodys_records_whatever_the_mix() -> None:
    """A BOM, a JSON array, one object sent as json, JSON lines as json, a body with a bad line, an
    empty body, a body too deep to parse: each gets what `records` gives it alone, errors included."""
    deep = b"[" * 300 + b"]" * 300
    bodies: list[tuple[bytes, Media, str]] = [
        (_events(0, 20), "ndjson", "a"),
        (b"\xef\xbb\xbf" + _events(20, 3), "ndjson", "b"),
        (json.dumps([{"id": 1}, {"id": 2}]).encode(), "json", "c"),
        (b'{"id": 3}', "json", "d"),
        (_events(23, 4), "json", "e"),
        (b'{"id": 4}\nnot json\n{"id": 5}\n', "ndjson", "f"),
        (b"", "ndjson", "g"),
        (deep, "json", "h"),
        (_events(27, 2), "ndjson", "i"),
    ]
    together = records_together(bodies, MAX)
    for (data, media, source), got in zip(bodies, together, strict=True):
        try:
            want: Records | Exception = records(data, media, source, MAX)
        except Exception as exc:
            want = exc
        if isinstance(want, Exception):
            assert type(got) is type(want) and str(got) == str(want), source
            continue
        assert isinstance(got, Records), (source, got)
        _alike(got, want)


def test_the_usual_bodies_are_parsed_together_and_alike() -> None:
    bodies: list[tuple[bytes, Media, str]] = [(_events(i * 100, 100), "ndjson", f"r{i}") for i in range(5)]
    bodies.append((_body([{**json.loads(_events(700, 1)), "v": 3}]), "ndjson", "x"))  # an int for v
    assert parse_joint([b for b, _, _ in bodies]) is not None  # the joint path is the one taken
    for (data, media, source), got in zip(bodies, records_together(bodies, MAX), strict=True):
        assert isinstance(got, Records)
        _alike(got, records(data, media, source, MAX))


class _Counted(Parses):
    """Parses that records the size of each group it parses (no other change)."""

    def __init__(self, lanes: int) -> None:
        super().__init__(MAX, MAX, lanes)
        self.groups: list[int] = []

    def _parse(self, group: list[Any]) -> None:
        self.groups.append(len(group))
        super()._parse(group)


@pytest.mark.anyio
async def test_bodies_that_queue_share_a_parse_and_each_request_gets_its_own_answer() -> None:
    parses = _Counted(lanes=1)
    bodies: list[tuple[bytes, str]] = [(_events(i * 200, 200), "identity") for i in range(20)]
    bodies[3] = (gzip.compress(bodies[3][0]), "gzip")
    bodies[5] = (b"not gzip", "gzip")
    bodies[7] = (b'{"id": 1}\n{"id":\n', "identity")
    got: dict[int, Records | BaseException] = {}

    async def send(i: int) -> None:
        body, encoding = bodies[i]
        try:
            got[i] = await parses.records(body, "ndjson", encoding, f"r{i}", "t")
        except BodyError as exc:
            got[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(send, i)
    assert sum(parses.groups) == 20 and max(parses.groups) > 1 and max(parses.groups) <= GROUP_BODIES
    for i in range(20):
        if i == 5:
            assert isinstance(got[i], BodyError) and "gzip" in str(got[i])
            continue
        plain = gzip.decompress(bodies[i][0]) if i == 3 else bodies[i][0]
        result = got[i]
        assert isinstance(result, Records)
        _alike(result, records(plain, "ndjson", f"r{i}", MAX))
    assert [d.line for d in got[7].rejected] == [2]  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_a_body_comes_alone_when_nothing_waits_and_a_cancelled_wait_leaves_no_trace() -> None:
    parses = _Counted(lanes=2)
    for i in range(3):  # one at a time: each parsed alone, at once
        recs = await parses.records(_events(i, 10), "ndjson", "identity", "s", "t")
        assert recs.rows == 10
    assert parses.groups == [1, 1, 1]
    # both lanes busy: a request that gives up while waiting is never parsed, the rest are
    slow = _Counted(lanes=1)
    gate = anyio.Event()
    original = slow._parse

    def held(group: list[Any]) -> None:
        anyio.from_thread.run(gate.wait)
        original(group)

    slow._parse = held  # type: ignore[method-assign]
    results: list[int] = []

    async def send(i: int) -> None:
        results.append((await slow.records(_events(i, 5), "ndjson", "identity", f"r{i}", "t")).rows)

    async with anyio.create_task_group() as tg:
        tg.start_soon(send, 0)
        await anyio.sleep(0.05)
        with anyio.move_on_after(0.05):
            await slow.records(_events(9, 5), "ndjson", "identity", "gives up", "t")
        tg.start_soon(send, 1)
        await anyio.sleep(0.05)
        gate.set()
    assert results == [5, 5] and slow.groups == [1, 1]


class _Held(_Counted):
    """Counted parses, each held in its thread until `gate` is set (only those whose first source is
    in `only`, when given); `started` lists each group's first source as it starts."""

    def __init__(self, lanes: int, slow_parse: float = 60.0, only: set[str] | None = None) -> None:
        super().__init__(lanes)
        self.slow_parse = slow_parse
        self.only = only
        self.gate = anyio.Event()
        self.started: list[str] = []

    def _parse(self, group: list[Any]) -> None:
        self.started.append(group[0].source)
        if self.only is None or group[0].source in self.only:
            anyio.from_thread.run(self.gate.wait)
        super()._parse(group)


@pytest.mark.anyio
async def test_small_bodies_wait_for_the_running_parse_and_share_the_next_one() -> None:
    """Two lanes: small bodies that come while one is parsed do not take the second lane (each
    would pay the whole fixed cost alone, beside the first); they queue and share the next parse."""
    parses = _Held(lanes=2)
    rows: list[int] = []

    async def send(i: int) -> None:
        rows.append((await parses.records(_events(i * 10, 10), "ndjson", "identity", f"r{i}", "t")).rows)

    async with anyio.create_task_group() as tg:
        tg.start_soon(send, 0)
        await anyio.sleep(0.05)
        for i in range(1, 5):
            tg.start_soon(send, i)
        await anyio.sleep(0.1)
        assert parses.started == ["r0"]  # the others wait: no second parse beside a small one
        parses.gate.set()
    assert parses.groups == [1, 4] and rows == [10] * 5


@pytest.mark.anyio
async def test_a_big_body_never_holds_the_small_ones_behind_it() -> None:
    """While the only parse running holds a big body, a small body takes the second lane at once."""
    parses = _Held(lanes=2)
    big = _events(0, 9_000)
    assert len(big) >= BIG_BODY
    answered: list[str] = []

    async def send(name: str, body: bytes) -> None:
        await parses.records(body, "ndjson", "identity", name, "t")
        answered.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(send, "big", big)
        await anyio.sleep(0.05)
        tg.start_soon(send, "small", _events(9_000, 10))
        await anyio.sleep(0.1)
        assert parses.started == ["big", "small"]  # the small one started beside the big one
        parses.gate.set()
    assert sorted(answered) == ["big", "small"] and parses.groups == [1, 1]


@pytest.mark.anyio
async def test_a_parse_that_runs_long_never_holds_the_bodies_behind_it_for_longer() -> None:
    """A small body can take seconds to parse (20,000 keys a line): once a parse has run for
    `slow_parse`, a body behind it takes the second lane, and is answered while it still runs."""
    parses = _Held(lanes=2, slow_parse=0.05, only={"slow"})
    answered: list[str] = []
    behind_answered = anyio.Event()

    async def send(name: str) -> None:
        await parses.records(_events(0, 10), "ndjson", "identity", name, "t")
        answered.append(name)
        if name == "behind":
            behind_answered.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(send, "slow")
        await anyio.sleep(0.01)
        started = anyio.current_time()
        tg.start_soon(send, "behind")
        with anyio.fail_after(5):
            await behind_answered.wait()
        assert anyio.current_time() - started >= 0.03  # it waited for the slow mark, not at once
        assert answered == ["behind"]  # while the slow one still runs
        parses.gate.set()
    assert answered == ["behind", "slow"]
