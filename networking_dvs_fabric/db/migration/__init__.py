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
