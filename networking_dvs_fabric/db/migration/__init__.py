"""networking-dvs-fabric's alembic branch for ``neutron-db-manage``.

The ``neutron.db.alembic_migrations`` entry point names
``networking_dvs_fabric.db.migration:alembic_migrations``; neutron-db-manage
turns that into the script location
``networking_dvs_fabric/db/migration/alembic_migrations`` and looks for
revisions in its ``versions/`` and ``versions/<release>/{expand,contract}``::

    neutron-db-manage --config-file neutron.conf \\
        --subproject networking-dvs-fabric upgrade head

``upgrade heads`` without ``--subproject`` runs Neutron first, then us.
"""
from __future__ import annotations

import os

import sqlalchemy as sa

VERSION_TABLE = "alembic_version_dvs_fabric"
VERSIONS_DIR = os.path.join(os.path.dirname(__file__), "alembic_migrations", "versions")


def head_revisions() -> set[str]:
    """The expand and contract heads, as the EXPAND_HEAD/CONTRACT_HEAD files say."""
    heads = set()
    for name in ("EXPAND_HEAD", "CONTRACT_HEAD"):
        with open(os.path.join(VERSIONS_DIR, name)) as f:
            heads.add(f.read().strip())
    return heads


def schema_diff(connection: sa.Connection) -> list:
    """alembic's differences between a database and the project's models.

    Only the project's tables are compared (Neutron's are Neutron's business);
    an empty list means the database has exactly the models' schema.
    """
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from networking_dvs_fabric.db import models

    metadata = sa.MetaData()
    ours = set(models.OUR_TABLES)
    for table in ours:
        models.JournalEntry.metadata.tables[table].to_metadata(metadata)

    def include(object_, name, type_, reflected, compare_to) -> bool:
        return type_ != "table" or name in ours

    context = MigrationContext.configure(connection, opts={
        "include_object": include, "compare_type": True,
        "compare_server_default": True})
    return compare_metadata(context, metadata)
