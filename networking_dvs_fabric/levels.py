"""Walks over a port binding's levels: which driver bound which segment.

ML2 hands drivers the levels as dicts (``PortContext.binding_levels``); the
database has them as rows (``ml2_port_binding_levels``).  Both are walked here,
so "the level below fabric_hwvtep" means the same thing everywhere.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence, TypeVar

from neutron_lib.plugins.ml2 import api

T = TypeVar("T")


def pairs_below(levels: Sequence[T], driver: str,
                driver_of: Callable[[T], str | None]) -> Iterator[tuple[T, T]]:
    """(level bound by ``driver``, the level right under it), top first; ``levels``
    must be in level order."""
    for upper, lower in zip(levels, levels[1:]):
        if driver_of(upper) == driver:
            yield upper, lower


def _driver_of(level: dict[str, Any]) -> str | None:
    return level.get(api.BOUND_DRIVER)


def bound_by(levels: Sequence[dict[str, Any]] | None, driver: str) -> bool:
    """Did ``driver`` bind one of these (ML2 context) levels?"""
    return any(_driver_of(level) == driver for level in levels or [])


def segment_bound_by(levels: Sequence[dict[str, Any]] | None,
                     driver: str) -> dict[str, Any] | None:
    """The segment ``driver`` bound at its level (None: it bound none)."""
    for level in levels or []:
        if _driver_of(level) == driver:
            return level.get(api.BOUND_SEGMENT)
    return None


def segment_id_below(levels: Sequence[dict[str, Any]] | None, driver: str) -> str | None:
    """The id of the segment bound at the level under ``driver``'s (the dynamic one)."""
    for _, lower in pairs_below(list(levels or []), driver, _driver_of):
        return (lower.get(api.BOUND_SEGMENT) or {}).get(api.ID)
    return None
