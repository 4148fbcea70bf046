"""Drop the partial index ``ix_<table>_not_backed_up`` of every files table.

No query used it (the queues join the scan with the files table's primary key,
issue 12), and every change of a row's state wrote to it.

The files tables are one per backup folder (db/schema.py), so the migration
loops over ``folders.table_name``.

Revision ID: 0008_drop_unused_index
Revises: 0007_fixity
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0008_drop_unused_index"
down_revision = "0007_fixity"
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
    bind = op.get_bind()
    for name in _files_tables():
        bind.exec_driver_sql(f'DROP INDEX IF EXISTS "ix_{name}_not_backed_up"')


def downgrade() -> None:
    bind = op.get_bind()
    for name in _files_tables():
        bind.exec_driver_sql(
            f'CREATE INDEX IF NOT EXISTS "ix_{name}_not_backed_up" ON "{name}" (state) '
            "WHERE state != 'backed_up'"
        )
