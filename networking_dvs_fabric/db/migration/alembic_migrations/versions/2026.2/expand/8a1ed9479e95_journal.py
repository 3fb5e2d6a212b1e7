"""The persistent journal: dvs_fabric_journal.

Revision ID: 8a1ed9479e95
Revises: 0febb48dc4cd
Create Date: 2026-05-01 00:00:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

# revision identifiers, used by Alembic.
revision = "8a1ed9479e95"
down_revision = "0febb48dc4cd"

# Written out rather than imported from models.py: a migration must keep
# creating the schema of its own time when the models move on.
_TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")
TABLE = "dvs_fabric_journal"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("resource_type", sa.String(36), nullable=False),
        sa.Column("resource_id", sa.String(255), nullable=False),
        sa.Column("operation", sa.String(36), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", _TIMESTAMP, nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("updated_at", _TIMESTAMP, nullable=False),
        sa.Column("claimed_by", sa.String(255), nullable=True),
        sa.Column("claimed_at", _TIMESTAMP, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index("ix_dvs_fabric_journal_state_due", TABLE,
                    ["state", "next_attempt_at"])
    op.create_index("ix_dvs_fabric_journal_resource", TABLE,
                    ["resource_type", "resource_id", "state"])
