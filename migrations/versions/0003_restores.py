"""restores: one row per object version a restore asked for or downloaded.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "restores",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("bucket", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("version_id", sa.Text, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("tier", sa.Text),
        sa.Column("requested_at", sa.Integer),
        sa.Column("downloaded_at", sa.Integer),
        sa.Column("target", sa.Text),
        sa.Column("error", sa.Text),
        sa.UniqueConstraint("bucket", "key", "version_id", name="uq_restores_object"),
    )


def downgrade() -> None:
    op.drop_table("restores")
