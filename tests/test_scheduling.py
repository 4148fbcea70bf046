"""The shipped systemd unit and cron line, run the way they say.

systemd and cron themselves do not run in this sandbox: the test reads the unit
(ExecStart, User, Environment) and the cron line (user, command), swaps the
install paths for this checkout's command and a temporary cache directory, and
runs the command as that user (a numeric uid, as the account does not exist
here) with only the environment systemd or cron would give it and no terminal.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CLI, Setup, skip_unless_other_users_can_run_the_command

DOCS = Path(__file__).resolve().parents[1] / "docs" / "systemd"
INSTALLED_CLI = "/opt/matricula-backup/bin/matricula-backup"
INSTALLED_CACHE = "/var/lib/matricula-backup"
SERVICE_UID = 61234  # stands in for the matricula-backup account


def _unit(path: Path) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


def _as_service_user(setup: Setup) -> list[str]:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run as the service's user")
    skip_unless_other_users_can_run_the_command()
    for parent in setup.tmp.parents:  # pytest's temp root is 0700: let the user through
        if parent == Path("/tmp"):
            break
        parent.chmod(parent.stat().st_mode | 0o001)
    for path in [setup.tmp, setup.images, *setup.images.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o005)
    for path in [setup.cache, *setup.cache.iterdir()]:
        os.chown(path, SERVICE_UID, SERVICE_UID)
    return ["setpriv", f"--reuid={SERVICE_UID}", f"--regid={SERVICE_UID}", "--clear-groups"]


def _localise(command: str, setup: Setup) -> list[str]:
    return shlex.split(
        command.replace(INSTALLED_CLI, CLI).replace(INSTALLED_CACHE, str(setup.cache))
    )


def test_the_systemd_service_runs_its_command_as_its_user(setup: Setup) -> None:
    unit = _unit(DOCS / "matricula-backup.service")
    assert unit["User"] == ["matricula-backup"] and unit["Type"] == ["oneshot"]
    assert unit["KillSignal"] == ["SIGTERM"]
    timer = _unit(DOCS / "matricula-backup.timer")
    assert timer["Persistent"] == ["true"] and timer["OnCalendar"]
    setup.file("Band/a.tif", b"scan")
    setup.write_config(backup__folders=[str(setup.images / "Band")])
    environment = dict(item.split("=", 1) for item in unit["Environment"])
    environment["PATH"] = "/usr/local/bin:/usr/bin:/bin"  # systemd's default

    result = subprocess.run(
        _as_service_user(setup) + _localise(unit["ExecStart"][0], setup),
        env=environment,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert "uploaded 1/1 files" in result.stdout
    assert "\x1b[" not in result.stdout  # the journal gets plain lines
    state = setup.cache / "state.db"
    assert state.stat().st_uid == SERVICE_UID and state.stat().st_mode & 0o077 == 0


def test_the_cron_line_runs_quietly_as_its_user(setup: Setup) -> None:
    line = next(
        line
        for line in (DOCS / "matricula-backup.cron").read_text().splitlines()
        if line and not line.startswith("#")
    )
    minute, hour, _dom, _month, _dow, user, command = line.split(None, 6)
    assert (minute, hour, user) == ("15", "1", "matricula-backup")
    setup.file("Band/a.tif", b"scan")
    setup.write_config(backup__folders=[str(setup.images / "Band")])
    cron_environment = {"PATH": "/usr/bin:/bin", "SHELL": "/bin/sh", "LOGNAME": user}

    result = subprocess.run(
        _as_service_user(setup) + _localise(command, setup),
        env=cron_environment,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""  # nothing to mail on a good night
    assert setup.db("SELECT outcome, files_uploaded FROM runs") == [("ok", 1)]
