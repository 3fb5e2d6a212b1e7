"""Start of networking-dvs-fabric's migrations: where expand and contract fork.

Revision ID: 61c1dad795d6
Revises: None
Create Date: 2026-05-01 00:00:00
"""

# revision identifiers, used by Alembic.
revision = "61c1dad795d6"
down_revision = None


def upgrade() -> None:
    pass
