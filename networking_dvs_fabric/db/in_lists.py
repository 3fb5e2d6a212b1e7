"""Long ``IN`` lists cut into slices: one statement each, well under SQLite's
bound-parameter limit (MariaDB has none, but one shape serves both)."""
from __future__ import annotations

from typing import Iterator, Sequence

CHUNK = 500                   # ids per IN list


def chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    """``items`` in slices of ``CHUNK`` (one IN list each)."""
    for start in range(0, len(items), CHUNK):
        yield items[start:start + CHUNK]
