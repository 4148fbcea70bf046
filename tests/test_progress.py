"""The live display on a terminal (driven in a pseudo terminal), silence under cron."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

import pytest

from tests.conftest import CLI, Setup


def _tree(setup: Setup) -> None:
    for number in range(40):
        setup.file(f"Band/{number:02d}.tif", os.urandom(2000))
    setup.write_config(backup__folders=[str(setup.images / "Band")], backup__workers=2)


def test_a_terminal_gets_a_live_display(setup: Setup) -> None:
    if not shutil.which("script"):
        pytest.skip("needs script(1) from util-linux for a pseudo terminal")
    _tree(setup)
    command = shlex.join([CLI, "--cache", str(setup.cache)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["COLUMNS"] = "200"

    result = subprocess.run(
        ["script", "-qec", command, "/dev/null"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout
    screen = result.stdout
    assert "40/40 files" in screen  # files done / total
    assert "KiB" in screen and "/s" in screen  # bytes and throughput
    assert "0 errors" in screen
    assert "backup done: 1 folders, 40 files" in screen


def test_cron_gets_only_the_summary_and_quiet_gets_nothing(setup: Setup) -> None:
    _tree(setup)

    result = setup.run()  # stdout is a pipe, as under cron

    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert "->" in lines[0] and lines[1].startswith("backup done")
    assert [line.split(":")[0] for line in lines[2:]] == ["cost of this run", "archive", "note"]
    assert "\x1b[" not in result.stdout  # no escape sequences, no progress bars

    setup.file("Band/new.tif", b"new")
    quiet = setup.run("--quiet")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
