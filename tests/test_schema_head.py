"""Whether state.db is at the newest schema is read without alembic (start-up time):
the plain reading must agree with alembic's, and migration 0008 drops the unused index."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory

from matricula_backup.db.engine import (
    alembic_config,
    is_current,
    known_revisions,
    open_state_db,
    stored_revision,
)
from matricula_backup.db.schema import files_table_ddl


def test_the_head_read_from_the_files_is_alembics() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    revisions, head = known_revisions()
    assert head == script.get_current_head()
    assert revisions == {revision.revision for revision in script.walk_revisions()}


def test_an_older_schema_is_not_current_and_is_upgraded(tmp_path: Path) -> None:
    engine = open_state_db(tmp_path)  # at head
    try:
        assert is_current(engine)
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO folders (path, bucket, table_name, created_at) "
                "VALUES ('/x', 'b-1', 'files_b_1', 0)"
            )
            for statement in files_table_ddl("files_b_1"):
                connection.exec_driver_sql(statement)
            connection.exec_driver_sql(
                'CREATE INDEX "ix_files_b_1_not_backed_up" ON "files_b_1" (state) '
                "WHERE state != 'backed_up'"
            )
            connection.exec_driver_sql("UPDATE alembic_version SET version_num = '0007_fixity'")
        assert not is_current(engine)
        assert stored_revision(engine) == "0007_fixity"
    finally:
        engine.dispose()
    engine = open_state_db(tmp_path)  # upgrades, as a run does
    engine.dispose()
    with closing(sqlite3.connect(tmp_path / "state.db")) as db:
        indexes = {
            row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
    assert "ix_files_b_1_not_backed_up" not in indexes
    assert "ix_files_b_1_retain_until" in indexes


def test_downgrade_of_0008_puts_the_index_back(tmp_path: Path) -> None:
    engine = open_state_db(tmp_path)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO folders (path, bucket, table_name, created_at) "
                "VALUES ('/x', 'b-1', 'files_b_1', 0)"
            )
            for statement in files_table_ddl("files_b_1"):
                connection.exec_driver_sql(statement)
        config = alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0007_fixity")
        assert stored_revision(engine) == "0007_fixity"
    finally:
        engine.dispose()
    with closing(sqlite3.connect(tmp_path / "state.db")) as db:
        indexes = {
            row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
    assert "ix_files_b_1_not_backed_up" in indexes


def test_a_new_file_has_no_schema(tmp_path: Path) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        assert stored_revision(engine) is None
        assert not is_current(engine)
    finally:
        engine.dispose()
