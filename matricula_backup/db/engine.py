"""Open ``state.db``: PRAGMAs for millions of rows, owner-only file mode, migrations.

A real run opens the database read-write and upgrades it to the newest schema
with alembic (the migrations ship inside the package, so this works from an
ordinary install). A dry run must leave the file untouched: it opens it
read-only, or works on an in-memory copy when the file is missing or older
than this version of the tool.

Alembic (a quarter of a second to import) is loaded only to upgrade: whether
the file is at the newest revision is read with plain SQL from its
``alembic_version`` table, and the revisions this version knows from the
``revision`` lines of the migration files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from matricula_backup import __version__
from matricula_backup.errors import DatabaseError

if TYPE_CHECKING:
    from alembic.config import Config

logger = logging.getLogger(__name__)

DB_NAME = "state.db"


class _MigrationFailed(Exception):
    """Alembic's CommandError (a revision it cannot place), without importing alembic."""


# What opening, reading or upgrading the file can raise; each becomes one
# DatabaseError sentence, never a traceback.
_OPEN_ERRORS = (OSError, SQLAlchemyError, sqlite3.Error, _MigrationFailed)
_REVISION = re.compile(r'^(down_revision|revision)\s*=\s*"([^"]+)"', re.MULTILINE)


def open_state_db(cache_dir: Path) -> Engine:
    """The read-write engine of a real run, at the newest schema."""
    path = cache_dir / DB_NAME
    try:
        _refuse_directory(path)
        if not path.exists():
            # Created owner-only: it lists every file of the archive.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        engine = _engine(f"sqlite+pysqlite:///{path}", wal=True)
        with _disposed_on_error(engine):
            _refuse_newer(engine, path)
            upgrade(engine)
        return engine
    except _OPEN_ERRORS as exc:
        raise DatabaseError(_explain(path, exc)) from None


def open_state_db_for_dry_run(cache_dir: Path) -> Engine:
    """An engine that cannot change ``state.db``; temp tables still work."""
    path = cache_dir / DB_NAME
    try:
        _refuse_directory(path)
        if path.exists():
            engine = _engine(f"sqlite+pysqlite:///file:{path}?mode=ro&uri=true", wal=False)
            with _disposed_on_error(engine):
                _refuse_newer(engine, path)
                current = is_current(engine)
            if current:
                return engine
            engine.dispose()
            logger.info("dry run: %s has an older schema; working on a copy in memory", path)
        memory = _engine("sqlite+pysqlite://", wal=False, single=True)
        with _disposed_on_error(memory):
            _copy_and_upgrade(path, memory)
        return memory
    except _OPEN_ERRORS as exc:
        raise DatabaseError(_explain(path, exc)) from None


def database_error(path: Path, exc: BaseException) -> DatabaseError:
    """A read of ``state.db`` failed after it was opened: the same plain message."""
    return DatabaseError(_explain(path, exc))


@contextlib.contextmanager
def _disposed_on_error(engine: Engine) -> Iterator[None]:
    """An engine that failed to open closes its connections (Python 3.13 warns otherwise)."""
    try:
        yield
    except BaseException:
        engine.dispose()
        raise


def _copy_and_upgrade(path: Path, memory: Engine) -> None:
    """Copy an older ``state.db`` into the in-memory database, then upgrade the copy."""
    if path.exists():
        # closing: sqlite3's own context manager commits but does not close.
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as source:
            raw = memory.raw_connection()
            try:
                source.backup(raw.driver_connection)  # type: ignore[arg-type]
            finally:
                raw.close()
    upgrade(memory)


def migrations_dir() -> Path:
    """The migrations shipped in the package; from a source checkout, ./migrations."""
    try:
        return Path(str(files("matricula_backup.migrations")))
    except ModuleNotFoundError:
        # Running from a source tree that is not installed (python -m in the checkout).
        return Path(__file__).resolve().parents[2] / "migrations"


def alembic_config() -> Config:
    """Alembic settings pointing at the migrations shipped with the package."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


def known_revisions() -> tuple[set[str], str | None]:
    """(every revision of the shipped migrations, the head: the one no other revises).

    Read from the files' ``revision = "..."`` and ``down_revision = "..."`` lines,
    which is all alembic itself reads to chain them.
    """
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in (migrations_dir() / "versions").glob("*.py"):
        for kind, value in _REVISION.findall(path.read_text(encoding="utf-8")):
            (revisions if kind == "revision" else revised).add(value)
    heads = revisions - revised
    return revisions, (heads.pop() if len(heads) == 1 else None)


def stored_revision(engine: Engine) -> str | None:
    """The revision recorded in the database (None: no schema yet)."""
    with engine.connect() as connection:
        try:
            row = connection.exec_driver_sql("SELECT version_num FROM alembic_version").first()
        except OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
    return None if row is None else str(row[0])


def is_current(engine: Engine) -> bool:
    head = known_revisions()[1]
    return head is not None and stored_revision(engine) == head


def _refuse_directory(path: Path) -> None:
    if path.is_dir():
        raise DatabaseError(
            f"{path} is a directory, not the state database; move it aside (the next run "
            "creates the database and adopts what the buckets hold)"
        )


def _refuse_newer(engine: Engine, path: Path) -> None:
    """A schema revision this version does not know was written by a newer version."""
    revisions, head = known_revisions()
    current = stored_revision(engine)
    if current is None or current in revisions:
        return
    raise DatabaseError(
        f"{path} was written by a newer version of matricula-backup (schema revision "
        f"{current[:40]!r}; this version, {__version__}, knows revisions up to "
        f"{head!r}): upgrade matricula-backup on this machine; the file "
        "is left unchanged"
    )


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision (no-op when it is there already)."""
    if is_current(engine):
        return
    from alembic import command
    from alembic.util import CommandError

    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        logger.info("upgrading the state database schema")
        try:
            command.upgrade(config, "head")
        except CommandError as exc:
            raise _MigrationFailed(str(exc)) from None


def _engine(url: str, wal: bool, single: bool = False) -> Engine:
    kwargs: dict[str, Any] = {}
    if single:
        # An in-memory database exists once per connection: keep exactly one.
        kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own transaction handling does not wrap DDL: a migration or a
        # --reset killed half-way would leave half a schema. Turn it off and let
        # every SQLAlchemy transaction start with a real BEGIN (see "begin" below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if wal:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB
        cursor.execute("PRAGMA temp_store=FILE")  # scan tables of millions of rows
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")

    return engine


def _explain(path: Path, exc: BaseException) -> str:
    detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    if "not a database" in detail or "malformed" in detail:
        hint = (
            "the file is damaged. Move it aside and run with --reset to rebuild it "
            "from the folders and the buckets"
        )
    elif "readonly" in detail or "Permission denied" in detail or "unable to open" in detail:
        hint = "check that the cache directory and the file are writable by this user"
    else:
        hint = "see the log for details"
    return f"{path}: cannot open the state database: {detail}; {hint}"
