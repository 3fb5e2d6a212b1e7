"""SQLAlchemy models of the project's tables, on Neutron's ``BASEV2``.

Being on ``BASEV2`` puts them in Neutron's metadata: Neutron's SQLite test
fixtures and the lab's SQLite ``create_all`` make them as soon as this module
is imported, and the alembic branch (``db/migration``) makes them on MariaDB.
The test ``tests/unit/test_journal_store.py`` checks that both agree.
"""
from __future__ import annotations

from neutron_lib.db import model_base
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

# Microseconds on MariaDB too (a plain DATETIME keeps whole seconds, which would
# make a 200 ms retry delay a 0..1 s one and blur created/claimed times).
TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")

# Journal row states.
PENDING = "pending"
PROCESSING = "processing"
FAILED = "failed"
COMPLETED = "completed"
STATES = (PENDING, PROCESSING, FAILED, COMPLETED)


class JournalEntry(model_base.BASEV2):
    """One recorded intent: "resource X of type T needs reconciling".

    Level-triggered: the row carries no payload, only which resource and an
    operation hint; the worker re-reads Neutron and the backends.  Rows are
    handled in ``id`` order per resource; ``claimed_by`` is
    ``"<host>:<pid>:<random>"`` of the worker holding a ``processing`` row.
    """

    __tablename__ = "dvs_fabric_journal"

    id = sa.Column(sa.Integer, primary_key=True, autoincrement=True)
    resource_type = sa.Column(sa.String(36), nullable=False)
    resource_id = sa.Column(sa.String(255), nullable=False)
    operation = sa.Column(sa.String(36), nullable=False)
    state = sa.Column(sa.String(16), nullable=False)
    attempts = sa.Column(sa.Integer, nullable=False)
    next_attempt_at = sa.Column(TIMESTAMP, nullable=False)
    created_at = sa.Column(TIMESTAMP, nullable=False)
    updated_at = sa.Column(TIMESTAMP, nullable=False)
    claimed_by = sa.Column(sa.String(255), nullable=True)
    claimed_at = sa.Column(TIMESTAMP, nullable=True)
    last_error = sa.Column(sa.Text, nullable=True)

    __table_args__ = (
        # "ready pending rows, oldest first": range on (state, next_attempt_at).
        sa.Index("ix_dvs_fabric_journal_state_due", "state", "next_attempt_at"),
        # "the rows of one resource" (claim's lock and its processing check).
        sa.Index("ix_dvs_fabric_journal_resource",
                 "resource_type", "resource_id", "state"),
        model_base.BASEV2.__table_args__,
    )


class PortLocation(model_base.BASEV2):
    """Where vCenter says a Neutron port's VM is (written by the vCenter watcher).

    ``esxi_host`` is the ESXi host the VM runs on; ``destination_host`` is set when a
    migration-start event named where the VM is going (make before break) and cleared
    when the VM arrives.  One row per port; no row: not seen (powered off, gone).
    """

    __tablename__ = "dvs_fabric_port_locations"

    port_id = sa.Column(sa.String(36), primary_key=True)
    network_id = sa.Column(sa.String(36), nullable=False, index=True)
    vm_moid = sa.Column(sa.String(64), nullable=False, index=True)
    vm_name = sa.Column(sa.String(255), nullable=False)
    esxi_host = sa.Column(sa.String(255), nullable=False)
    mac = sa.Column(sa.String(32), nullable=False)
    port_group = sa.Column(sa.String(255), nullable=True)
    destination_host = sa.Column(sa.String(255), nullable=True)
    seen_at = sa.Column(TIMESTAMP, nullable=False)


class Lease(model_base.BASEV2):
    """A named lease: at most one holder at a time, until ``expires_at`` (UTC)."""

    __tablename__ = "dvs_fabric_leases"

    name = sa.Column(sa.String(255), primary_key=True)
    holder = sa.Column(sa.String(255), nullable=False)
    expires_at = sa.Column(TIMESTAMP, nullable=False)


class Setting(model_base.BASEV2):
    """A value the project keeps for the whole deployment (e.g. its identity)."""

    __tablename__ = "dvs_fabric_settings"

    name = sa.Column(sa.String(64), primary_key=True)
    value = sa.Column(sa.String(255), nullable=False)


OUR_TABLES = frozenset({JournalEntry.__tablename__, PortLocation.__tablename__,
                        Lease.__tablename__, Setting.__tablename__})


class PortGroupGuard(model_base.BASEV2):
    """One row per (network, DVS): what keeps a bind and a port group release apart.

    A release holds the row locked from its "still used?" check to the end of its
    vCenter delete; a bind writes it before answering (``db/pg_guard.py``).
    ``bound_*``: the last bind that answered - its port and that port's revision
    then (a later change of the port, e.g. ML2 committing the binding, supersedes
    it).  ``released_key``: the key of the last port group a release deleted, so
    a bind that was handed it (from a cache) knows to make the port group again.
    """

    __tablename__ = "dvs_fabric_port_group_guards"

    network_id = sa.Column(sa.String(36), primary_key=True)
    dvs_name = sa.Column(sa.String(255), primary_key=True)
    bound_at = sa.Column(TIMESTAMP, nullable=True)
    bound_port_id = sa.Column(sa.String(36), nullable=True)
    bound_revision = sa.Column(sa.BigInteger, nullable=True)
    released_key = sa.Column(sa.String(255), nullable=True)
    released_at = sa.Column(TIMESTAMP, nullable=True)


OUR_TABLES = OUR_TABLES | frozenset({PortGroupGuard.__tablename__})
