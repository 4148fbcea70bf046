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
import sys
from pathlib import Path

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


def _exit_probe(body: str) -> subprocess.CompletedProcess[str]:
    """Python code that ends with cli._exit, run in a process of its own."""
    code = f"import logging, sys, threading, time\nfrom matricula_backup import cli\n{body}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_the_fast_exit_flushes_what_was_printed_and_logged(tmp_path: Path) -> None:
    """cli._exit skips the interpreter's teardown, not the streams' or the log's last bytes."""
    log = tmp_path / "run.log"
    result = _exit_probe(
        f"logging.basicConfig(filename={str(log)!r}, level=logging.INFO)\n"
        "print('x' * 200_000)\n"  # more than a pipe's buffer: written at the flush
        "print('to stderr', file=sys.stderr)\n"
        "logging.getLogger('probe').info('the last line')\n"
        "cli._exit(1)\n"
    )

    assert result.returncode == 1
    assert result.stdout == "x" * 200_000 + "\n" and result.stderr == "to stderr\n"
    assert log.read_text().endswith("the last line\n")


@pytest.mark.parametrize(
    ("code", "status", "stderr"), [(None, 0, ""), (2, 2, ""), ("no", 1, "no\n")]
)
def test_the_fast_exit_takes_what_sys_exit_takes(code: object, status: int, stderr: str) -> None:
    result = _exit_probe(f"cli._exit({code!r})\n")

    assert (result.returncode, result.stderr) == (status, stderr)


@pytest.mark.parametrize(("code", "status"), [(0, 120), (3, 3)])
def test_the_fast_exit_on_a_closed_pipe(code: int, status: int) -> None:
    """| head closed stdout: 120 as Python gives, unless the command failed with its own code."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # the flush fails
    code_text = f"import sys\nfrom matricula_backup import cli\nprint('x')\ncli._exit({code})\n"
    try:
        result = subprocess.run(
            [sys.executable, "-c", code_text], stdout=write_end, stderr=subprocess.PIPE, env=env
        )
    finally:
        os.close(write_end)

    assert result.returncode == status, result.stderr


def test_the_fast_exit_waits_for_a_thread_still_at_work(tmp_path: Path) -> None:
    """A thread that has not finished (a bug elsewhere) is not cut off: the normal exit joins it."""
    done = tmp_path / "done"
    result = _exit_probe(
        "def work():\n"
        "    time.sleep(0.3)\n"
        f"    open({str(done)!r}, 'w').write('written')\n"
        "threading.Thread(target=work).start()\n"
        "cli._exit(3)\n"
    )

    assert result.returncode == 3, result.stderr
    assert done.read_text() == "written"


def test_the_command_exits_with_its_code_and_output() -> None:
    """The console script goes through cli.main and its fast exit: code 2 and its message."""
    result = subprocess.run(
        [CLI, "--cache", "/nonexistent-cache-dir"], capture_output=True, text=True
    )

    assert result.returncode == 2
    assert "/nonexistent-cache-dir: no such directory" in result.stderr


def test_under_a_profiler_the_exit_is_the_normal_one(tmp_path: Path) -> None:
    """python -m cProfile -o FILE writes FILE after the program: the fast exit must not skip it."""
    stats = tmp_path / "run.prof"
    result = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(stats), "-m", "matricula_backup", "--version"],
        capture_output=True,
        text=True,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("matricula-backup ") and stats.stat().st_size > 0
