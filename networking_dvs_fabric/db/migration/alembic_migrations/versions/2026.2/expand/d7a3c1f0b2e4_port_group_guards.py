"""Port group guards: one row per (network, DVS) that keeps binds and releases apart.

Revision ID: d7a3c1f0b2e4
Revises: c41d7e2a9b10
Create Date: 2026-12-01 00:00:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

# revision identifiers, used by Alembic.
revision = "d7a3c1f0b2e4"
down_revision = "c41d7e2a9b10"

# Written out rather than imported from models.py (a migration keeps its own time).
_TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")


def upgrade() -> None:
    op.create_table(
        "dvs_fabric_port_group_guards",
        sa.Column("network_id", sa.String(36), primary_key=True),
        sa.Column("dvs_name", sa.String(255), primary_key=True),
        sa.Column("bound_at", _TIMESTAMP, nullable=True),
        sa.Column("bound_port_id", sa.String(36), nullable=True),
        sa.Column("bound_revision", sa.BigInteger, nullable=True),
        sa.Column("released_key", sa.String(255), nullable=True),
        sa.Column("released_at", _TIMESTAMP, nullable=True),
    )
