"""The state database schema: alembic migrations, shipped with the package."""

from __future__ import annotations

import argparse
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData, Table, create_engine, inspect

from matricula_backup.db.engine import (
    alembic_config,
    is_current,
    migrations_dir,
    open_state_db,
    open_state_db_for_dry_run,
)
from matricula_backup.db.schema import files_table_ddl, is_files_table, metadata


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


# --- The upgraded schema is the schema of the models -----------------------------------------

_FOLDER_ROWS = (
    "INSERT INTO folders (path, bucket, table_name, created_at) VALUES "
    "('/images/a', 'a-12345678', 'files_a_12345678', 1700000000)"
)


def _expected_metadata(connection: Connection) -> MetaData:
    """The models: the fixed tables, and each files table as its template would make it.

    The template is plain DDL (``files_table_ddl``), so it is run on an empty
    in-memory database under the same name and reflected from there.
    """
    expected = MetaData()
    for table in metadata.tables.values():
        table.to_metadata(expected)
    names = [row[0] for row in connection.exec_driver_sql("SELECT table_name FROM folders")]
    template = create_engine("sqlite+pysqlite://")
    try:
        with template.begin() as made:
            for name in names:
                for statement in files_table_ddl(name):
                    made.exec_driver_sql(statement)
            for name in names:
                Table(name, expected, autoload_with=made)
    finally:
        template.dispose()
    return expected


def _differences(connection: Connection) -> list[Any]:
    """What autogenerate would change in this database to reach the models."""
    expected = _expected_metadata(connection)
    found = set(inspect(connection).get_table_names())
    context = MigrationContext.configure(
        connection,
        opts={
            "compare_type": True,
            "compare_server_default": True,
            # alembic's own table is not a model; any other table is (files tables too).
            "include_name": lambda name, type_, _parents: (
                not (type_ == "table" and name == "alembic_version")
            ),
        },
    )
    diff = compare_metadata(context, expected)
    diff.extend(_partial_index_differences(connection, expected, found))
    return diff


def _index_sql(connection: Connection, table: str) -> dict[str, str]:
    rows = connection.exec_driver_sql(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
        "AND sql IS NOT NULL",
        (table,),
    ).all()
    return {name: " ".join(sql.replace("IF NOT EXISTS ", "").split()) for name, sql in rows}


def _partial_index_differences(
    connection: Connection, expected: MetaData, found: set[str]
) -> list[tuple[str, str, str | None, str | None]]:
    """compare_metadata does not compare an index's WHERE: compare the files tables' SQL."""
    template = create_engine("sqlite+pysqlite://")
    differences = []
    try:
        with template.begin() as made:
            for name in sorted(n for n in expected.tables if is_files_table(n) and n in found):
                for statement in files_table_ddl(name):
                    made.exec_driver_sql(statement)
                want, have = _index_sql(made, name), _index_sql(connection, name)
                for index in sorted(set(want) | set(have)):
                    if want.get(index) != have.get(index):
                        differences.append(("index sql", index, want.get(index), have.get(index)))
    finally:
        template.dispose()
    return differences


def test_the_upgraded_schema_is_the_models(tmp_path: Path) -> None:
    """Every migration from an empty file to head gives exactly the models' tables.

    A new migration passes only with the matching change in db/schema.py (or in the
    files table template) and the other way round.
    """
    engine = open_state_db(tmp_path)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(_FOLDER_ROWS)
            for statement in files_table_ddl("files_a_12345678"):
                connection.exec_driver_sql(statement)
        with engine.connect() as connection:
            assert _differences(connection) == []
    finally:
        engine.dispose()


