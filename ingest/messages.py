"""How numbers read in messages (kept free of heavy imports: the CLI uses it before anything loads)."""

from __future__ import annotations


def count(n: int, noun: str) -> str:
    """`1 object`, `0 objects`, `2,000 records`: the noun agrees with its number."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"
