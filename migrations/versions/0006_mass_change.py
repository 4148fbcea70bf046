"""run_folders.files_changed: the rolling 7-day count of the mass change guard.

Revision ID: 0006_mass_change
Revises: 0005_object_lock
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_mass_change"
down_revision = "0005_object_lock"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("run_folders") as batch:
        batch.add_column(
            sa.Column("files_changed", sa.Integer, nullable=False, server_default=sa.text("0"))
        )


def downgrade() -> None:
    with op.batch_alter_table("run_folders") as batch:
        batch.drop_column("files_changed")
