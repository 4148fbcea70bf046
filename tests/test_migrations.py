"""The state database schema: alembic migrations, shipped with the package."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from matricula_backup.db.engine import (
    alembic_config,
    is_current,
    migrations_dir,
    open_state_db,
    open_state_db_for_dry_run,
)
from matricula_backup.db.schema import metadata


def test_there_is_one_head() -> None:
    assert len(ScriptDirectory.from_config(alembic_config()).get_heads()) == 1


def test_migrations_ship_inside_the_installed_package() -> None:
    assert (migrations_dir() / "env.py").is_file()
    assert any((migrations_dir() / "versions").glob("0001_*.py"))


def test_upgrade_creates_the_tables_of_the_metadata(tmp_path: Path) -> None:
    engine = open_state_db(tmp_path)
    try:
        assert is_current(engine)
        found = inspect(engine)
        assert set(metadata.tables) <= set(found.get_table_names())
        for table in metadata.tables.values():
            columns = {c["name"] for c in found.get_columns(table.name)}
            assert columns == {c.name for c in table.columns}, table.name
    finally:
        engine.dispose()
    assert (tmp_path / "state.db").stat().st_mode & 0o077 == 0  # owner only
    with closing(sqlite3.connect(tmp_path / "state.db")) as conn, conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_downgrade_and_upgrade_again(tmp_path: Path) -> None:
    from alembic import command

    engine = open_state_db(tmp_path)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert not is_current(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    assert is_current(engine)
    engine.dispose()


def test_dry_run_never_creates_or_changes_the_file(tmp_path: Path) -> None:
    engine = open_state_db_for_dry_run(tmp_path)
    assert is_current(engine)
    engine.dispose()
    assert not (tmp_path / "state.db").exists()


def test_a_damaged_database_is_a_clear_error(tmp_path: Path) -> None:
    import pytest

    from matricula_backup.errors import DatabaseError

    (tmp_path / "state.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DatabaseError, match="damaged. Move it aside"):
        open_state_db(tmp_path)


def test_a_migration_that_fails_half_way_leaves_nothing_behind(tmp_path: Path) -> None:
    """As if killed half-way: DDL runs in one transaction, so the next run starts clean."""
    import pytest

    from matricula_backup.errors import DatabaseError

    with closing(sqlite3.connect(tmp_path / "state.db")) as conn, conn:
        conn.execute("CREATE TABLE problems (x)")  # makes the third CREATE TABLE fail
    with pytest.raises(DatabaseError):
        open_state_db(tmp_path)
    with closing(sqlite3.connect(tmp_path / "state.db")) as conn, conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert tables == {"problems"}  # folders and runs were rolled back, no alembic_version


def test_upgrade_from_0001_keeps_the_folders_and_marks_their_tables_listed(
    tmp_path: Path,
) -> None:
    from alembic import command

    engine = open_state_db(tmp_path)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0001")
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO folders (path, bucket, table_name, created_at) "
            "VALUES ('/images/a', 'a-12345678', 'files_a_12345678', 1700000000)"
        )
    engine.dispose()

    engine = open_state_db(tmp_path)  # upgrades to head, as a run does
    with engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT path, bucket, listed_at FROM folders").all()
    engine.dispose()
    assert rows == [("/images/a", "a-12345678", 1700000000)]


def test_upgrade_to_0005_adds_retain_until_to_every_files_table(tmp_path: Path) -> None:
    from alembic import command

    engine = open_state_db(tmp_path)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0004")
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO folders (path, bucket, table_name, created_at) VALUES "
            "('/images/a', 'a-12345678', 'files_a_12345678', 1700000000), "
            "('/images/b', 'b-12345678', 'files_b_12345678', 1700000000)"  # table dropped
        )
        connection.exec_driver_sql(  # a files table as version 0004 created it
            'CREATE TABLE "files_a_12345678" (path TEXT PRIMARY KEY, size INTEGER NOT NULL, '
            "mtime_ns INTEGER NOT NULL, state TEXT NOT NULL, version_id TEXT, sha256 BLOB, "
            "uploaded_at INTEGER, error TEXT) WITHOUT ROWID"
        )
        connection.exec_driver_sql(
            "INSERT INTO files_a_12345678 VALUES ('x.tif', 1, 2, 'backed_up', 'v1', NULL, 3, NULL)"
        )
    engine.dispose()

    engine = open_state_db(tmp_path)  # upgrades to head, as a run does
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT path, version_id, retain_until FROM files_a_12345678"
        ).all()
        indexes = connection.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'files_a_12345678'"
        ).all()
    engine.dispose()
    assert rows == [("x.tif", "v1", None)]
    assert ("ix_files_a_12345678_retain_until",) in indexes
