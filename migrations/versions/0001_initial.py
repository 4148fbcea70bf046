"""The fixed tables: folders, runs, problems.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "folders",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("path", sa.Text, nullable=False, unique=True),
        sa.Column("bucket", sa.Text, nullable=False, unique=True),
        sa.Column("table_name", sa.Text, nullable=False, unique=True),
        sa.Column("created_at", sa.Integer, nullable=False),
        sa.Column("bucket_ready_at", sa.Integer),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("started_at", sa.Integer, nullable=False),
        sa.Column("finished_at", sa.Integer),
        sa.Column("hostname", sa.Text, nullable=False),
        sa.Column("mode", sa.Text, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("files_uploaded", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("bytes_uploaded", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("files_deleted", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("errors", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("s3_requests", sa.Integer, nullable=False, server_default=sa.text("0")),
    )
    op.create_table(
        "problems",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("folder", sa.Text, nullable=False),
        sa.Column("operation", sa.Text, nullable=False),
        sa.Column("path", sa.Text),
        sa.Column("message", sa.Text, nullable=False),
    )
    op.create_index("ix_problems_run_id", "problems", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_problems_run_id", table_name="problems")
    op.drop_table("problems")
    op.drop_table("runs")
    op.drop_table("folders")