def test_the_comparison_sees_a_model_the_migrations_do_not_make(tmp_path: Path) -> None:
    """The check above is not blind: a column, an index or a files table change shows."""
    engine = open_state_db(tmp_path)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(_FOLDER_ROWS)
            for statement in files_table_ddl("files_a_12345678"):
                connection.exec_driver_sql(statement)
            connection.exec_driver_sql('DROP INDEX "ix_files_a_12345678_retain_until"')
            connection.exec_driver_sql(
                'CREATE INDEX "ix_files_a_12345678_retain_until" ON "files_a_12345678" '
                "(retain_until)"
            )
            connection.exec_driver_sql("ALTER TABLE runs ADD COLUMN surplus INTEGER")
            connection.exec_driver_sql('ALTER TABLE "files_a_12345678" ADD COLUMN extra TEXT')
            connection.exec_driver_sql("DROP INDEX ix_run_folders_run_id")
        with engine.connect() as connection:
            shown = repr(_differences(connection))
    finally:
        engine.dispose()
    assert "surplus" in shown and "extra" in shown and "ix_run_folders_run_id" in shown
    assert "ix_files_a_12345678_retain_until" in shown  # the WHERE went missing


def test_autogenerate_leaves_the_files_tables_alone(tmp_path: Path) -> None:
    """migrations/env.py's include_name: no revision proposes dropping a folder's table."""
    from alembic import command

    engine = open_state_db(tmp_path)
    with engine.begin() as connection:
        connection.exec_driver_sql(_FOLDER_ROWS)
        for statement in files_table_ddl("files_a_12345678"):
            connection.exec_driver_sql(statement)
    engine.dispose()
    config = alembic_config()
    versions = tmp_path / "versions"
    versions.mkdir()
    config.set_main_option("path_separator", "os")
    config.set_main_option(
        "version_locations", os.pathsep.join([str(migrations_dir() / "versions"), str(versions)])
    )
    config.cmd_opts = argparse.Namespace(x=[f"db={tmp_path / 'state.db'}"])
    command.revision(config, "probe", autogenerate=True, version_path=str(versions))
    (written,) = versions.glob("*_probe.py")
    text = written.read_text()
    assert "files_a_12345678" not in text
    assert "op.drop_table" not in text and "op.create_table" not in text


# --- Downgrades: every step down and up again keeps the rows --------------------------------


def _revisions() -> list[str]:
    """Every revision, oldest first."""
    script = ScriptDirectory.from_config(alembic_config())
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def _fill(connection: Connection) -> None:
    connection.exec_driver_sql(_FOLDER_ROWS)
    for statement in files_table_ddl("files_a_12345678"):
        connection.exec_driver_sql(statement)
    connection.exec_driver_sql(
        "INSERT INTO files_a_12345678 (path, size, mtime_ns, state, version_id) "
        "VALUES ('x.tif', 1, 2, 'backed_up', 'v1')"
    )
    connection.exec_driver_sql(
        "INSERT INTO runs (id, started_at, hostname, mode, outcome) "
        "VALUES (1, 1700000000, 'h', 'backup', 'ok')"
    )
    connection.exec_driver_sql(
        "INSERT INTO problems (run_id, folder, operation, path, message) "
        "VALUES (1, '/images/a', 'scan', 'y.tif', 'Permission denied')"
    )


_KEPT = {  # rows in tables that every revision has: a downgrade must not lose them
    "folders": "SELECT path, bucket, table_name, created_at FROM folders",
    "files": "SELECT path, size, mtime_ns, state, version_id FROM files_a_12345678",
    "runs": "SELECT id, started_at, hostname, mode, outcome FROM runs",
    "problems": "SELECT run_id, folder, operation, path, message FROM problems",
}


@pytest.mark.parametrize("target", _revisions()[:-1])
def test_down_to_each_revision_and_up_again_keeps_the_rows(tmp_path: Path, target: str) -> None:
    from alembic import command

    engine = open_state_db(tmp_path)
    config = alembic_config()
    try:
        with engine.begin() as connection:
            _fill(connection)
            before = {name: connection.exec_driver_sql(sql).all() for name, sql in _KEPT.items()}
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, target)
        with engine.begin() as connection:
            assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").all() == [
                (target,)
            ]
            down = {name: connection.exec_driver_sql(sql).all() for name, sql in _KEPT.items()}
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        with engine.connect() as connection:
            after = {name: connection.exec_driver_sql(sql).all() for name, sql in _KEPT.items()}
            assert _differences(connection) == []
    finally:
        engine.dispose()
    assert before == down == after
