"""Whose is a marked object: this deployment's, a legacy one, or another deployment's.

Port groups and logical switches the project makes carry its marker and, since
issue 12, the id of the deployment that made them (``db/deployment.py``).  Parts
that change or delete objects touch only ``OURS``; a ``LEGACY`` object (marker
without an id, made by an earlier version) is adopted - given our id - by the
deployment whose Neutron has its network and left alone by every other one;
``FOREIGN`` objects are reported by the audit, never changed.
"""
from __future__ import annotations

OURS = "ours"
LEGACY = "legacy"
FOREIGN = "foreign"


def owner_of(marked: str | None, ours: str | None) -> str:
    """``marked``: the deployment id in the object's marker (None: legacy marker).

    ``ours`` None is a part built without an identity (a test's or a tool's
    backend): it takes every marked object for its own, as before issue 12.
    """
    if ours is None or marked == ours:
        return OURS
    return LEGACY if marked is None else FOREIGN
