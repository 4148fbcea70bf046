"""A state.db this version cannot use: every command exits 2 with one plain sentence.

A newer schema (an alembic revision this version does not know), a file that is
not a database, a directory in its place and a file this user may not read: no
traceback, no "internal error", and the file is left as it was.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from matricula_backup.db.engine import open_state_db
from tests.conftest import CLI, Setup
from tests.test_awkward_trees import NOBODY, SETPRIV, as_nobody  # noqa: F401 (a fixture)

COMMANDS = [
    ("backup",),
    ("backup", "--dry-run"),
    ("restore",),
    ("restore", "--dry-run"),
    ("verify",),
    ("status",),
    ("history",),
    ("check-config",),
    ("forget", "GONE"),
]


def _args(command: tuple[str, ...], setup: Setup) -> list[str]:
    name, *rest = command
    args = [] if name == "backup" else [name]
    return args + [str(setup.images / "gone") if arg == "GONE" else arg for arg in rest]


def _database(setup: Setup, httpserver: Any) -> Path:
    """A config with a webhook and a state.db at this version's schema (as a run leaves it)."""
    setup.file("Band/a.tif")
    httpserver.expect_request("/hook").respond_with_data("", status=202)
    setup.write_config(
        backup__folders=[str(setup.images / "Band")],
        notification__webhook=httpserver.url_for("/hook"),
    )
    open_state_db(setup.cache).dispose()
    return setup.cache / "state.db"


def _assert_plain_exit_2(result: Any, expected: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
    assert len(errors) == 1, result.stderr
    assert expected in errors[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert "internal error" not in result.stderr + result.stdout


def _cards(httpserver: Any) -> list[str]:
    return [json.dumps(request.get_json()) for request, _response in httpserver.log]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_a_newer_schema_is_refused_by_every_command(
    setup: Setup, httpserver: Any, command: tuple[str, ...]
) -> None:
    database = _database(setup, httpserver)
    with closing(sqlite3.connect(database)) as conn, conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099_from_the_future'")
    before = database.read_bytes()

    result = setup.run(*_args(command, setup))

    _assert_plain_exit_2(result, "was written by a newer version of matricula-backup")
    assert "'0099_from_the_future'" in result.stderr
    assert database.read_bytes() == before
    for card in _cards(httpserver):  # a real backup tells Teams why it could not run
        assert "internal error" not in card and "newer version" in card


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_a_file_that_is_not_a_database_is_refused_by_every_command(
    setup: Setup, httpserver: Any, command: tuple[str, ...]
) -> None:
    database = _database(setup, httpserver)
    database.write_bytes(b"\x00garbage, not SQLite\xff" * 500)
    for suffix in ("-wal", "-shm"):
        database.with_name(database.name + suffix).unlink(missing_ok=True)

    result = setup.run(*_args(command, setup))

    _assert_plain_exit_2(result, "cannot open the state database: file is not a database")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_a_directory_in_place_of_the_database_is_refused_by_every_command(
    setup: Setup, command: tuple[str, ...]
) -> None:
    setup.file("Band/a.tif")
    setup.write_config(backup__folders=[str(setup.images / "Band")])
    (setup.cache / "state.db").mkdir()

    result = setup.run(*_args(command, setup))

    _assert_plain_exit_2(result, "state.db is a directory, not the state database")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
@pytest.mark.usefixtures("as_nobody")  # makes the path to tmp_path traversable for nobody
def test_a_database_this_user_cannot_read_is_refused_by_every_command(
    setup: Setup,
    httpserver: Any,
    command: tuple[str, ...],
) -> None:
    database = _database(setup, httpserver)
    # The cache directory belongs to nobody (as_nobody made the path to it
    # traversable), the database stays root's, mode 600.
    for path in setup.cache.iterdir():
        os.chown(path, NOBODY, NOBODY)
    os.chown(setup.cache, NOBODY, NOBODY)
    os.chown(database, 0, 0)
    database.chmod(0o600)
    args = _args(command, setup)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    result = subprocess.run(
        [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", CLI]
        + args[:1]
        + ["--cache", str(setup.cache)]
        + args[1:],
        capture_output=True,
        text=True,
        env=env | {"HOME": str(setup.cache)},
        cwd=setup.cache,
        timeout=300,
    )

    _assert_plain_exit_2(result, "cannot open the state database")
