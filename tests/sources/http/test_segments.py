"""Segments: durable blocks, read back by their journaled position, removed once acknowledged."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ingest.sources.http.segments import Block, Segments


def test_blocks_are_read_back_and_a_segment_goes_once_closed_and_released(tmp_path: Path) -> None:
    seg = Segments(tmp_path / "http")
    a, b = seg.append([(b'{"id":1}\n', 1, "default", "r1"), (b'{"id":2}\n{"id":3}\n', 2, "clicks", "r2")])
    assert Block.parse(b.id) == b and (b.offset, b.length, b.lines, b.table) == (9, 18, 2, "clicks")
    assert seg.read(b) == b'{"id":2}\n{"id":3}\n'
    seg.release([a])
    seg.release([b])
    assert seg.path(a.segment).exists(), "the current segment is kept until it is closed"
    seg.roll()
    assert not seg.path(a.segment).exists()
    [c] = seg.append([(b"{}\n", 1, "default", "r3")])
    assert c.segment != a.segment and seg.live() == [seg.path(c.segment)]


def test_recover_keeps_segments_with_journaled_blocks_and_removes_the_rest(tmp_path: Path) -> None:
    seg = Segments(tmp_path / "http")
    [kept] = seg.append([(b"{}\n", 1, "default", "r1")])
    seg.roll()
    [unjournaled] = seg.append([(b"{}\n", 1, "default", "r2")])  # the crash came before the journal
    again = Segments(tmp_path / "http")
    again.recover([kept])
    assert again.path(kept.segment).exists() and not again.path(unjournaled.segment).exists()
    assert again.read(kept) == b"{}\n"
    again.release([kept])  # recovered segments are closed: released means removed
    assert not again.path(kept.segment).exists()


def test_a_failed_commit_leaves_nothing_to_wait_for(tmp_path: Path) -> None:
    seg = Segments(tmp_path / "http")
    blocks = seg.append([(b"{}\n", 1, "default", "r1")])
    seg.discard(blocks)
    seg.roll()
    assert seg.live() == [] and list((tmp_path / "http").iterdir()) == []


def test_an_append_does_not_wait_for_a_released_segment_to_be_unlinked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unlinking an acknowledged segment of many MB took ~50 ms beside an encode; under the lock, the
    next requests' append (and their 202s) waited that long. The unlink now runs after the lock."""
    seg = Segments(tmp_path / "http")
    old = seg.append([(b'{"a": 1}\n', 1, "events", "r1")])
    seg.roll()
    unlinking, finish = threading.Event(), threading.Event()
    unlink = Path.unlink

    def held(path: Path, missing_ok: bool = False) -> None:
        unlinking.set()
        assert finish.wait(10)
        unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", held)
    releasing = threading.Thread(target=seg.release, args=(old,))
    releasing.start()
    assert unlinking.wait(5)
    appended: list[list[Block]] = []
    appending = threading.Thread(
        target=lambda: appended.append(seg.append([(b'{"a": 2}\n', 1, "events", "r2")]))
    )
    appending.start()
    appending.join(5)
    finished_first = bool(appended)
    finish.set()
    releasing.join(5)
    appending.join(5)
    assert finished_first, "the append waited for the unlink"
    assert not seg.path(old[0].segment).exists()
    assert [p.name for p in seg.live()] == [appended[0][0].segment]
    assert seg.read(appended[0][0]) == b'{"a": 2}\n'
