"""Initial revision of the expand branch (additive changes).

Revision ID: 0febb48dc4cd
Revises: 61c1dad795d6
Create Date: 2026-05-01 00:00:00
"""
from neutron.db.migration import cli

# revision identifiers, used by Alembic.
revision = "0febb48dc4cd"
down_revision = "61c1dad795d6"
branch_labels = (cli.EXPAND_BRANCH,)


def upgrade() -> None:
    pass
