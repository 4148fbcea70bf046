"""The shipped systemd unit and cron line, run the way they say.

systemd and cron themselves do not run in this sandbox: the test reads the unit
(ExecStart, User, Environment) and the cron line (user, command), swaps the
install paths for this checkout's command and a temporary cache directory, and
runs the command as that user (a numeric uid, as the account does not exist
here) with only the environment systemd or cron would give it and no terminal.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CLI, Setup, skip_unless_other_users_can_run_the_command

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "systemd"
INSTALL_DIR = "/opt/matricula-backup"
MAX_EXPOSURE = 4.0
# UMask= and MemoryDenyWriteExecute=, the latter as the kernel enforces it (prctl
# PR_SET_MDWE, kept across exec), then exec the rest of the command line.
UMASK_AND_DENY_WRITE_EXECUTE = """
import ctypes, os, sys
os.umask(int(sys.argv[1], 8))
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:
    sys.exit("PR_SET_MDWE not supported by this kernel")
os.execvp(sys.argv[2], sys.argv[2:])
"""
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


def _sandboxed(unit: dict[str, list[str]], as_user: list[str]) -> list[str]:
    """``as_user`` (a setpriv command) with what of the unit's sandbox a process can impose
    on itself here, without systemd: no new privileges, no capabilities, no writable and
    executable memory, the unit's umask."""
    assert unit["NoNewPrivileges"] == ["true"] and unit["CapabilityBoundingSet"] == [""]
    assert unit["MemoryDenyWriteExecute"] == ["true"]
    setpriv, *switch_user = as_user
    return [
        sys.executable,
        "-c",
        UMASK_AND_DENY_WRITE_EXECUTE,
        unit["UMask"][0],
        setpriv,
        "--no-new-privs",
        "--bounding-set=-all",
        "--inh-caps=-all",
        *switch_user,
    ]


def _localise(command: str, setup: Setup) -> list[str]:
    return shlex.split(
        command.replace(INSTALLED_CLI, CLI).replace(INSTALLED_CACHE, str(setup.cache))
    )


