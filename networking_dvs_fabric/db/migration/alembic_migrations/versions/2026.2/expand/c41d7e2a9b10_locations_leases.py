"""Port locations (the vCenter watcher) and leases (one watcher per vCenter).

Revision ID: c41d7e2a9b10
Revises: 8a1ed9479e95
Create Date: 2026-11-21 00:00:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

# revision identifiers, used by Alembic.
revision = "c41d7e2a9b10"
down_revision = "8a1ed9479e95"

# Written out rather than imported from models.py (a migration keeps its own time).
_TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")


def upgrade() -> None:
    op.create_table(
        "dvs_fabric_port_locations",
        sa.Column("port_id", sa.String(36), primary_key=True),
        sa.Column("network_id", sa.String(36), nullable=False),
        sa.Column("vm_moid", sa.String(64), nullable=False),
        sa.Column("vm_name", sa.String(255), nullable=False),
        sa.Column("esxi_host", sa.String(255), nullable=False),
        sa.Column("mac", sa.String(32), nullable=False),
        sa.Column("port_group", sa.String(255), nullable=True),
        sa.Column("destination_host", sa.String(255), nullable=True),
        sa.Column("seen_at", _TIMESTAMP, nullable=False),
    )
    op.create_index("ix_dvs_fabric_port_locations_network_id", "dvs_fabric_port_locations",
                    ["network_id"])
    op.create_index("ix_dvs_fabric_port_locations_vm_moid", "dvs_fabric_port_locations",
                    ["vm_moid"])
    op.create_table(
        "dvs_fabric_leases",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("expires_at", _TIMESTAMP, nullable=False),
    )
