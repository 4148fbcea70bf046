"""Object Lock: each files table records until when its current version is locked,
and ``folders.object_lock_at`` when the bucket was last seen with Object Lock on.

``retain_until`` (unix seconds) is the Object Lock retain-until date this tool
set on the version it uploaded (or extended since); NULL when the upload
carried none. The run selects the versions whose retention is about to lapse
with it (worker.extend_retention), hence the partial index.

The files tables are one per backup folder (db/schema.py), so the migration
loops over ``folders.table_name``.

Revision ID: 0005_object_lock
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_object_lock"
down_revision = "0004"
branch_labels = None
depends_on = None


def _files_tables() -> list[str]:
    bind = op.get_bind()
    return [
        row[0]
        for row in bind.exec_driver_sql(
            "SELECT table_name FROM folders WHERE table_name IN "
            "(SELECT name FROM sqlite_master WHERE type = 'table')"
        )
    ]


def upgrade() -> None:
    op.add_column("folders", sa.Column("object_lock_at", sa.Integer))
    bind = op.get_bind()
    for name in _files_tables():
        bind.exec_driver_sql(f'ALTER TABLE "{name}" ADD COLUMN retain_until INTEGER')
        bind.exec_driver_sql(
            f'CREATE INDEX IF NOT EXISTS "ix_{name}_retain_until" ON "{name}" (retain_until) '
            "WHERE retain_until IS NOT NULL"
        )


def downgrade() -> None:
    bind = op.get_bind()
    for name in _files_tables():
        bind.exec_driver_sql(f'DROP INDEX IF EXISTS "ix_{name}_retain_until"')
        bind.exec_driver_sql(f'ALTER TABLE "{name}" DROP COLUMN retain_until')
    with op.batch_alter_table("folders") as batch:
        batch.drop_column("object_lock_at")
