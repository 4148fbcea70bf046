"""Alembic environment for state.db.

The tool passes its own connection (``config.attributes["connection"]``).
Developers can run alembic from the repository root against a cache directory:
``alembic -x db=/var/cache/matricula-backup/state.db upgrade head``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from matricula_backup.db.schema import metadata

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
    with engine.begin() as own_connection:
        _run(own_connection)


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
