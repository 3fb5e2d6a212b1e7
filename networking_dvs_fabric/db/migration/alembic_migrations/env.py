"""Alembic environment of networking-dvs-fabric, run by neutron-db-manage.

neutron-db-manage hands us ``config.neutron_config`` (its oslo.config with
``[database] connection``) and, in tests, an open connection in
``config.attributes['connection']``.  What differs from Neutron's own env.py:

* our own version table, so Neutron's ``alembic_version`` is never touched;
* autogenerate compares only the project's tables (the metadata is Neutron's
  ``BASEV2``, shared with every Neutron table).
"""
from __future__ import annotations

from alembic import context
from neutron.db.migration.connection import DBConnection
from neutron_lib.db import model_base
from oslo_config import cfg
import sqlalchemy as sa
from sqlalchemy import event

from networking_dvs_fabric.db import migration
from networking_dvs_fabric.db import models

VERSION_TABLE = migration.VERSION_TABLE
OUR_TABLES = models.OUR_TABLES

config = context.config
neutron_config = config.neutron_config  # type: ignore[attr-defined]
target_metadata = model_base.BASEV2.metadata
MYSQL_ENGINE: str | None = None


def _set_mysql_engine() -> None:
    global MYSQL_ENGINE
    try:
        engine = neutron_config.command.mysql_engine
    except cfg.NoSuchOptError:
        engine = None
    MYSQL_ENGINE = engine or model_base.BASEV2.__table_args__["mysql_engine"]


@event.listens_for(sa.Table, "after_parent_attach")
def _set_storage_engine(target, parent) -> None:
    # Tables that migrations create with op.create_table get the engine too.
    if MYSQL_ENGINE:
        target.kwargs["mysql_engine"] = MYSQL_ENGINE


def include_object(object_, name, type_, reflected, compare_to) -> bool:
    """Autogenerate looks at our tables only, never at Neutron's."""
    if type_ == "table":
        return name in OUR_TABLES
    return True


def run_migrations_offline() -> None:
    _set_mysql_engine()
    kwargs = {"include_object": include_object, "version_table": VERSION_TABLE}
    if neutron_config.database.connection:
        kwargs["url"] = neutron_config.database.connection
    else:
        kwargs["dialect_name"] = neutron_config.database.engine
    context.configure(**kwargs)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    _set_mysql_engine()
    connection = config.attributes.get("connection")
    with DBConnection(neutron_config.database.connection, connection) as conn:
        context.configure(connection=conn, target_metadata=target_metadata,
                          include_object=include_object, version_table=VERSION_TABLE)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
