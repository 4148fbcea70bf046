"""Alembic environment for state.db.

The tool passes its own connection (``config.attributes["connection"]``).
Developers can run alembic from the repository root against a cache directory:
``alembic -x db=/var/cache/matricula-backup/state.db upgrade head``.

The per-folder ``files_*`` tables are made at run time from a template
(``db.schema.files_table_ddl``), not from the metadata: ``include_name`` leaves
them (and their indexes) out of ``alembic revision --autogenerate``, which would
otherwise propose dropping every one. tests/test_migrations.py compares them
with their template instead.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from matricula_backup.db.schema import is_files_table, metadata

config = context.config


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    db = context.get_x_argument(as_dictionary=True).get("db")
    if not db:
        raise SystemExit("give the database: alembic -x db=/path/to/state.db upgrade head")
    engine = create_engine(f"sqlite+pysqlite:///{db}")
    try:
        with engine.begin() as own_connection:
            _run(own_connection)
    finally:
        engine.dispose()  # the pool's connection is closed, not left to the garbage collector


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Autogenerate compares the fixed tables only; files tables follow their template."""
    return not (type_ == "table" and name is not None and is_files_table(name))


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=metadata,
        include_name=include_name,
        render_as_batch=True,  # SQLite alters tables by copying them
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
