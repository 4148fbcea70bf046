"""Fixity: the log of every check (upload, scrub, cloud check, drill), scrub state,
held files and restore drills.

Revision ID: 0007_fixity
Revises: 0006_mass_change
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_fixity"
down_revision = "0006_mass_change"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fixity_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.Integer, nullable=False),
        sa.Column("folder", sa.Text, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("copy", sa.Text, nullable=False),
        sa.Column("result", sa.Text, nullable=False),
        sa.Column("version_id", sa.Text),
        sa.Column("detail", sa.Text),
    )
    op.create_index("ix_fixity_events_file", "fixity_events", ["folder", "path", "at"])
    op.create_index("ix_fixity_events_kind", "fixity_events", ["folder", "kind", "at"])
    op.create_table(
        "scrub_checks",
        sa.Column("folder", sa.Text, primary_key=True),
        sa.Column("path", sa.Text, primary_key=True),
        sa.Column("checked_at", sa.Integer, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "fixity_holds",
        sa.Column("folder", sa.Text, primary_key=True),
        sa.Column("path", sa.Text, primary_key=True),
        sa.Column("good_sha256", sa.LargeBinary, nullable=False),
        sa.Column("good_version_id", sa.Text),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("mtime_ns", sa.Integer, nullable=False),
        sa.Column("verified_at", sa.Integer),
        sa.Column("found_at", sa.Integer, nullable=False),
        sa.Column("found_sha256", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "drills",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("started_at", sa.Integer, nullable=False),
        sa.Column("finished_at", sa.Integer),
        sa.Column("tier", sa.Text, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
    )
    op.create_table(
        "drill_objects",
        sa.Column(
            "drill_id", sa.Integer, sa.ForeignKey("drills.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("folder", sa.Text, primary_key=True),
        sa.Column("path", sa.Text, primary_key=True),
        sa.Column("bucket", sa.Text, nullable=False),
        sa.Column("version_id", sa.Text, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("sha256", sa.LargeBinary),
        sa.Column("mtime_ns", sa.Integer, nullable=False),
        sa.Column("requested_at", sa.Integer),
        sa.Column("checked_at", sa.Integer),
        sa.Column("result", sa.Text),
        sa.Column("detail", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("drill_objects")
    op.drop_table("drills")
    op.drop_table("fixity_holds")
    op.drop_table("scrub_checks")
    op.drop_index("ix_fixity_events_kind", "fixity_events")
    op.drop_index("ix_fixity_events_file", "fixity_events")
    op.drop_table("fixity_events")
