"""Messages: numbers that agree with their nouns, and input quoted in an error made safe to print."""

from __future__ import annotations

from ingest.messages import count, one_line


def test_count_agrees() -> None:
    assert (count(1, "object"), count(2000, "record")) == ("1 object", "2,000 records")


def test_one_line_escapes_what_a_terminal_would_act_on_and_cuts() -> None:
    quoted = "Row #4: (c\ufffdg\x1b[2J\x07\nnext\tcafé)"
    shown = one_line(quoted)
    assert shown == "Row #4: (c\\ufffdg\\x1b[2J\\x07\\nnext\\tcafé)"
    assert all(c.isprintable() for c in shown)
    assert len(one_line("x" * 1000, most=50)) == 50
