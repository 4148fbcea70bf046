"""A run killed with SIGKILL is closed by the next run: marked killed and reported once."""

from __future__ import annotations

import json
import os
from typing import Any

from testkit.proxy import S3Proxy
from tests.conftest import Setup
from tests.test_crash import _kill_when, _start


def test_the_next_run_marks_a_killed_run_and_reports_it_once(
    setup: Setup, s3: Any, s3_proxy: S3Proxy, httpserver: Any
) -> None:
    folder = setup.images / "Band"
    for number in range(80):
        setup.file(f"Band/{number:03d}.tif", os.urandom(500))
    httpserver.expect_request("/hook").respond_with_data("", status=202)
    setup.write_config(
        backup__folders=[str(folder)],
        backup__workers=2,
        notification__webhook=httpserver.url_for("/hook"),
    )
    assert _kill_when(_start(setup), lambda: s3_proxy.requests["PUT object"] >= 10)
    assert setup.db("SELECT id, outcome, finished_at FROM runs") == [(1, "running", None)]
    before = setup.run("history")
    assert "#1" in before.stdout and "running (still running?)" in before.stdout
    # status needs no new run to see it: the lock file names a pid that is gone.
    status = setup.run("status")
    assert "last run: #1 started" in status.stdout
    assert "(its process is gone: killed; the next run records it as killed), running" in (
        status.stdout
    )
    assert json.loads(setup.run("status", "--json").stdout)["last_run"]["process_gone"] is True

    result = setup.run()

    assert result.returncode == 1, result.stderr
    assert "run #1 (started" in result.stderr and "did not finish" in result.stderr
    assert setup.db("SELECT id, outcome FROM runs ORDER BY id") == [(1, "killed"), (2, "errors")]
    assert setup.db("SELECT folder, operation FROM problems WHERE run_id = 2") == [
        ("(earlier run)", "run")
    ]
    card = json.dumps(httpserver.log[-1][0].get_json())
    assert "did not finish" in card
    history = setup.run("history").stdout
    assert "killed (did not finish)" in history
    status = setup.run("status")
    assert "last killed run: #1" in status.stdout
    assert json.loads(setup.run("status", "--json").stdout)["last_killed_run"]["outcome"] == (
        "killed"
    )

    again = setup.run()  # reported once, not every night
    assert again.returncode == 0, again.stderr
    assert setup.db("SELECT outcome FROM runs ORDER BY id") == [("killed",), ("errors",), ("ok",)]
