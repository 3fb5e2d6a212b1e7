"""The project's own tables (in Neutron's metadata) and their alembic branch."""
