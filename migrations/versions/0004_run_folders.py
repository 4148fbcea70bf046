"""run_folders: what each run did per backup folder (matricula-backup history).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_folders",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("folder", sa.Text, nullable=False),
        sa.Column("bucket", sa.Text, nullable=False),
        sa.Column("started_at", sa.Integer),
        sa.Column("finished_at", sa.Integer),
        sa.Column("files_seen", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("bytes_seen", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("files_uploaded", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("bytes_uploaded", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("files_deleted", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("files_same_content", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("files_excluded", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("errors", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("s3_requests", sa.Integer, nullable=False, server_default=sa.text("0")),
    )
    op.create_index("ix_run_folders_run_id", "run_folders", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_run_folders_run_id", table_name="run_folders")
    op.drop_table("run_folders")
