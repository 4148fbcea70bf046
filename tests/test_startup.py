"""Start-up stays cheap: `--version` and `--help` load none of the heavy libraries.

Issue 13 (start-up): cron and monitoring call the command often, and a no-change
run of a small folder should cost well under a second. cli.py imports SQLAlchemy,
boto3, httpx, pydantic and rich only inside the commands that need them; this test
makes a top-level import of one of them fail loudly.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.conftest import CLI

HEAVY = {"boto3", "botocore", "sqlalchemy", "httpx", "pydantic", "rich", "alembic", "awscrt"}


def _imported_modules(*args: str) -> set[str]:
    """The modules the real command imports, from Python's own -X importtime trace."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    result = subprocess.run([CLI, *args], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    names = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", result.stderr, re.MULTILINE)
    assert "matricula_backup.cli" in names  # the trace is there and is read right
    return set(names)


@pytest.mark.parametrize("args", [["--version"], ["--help"]])
def test_version_and_help_import_no_heavy_library(args: list[str]) -> None:
    loaded = {name.split(".")[0] for name in _imported_modules(*args)}

    assert loaded & HEAVY == set(), f"{' '.join(args)} imports {sorted(loaded & HEAVY)}"


def test_a_commands_help_imports_none_of_the_commands_libraries() -> None:
    """typer (0.29) itself coerces a subcommand's parameters through pydantic: not ours."""
    loaded = {name.split(".")[0] for name in _imported_modules("restore", "--help")}

    assert loaded & (HEAVY - {"pydantic"}) == set(), sorted(loaded & HEAVY)


def test_version_prints_the_version() -> None:
    result = subprocess.run([CLI, "--version"], capture_output=True, text=True)

    assert result.returncode == 0 and re.fullmatch(r"matricula-backup \S+\n", result.stdout)
