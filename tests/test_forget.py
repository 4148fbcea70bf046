"""A backup folder's life has an end: gone folders are reported until `forget` closes them.

A folder recorded in state.db that config.json no longer produces is reported
by every run (exit 1, the card: path, bucket, last successful backup) and shown
by status; `forget` drops its rows, keeps its bucket and objects and the
history, takes the lock, refuses a folder still configured and present, and can
be run twice.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from testkit.proxy import S3Proxy
from tests.conftest import Setup, latest_versions


def _key(path: Path | str) -> str:
    return str(path).lstrip("/")


def _problems(setup: Setup) -> list[tuple[str, str]]:
    return [
        (row[0], row[1])
        for row in setup.db(
            "SELECT folder, message FROM problems WHERE run_id = (SELECT max(id) FROM runs) "
            "ORDER BY id"
        )
    ]


def _tables(setup: Setup) -> set[str]:
    return {row[0] for row in setup.db("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _status(setup: Setup) -> dict[str, dict[str, Any]]:
    result = setup.run("status", "--json")
    assert result.returncode == 0, result.stderr
    return {entry["folder"]: entry for entry in json.loads(result.stdout)["folders"]}


def test_a_vanished_root_subfolder_is_reported_until_forgotten(
    setup: Setup, s3: Any, httpserver: Any
) -> None:
    root = setup.images / "archive"
    setup.file("archive/Wien/a.tif", b"a")
    setup.file("archive/Graz/b.tif", b"b")
    httpserver.expect_request("/hook").respond_with_data("", status=202)
    setup.write_config(backup__roots=[str(root)], notification__webhook=httpserver.url_for("/hook"))
    assert setup.run().returncode == 0
    graz = root / "Graz"
    bucket, table = setup.bucket(graz), setup.table(graz)
    (graz).rename(setup.images / "Graz-renamed")

    for _night in range(2):  # every run, not once
        result = setup.run()
        assert result.returncode == 1, result.stderr
        [(folder, message)] = _problems(setup)
        assert folder == str(graz)
        assert "no longer a backup folder of config.json, and its directory is gone" in message
        assert f"bucket {bucket}, last successful backup 20" in message
        assert f"matricula-backup forget --cache {setup.cache} {graz}" in message
    card = json.dumps(httpserver.log[-1][0].get_json())
    assert str(graz) in card and bucket in card

    status = setup.run("status")
    assert f"{graz} -> s3://{bucket}: GONE" in status.stdout
    assert _status(setup)[str(graz)]["state"] == "gone"
    assert _status(setup)[str(root / "Wien")]["state"] == "backed_up"

    check = setup.run("check-config")
    assert check.returncode == 1
    assert f"problem: {graz} (bucket {bucket}) is recorded in state.db but no longer" in (
        check.stderr
    )

    dry = setup.run("forget", str(graz), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would forget {graz}: would drop its files table {table} (1 rows)" in dry.stdout
    assert table in _tables(setup)

    forgot = setup.run("forget", str(graz))

    assert forgot.returncode == 0, forgot.stderr
    assert f"forgot {graz}: dropped its files table {table} (1 rows)" in forgot.stdout
    assert f"bucket {bucket} and its objects are kept" in forgot.stdout
    assert table not in _tables(setup)
    assert setup.db("SELECT count(*) FROM folders WHERE path = ?", str(graz)) == [(0,)]
    assert set(latest_versions(s3, bucket)) == {_key(graz / "b.tif")}  # the bucket stays
    assert setup.db("SELECT count(*) FROM run_folders WHERE folder = ?", str(graz)) == [(1,)]
    assert setup.run().returncode == 0  # no longer reported
    assert _problems(setup) == []

    again = setup.run("forget", str(graz))  # idempotent
    assert again.returncode == 0, again.stderr
    assert "not recorded in state.db (forgotten already?); nothing to do" in again.stdout


def test_forget_refuses_a_folder_that_is_configured_and_present(setup: Setup) -> None:
    folder = setup.images / "Band"
    setup.file("Band/a.tif")
    setup.write_config(backup__folders=[str(folder)])
    assert setup.run().returncode == 0
    table = setup.table(folder)

    result = setup.run("forget", str(folder))

    assert result.returncode == 2
    assert "still a backup folder of config.json and present on disk" in result.stderr
    assert "remove it from config.json" in result.stderr
    assert table in _tables(setup)


def test_a_missing_configured_folder_says_what_to_do(setup: Setup, s3: Any) -> None:
    folder = setup.images / "Band"
    setup.file("Band/a.tif")
    setup.write_config(backup__folders=[str(folder)])
    assert setup.run().returncode == 0
    bucket = setup.bucket(folder)
    folder.rename(setup.images / "elsewhere")

    result = setup.run()

    assert result.returncode == 1
    [(_folder, message)] = _problems(setup)
    assert "folder missing (not mounted?)" in message
    assert f"(bucket {bucket}, last successful backup 20" in message
    assert "Mount it; if it is gone for good, remove it from config.json and run" in message
    assert f"matricula-backup forget --cache {setup.cache} {folder}" in message
    assert f"{folder} -> s3://{bucket}: MISSING" in setup.run("status").stdout

    # Forgetting it while it is still configured is allowed (it is not there),
    # with a word that the runs keep reporting it until config.json changes.
    forgot = setup.run("forget", str(folder))
    assert forgot.returncode == 0, forgot.stderr
    assert "still in config.json: the next runs report it missing" in forgot.stdout
    assert setup.db("SELECT count(*) FROM folders") == [(0,)]
    assert len(latest_versions(s3, bucket)) == 1


def test_a_folder_taken_out_of_config_and_back_again_uploads_nothing(
    setup: Setup, s3_proxy: S3Proxy
) -> None:
    kept, dropped = setup.images / "Kept", setup.images / "Dropped"
    setup.file("Kept/a.tif", b"a")
    for number in range(5):
        setup.file(f"Dropped/{number}.tif", os.urandom(100))
    setup.write_config(backup__folders=[str(kept), str(dropped)])
    assert setup.run().returncode == 0
    setup.write_config(backup__folders=[str(kept)])

    result = setup.run()
    assert result.returncode == 1
    [(folder, message)] = _problems(setup)
    assert folder == str(dropped) and message.startswith(
        "no longer a backup folder of config.json;"
    )
    assert setup.run("forget", str(dropped)).returncode == 0

    # Back in config.json: the same bucket name, adopted from its listing.
    setup.write_config(backup__folders=[str(kept), str(dropped)])
    s3_proxy.reset_counts()
    back = setup.run()
    assert back.returncode == 0, back.stderr
    assert s3_proxy.requests["PUT object"] == 0
    assert "5 found already in the bucket" in back.stdout


def test_subfolders_of_an_unmounted_root_are_not_reported_as_gone(setup: Setup) -> None:
    root = setup.images / "archive"
    setup.file("archive/Wien/a.tif", b"a")
    setup.write_config(backup__roots=[str(root)])
    assert setup.run().returncode == 0
    root.rename(setup.images / "the-share")
    root.mkdir()

    result = setup.run()

    assert result.returncode == 1
    [(_folder, message)] = _problems(setup)
    assert "has no subfolders" in message
    assert _status(setup)[str(root / "Wien")]["state"] == "missing"


def test_forget_takes_the_lock(setup: Setup) -> None:
    folder = setup.images / "Band"
    setup.file("Band/a.tif")
    setup.write_config(backup__folders=[str(folder)])
    assert setup.run().returncode == 0
    setup.write_config(backup__folders=[str(setup.images / "Other")])

    with open(setup.cache / "lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = setup.run("forget", str(folder))

    assert result.returncode == 2
    assert "another matricula-backup run holds the lock" in result.stderr
    assert setup.db("SELECT count(*) FROM folders") == [(1,)]
