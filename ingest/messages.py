"""How numbers read in messages (kept free of heavy imports: the CLI uses it before anything loads)."""

from __future__ import annotations


def count(n: int, noun: str) -> str:
    """`1 object`, `0 objects`, `2,000 records`: the noun agrees with its number."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def one_line(text: str, most: int = 300) -> str:
    """`text` fit for a terminal and a log line: control characters, replacement characters and
    other unprintable ones (input quoted in an error, e.g. binary read as CSV) escaped (`\\x07`),
    and cut to `most` characters."""
    out = "".join(c if c.isprintable() and c != "\ufffd" else _escaped(c) for c in text[: most + 1])
    return out if len(out) <= most else out[: most - 1] + "…"


def _escaped(c: str) -> str:
    return "\\ufffd" if c == "\ufffd" else c.encode("unicode_escape").decode("ascii")
