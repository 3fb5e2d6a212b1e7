"""The low-level names every journal store module shares: table, states, values.

``Journal`` (the table), its row states, ``Entry`` (one claimed resource), ``utcnow``
and ``parse_worker_id``.  They live here, below ``store``, ``claiming`` and
``maintenance``, so that those import them without importing each other in a circle;
``store`` offers them all again as the public API.
"""
from __future__ import annotations

import dataclasses
import datetime

from oslo_utils import timeutils

from networking_dvs_fabric.db import models

Journal = models.JournalEntry
PENDING, PROCESSING, FAILED, COMPLETED = (models.PENDING, models.PROCESSING,
                                          models.FAILED, models.COMPLETED)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One claimed resource: all its ready pending rows, oldest first.

    ``attempts`` is the highest attempt count of the rows (0 the first time);
    ``worker_id`` is who holds the claim: ``complete``/``retry_later``/``fail``
    only touch the rows while that worker still holds them.
    """

    resource_type: str
    resource_id: str
    row_ids: tuple[int, ...]
    operations: tuple[str, ...]
    attempts: int
    first_created_at: datetime.datetime
    worker_id: str = ""


def utcnow() -> datetime.datetime:
    """Now as the journal stores it: naive UTC."""
    return timeutils.utcnow()


def parse_worker_id(worker_id: str) -> tuple[str, int] | None:
    """(host, pid) of a ``store.make_worker_id`` value; None if it is not one."""
    parts = worker_id.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])
