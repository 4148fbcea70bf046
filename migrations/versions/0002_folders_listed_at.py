"""folders.listed_at: remember that a new files table was filled from its bucket.

Before, a run killed between creating a folder's files table (first run,
--reset) and listing its bucket left an empty table that the next run took
as complete, and the whole folder was uploaded again.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("folders") as batch:
        batch.add_column(sa.Column("listed_at", sa.Integer))
    # Tables made by the older version were listed in the run that made them.
    op.execute("UPDATE folders SET listed_at = created_at")


def downgrade() -> None:
    with op.batch_alter_table("folders") as batch:
        batch.drop_column("listed_at")
