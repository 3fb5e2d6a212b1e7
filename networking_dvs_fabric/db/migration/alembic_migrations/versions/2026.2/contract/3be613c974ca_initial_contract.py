"""Initial revision of the contract branch (removals, servers stopped).

Revision ID: 3be613c974ca
Revises: 61c1dad795d6
Create Date: 2026-05-01 00:00:00
"""
from neutron.db.migration import cli

# revision identifiers, used by Alembic.
revision = "3be613c974ca"
down_revision = "61c1dad795d6"
branch_labels = (cli.CONTRACT_BRANCH,)


def upgrade() -> None:
    pass
