"""Settings: values kept for the whole deployment (its identity, issue 12).

Revision ID: e5b9a2c8d1f3
Revises: d7a3c1f0b2e4
Create Date: 2026-12-01 00:00:00
"""
from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision = "e5b9a2c8d1f3"
down_revision = "d7a3c1f0b2e4"


def upgrade() -> None:
    op.create_table(
        "dvs_fabric_settings",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(255), nullable=False),
    )
