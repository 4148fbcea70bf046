"""kill -9 at several points of real runs: the next run finishes the job.

Each kill leaves a database that opens without help (integrity_check ok); the
final run brings bucket and database into agreement with the tree, and no file
is uploaded again except the few in flight at each kill.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from testkit.proxy import S3Proxy
from tests.conftest import CLI, Setup, latest_versions

WORKERS = 2
# Uploads S3 may confirm that a kill keeps from being recorded: those running
# and queued (2 x workers) plus one uncommitted batch (worker.COMMIT_EVERY_RESULTS).
LOST_PER_KILL = 2 * WORKERS + 16


def _start(setup: Setup, *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.Popen(
        [CLI, "--cache", str(setup.cache), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _kill_when(process: subprocess.Popen[bytes], condition: Any, timeout: float = 60) -> bool:
    """SIGKILL the run once ``condition()`` holds; False if it ended first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            process.wait()
            return False
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True


def _database_opens(cache: Path) -> None:
    with closing(sqlite3.connect(cache / "state.db")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def _assert_bucket_and_database_match_tree(setup: Setup, s3: Any, folder: Path) -> None:
    bucket = setup.bucket(folder)
    latest = latest_versions(s3, bucket)
    on_disk = {str(p).lstrip("/"): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    assert {key: v["Size"] for key, v in latest.items()} == on_disk
    rows = setup.db(f'SELECT path, size, state, version_id FROM "{setup.table(folder)}"')
    assert {r[0] for r in rows} == {os.path.relpath("/" + key, folder) for key in on_disk}
    prefix = str(folder).lstrip("/") + "/"
    for path, size, state, version_id in rows:
        assert state == "backed_up", path
        assert size == on_disk[prefix + path]
        assert version_id == latest[prefix + path]["VersionId"], path


def test_kill_9_during_every_stage_then_a_full_run_agrees_with_the_tree(
    setup: Setup, s3: Any, s3_proxy: S3Proxy
) -> None:
    folder = setup.images / "Band"
    for number in range(300):
        setup.file(f"Band/{number // 50}/{number:04d}.tif", os.urandom(1500))
    setup.write_config(backup__folders=[str(folder)], backup__workers=WORKERS)
    kills = 0

    # After the scan, at the first S3 request (the listing of a new folder's bucket).
    kills += _kill_when(_start(setup), lambda: s3_proxy.total >= 1)
    # During the bucket setup, then twice during the uploads.
    kills += _kill_when(_start(setup), lambda: s3_proxy.requests["PUT versioning"] >= 1)
    for puts in (40, 160):
        kills += _kill_when(_start(setup), lambda n=puts: s3_proxy.requests["PUT object"] >= n)
        _database_opens(setup.cache)
    assert kills == 4

    result = setup.run()
    # Each run closed the killed run before it; this one reports the last (exit 1).
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("did not finish") == 1
    assert setup.db("SELECT count(*) FROM runs WHERE outcome = 'killed'") == [(4,)]
    _assert_bucket_and_database_match_tree(setup, s3, folder)
    assert 300 <= s3_proxy.requests["PUT object"] <= 300 + kills * LOST_PER_KILL

    # Deletes: kill right after the batched DeleteObjects went out, then finish.
    for number in range(0, 300, 3):
        (folder / f"{number // 50}" / f"{number:04d}.tif").unlink()
    setup.file("Band/9/new.tif", b"new")
    killed = _kill_when(
        _start(setup, "--allow-mass-delete"), lambda: s3_proxy.requests["POST delete"] >= 1
    )
    assert killed
    _database_opens(setup.cache)

    result = setup.run("--allow-mass-delete")
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("did not finish") == 1
    _assert_bucket_and_database_match_tree(setup, s3, folder)
    assert setup.db("SELECT outcome, count(*) FROM runs GROUP BY outcome ORDER BY 1") == [
        ("errors", 2),
        ("killed", 5),
    ]
    assert setup.run().returncode == 0  # reported once, not every night


def test_kill_9_during_a_reset_then_a_plain_run_adopts_the_bucket(
    setup: Setup, s3: Any, s3_proxy: S3Proxy
) -> None:
    folder = setup.images / "Band"
    for number in range(60):
        setup.file(f"Band/{number:04d}.tif", os.urandom(100))
    setup.write_config(backup__folders=[str(folder)])
    assert setup.run().returncode == 0
    s3_proxy.reset_counts()

    assert _kill_when(_start(setup, "--reset"), lambda: s3_proxy.total >= 1)
    _database_opens(setup.cache)
    result = setup.run()

    assert result.returncode == 1, result.stderr
    assert "did not finish" in result.stderr
    assert s3_proxy.requests["PUT object"] == 0
    _assert_bucket_and_database_match_tree(setup, s3, folder)