def test_the_systemd_service_runs_its_command_as_its_user(setup: Setup) -> None:
    unit = _unit(DOCS / "matricula-backup.service")
    assert unit["User"] == ["matricula-backup"] and unit["Type"] == ["oneshot"]
    assert unit["KillSignal"] == ["SIGTERM"]
    assert unit["SuccessExitStatus"] == ["130"]  # systemctl stop is a clean stop, not a failure
    assert unit["ReadWritePaths"] == [INSTALLED_CACHE] and unit["ProtectSystem"] == ["strict"]
    timer = _unit(DOCS / "matricula-backup.timer")
    assert timer["Persistent"] == ["true"] and timer["OnCalendar"]
    setup.file("Band/a.tif", b"scan")
    setup.write_config(backup__folders=[str(setup.images / "Band")])
    environment = dict(item.split("=", 1) for item in unit["Environment"])
    environment["PATH"] = "/usr/local/bin:/usr/bin:/bin"  # systemd's default

    result = subprocess.run(
        _sandboxed(unit, _as_service_user(setup)) + _localise(unit["ExecStart"][0], setup),
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


def _run_as_service(setup: Setup, command: str, env: dict[str, str]) -> Any:
    return subprocess.run(
        _as_service_user(setup) + _localise(command, setup),
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def test_the_weekly_verify_unit_checks_the_buckets_as_its_user(setup: Setup, s3: Any) -> None:
    backup = _unit(DOCS / "matricula-backup.service")
    unit = _unit(DOCS / "matricula-backup-verify.service")
    assert unit["User"] == backup["User"] and unit["Type"] == ["oneshot"]
    assert " verify --cache " in unit["ExecStart"][0]
    timer = _unit(DOCS / "matricula-backup-verify.timer")
    assert timer["Persistent"] == ["true"] and timer["OnCalendar"][0].startswith("Sun ")
    setup.file("Band/a.tif", b"scan")
    setup.write_config(backup__folders=[str(setup.images / "Band")])
    environment = dict(item.split("=", 1) for item in unit["Environment"])
    environment["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    assert _run_as_service(setup, backup["ExecStart"][0], environment).returncode == 0

    good = _run_as_service(setup, unit["ExecStart"][0], environment)
    bucket = setup.bucket(setup.images / "Band")
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    expire = {"ID": "x", "Status": "Enabled", "Filter": {}, "Expiration": {"Days": 1}}
    s3.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [*rules, expire]}
    )
    bad = _run_as_service(setup, unit["ExecStart"][0], environment)

    assert good.returncode == 0, good.stderr
    assert "verify: 1 folders, 0 findings" in good.stdout
    assert bad.returncode == 1  # the unit is marked failed
    assert "finding: lifecycle:" in bad.stdout and "lifecycle rule 'x'" in bad.stdout


def test_the_weekly_verify_cron_line_is_silent_on_a_good_week(setup: Setup) -> None:
    line = next(
        line
        for line in (DOCS / "matricula-backup.cron").read_text().splitlines()
        if line and not line.startswith("#") and " verify " in line
    )
    minute, hour, _dom, _month, dow, user, command = line.split(None, 6)
    assert (minute, hour, dow, user) == ("0", "12", "0", "matricula-backup")
    setup.file("Band/a.tif", b"scan")
    setup.write_config(backup__folders=[str(setup.images / "Band")])
    cron_environment = {"PATH": "/usr/bin:/bin", "SHELL": "/bin/sh", "LOGNAME": user}
    nightly = next(
        line.split(None, 6)[6]
        for line in (DOCS / "matricula-backup.cron").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert _run_as_service(setup, nightly, cron_environment).returncode == 0

    result = _run_as_service(setup, command, cron_environment)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""  # nothing to mail on a good week


def test_the_systemd_service_is_sandboxed() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (.ci/run installs the systemd package)")
    result = subprocess.run(
        [analyze, "security", "--offline=true", str(DOCS / "matricula-backup.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    found = re.search(
        r"Overall exposure level for matricula-backup\.service: (\d+\.\d+)", result.stdout
    )
    assert found, result.stdout
    assert float(found[1]) <= MAX_EXPOSURE, result.stdout


def test_the_units_documentation_exists_after_the_readme_setup(tmp_path: Path) -> None:
    """Documentation= points at a file the README's setup steps install (pip does not)."""
    unit = _unit(DOCS / "matricula-backup.service")
    (documentation,) = unit["Documentation"]
    assert documentation.startswith(f"file://{INSTALL_DIR}/")
    steps = [
        line.strip()
        for line in (REPO / "README.md").read_text().splitlines()
        if documentation[len("file://") :] in line and line.lstrip().startswith("install ")
    ]
    assert steps, "the README never installs " + documentation
    prefix = tmp_path / "opt"
    prefix.mkdir()  # made by the README's python3 -m venv step before
    for step in steps:
        command = shlex.split(step.split("#", 1)[0].replace(INSTALL_DIR, str(prefix)))
        subprocess.run(command, cwd=REPO, check=True, timeout=60)
    installed = prefix / documentation[len(f"file://{INSTALL_DIR}/") :]
    assert installed.read_text() == (REPO / "README.md").read_text()


def test_the_readme_says_when_the_timer_runs() -> None:
    timer = _unit(DOCS / "matricula-backup.timer")
    assert timer["OnCalendar"] == ["*-*-* 01:15"] and timer["RandomizedDelaySec"] == ["15min"]
    assert "between 01:15 and 01:30" in (REPO / "README.md").read_text()


def test_the_drill_unit_and_cron_line_run_a_drill_as_their_user(setup: Setup) -> None:
    backup = _unit(DOCS / "matricula-backup.service")
    unit = _unit(DOCS / "matricula-backup-drill.service")
    assert unit["User"] == backup["User"] and unit["Type"] == ["oneshot"]
    assert " drill --cache " in unit["ExecStart"][0] and "--every 30" in unit["ExecStart"][0]
    timer = _unit(DOCS / "matricula-backup-drill.timer")
    assert timer["Persistent"] == ["true"] and timer["OnCalendar"] == ["*-*-* 10:00"]
    line = next(
        line
        for line in (DOCS / "matricula-backup.cron").read_text().splitlines()
        if line and not line.startswith("#") and " drill " in line
    )
    minute, hour, _dom, _month, _dow, user, command = line.split(None, 6)
    assert (minute, hour, user) == ("0", "10", "matricula-backup")
    setup.file("Band/a.tif", b"scan")
    setup.write_config(backup__folders=[str(setup.images / "Band")])
    environment = dict(item.split("=", 1) for item in unit["Environment"])
    environment["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    assert _run_as_service(setup, backup["ExecStart"][0], environment).returncode == 0

    requested = _run_as_service(setup, unit["ExecStart"][0], environment)
    assert requested.returncode == 0, requested.stderr
    assert "drill #1 (new): 1 objects, Bulk tier; cost" in requested.stdout
    cron_environment = {"PATH": "/usr/bin:/bin", "SHELL": "/bin/sh", "LOGNAME": user}
    finished = _run_as_service(setup, command, cron_environment)  # the next day
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout == "" and finished.stderr == ""  # nothing to mail: it passed
    assert setup.db("SELECT outcome FROM drills") == [("passed",)]


def test_the_drill_service_is_sandboxed_like_the_backup() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (.ci/run installs the systemd package)")
    result = subprocess.run(
        [analyze, "security", "--offline=true", str(DOCS / "matricula-backup-drill.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    found = re.search(
        r"Overall exposure level for matricula-backup-drill\.service: (\d+\.\d+)", result.stdout
    )
    assert found, result.stdout
    assert float(found[1]) <= MAX_EXPOSURE, result.stdout
