"""The mass change guard: a folder whose files change en masse (ransomware
encrypting them in place) gets no new versions of them until the administrator
says so, and a slow change over a week is told once."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from testkit.proxy import S3Proxy
from tests.conftest import Setup, latest_versions

WEEK_AND_A_DAY = 8 * 24 * 3600


def _folder_of_40(setup: Setup, httpserver: Any) -> Path:
    folder = setup.images / "Band"
    for number in range(40):
        setup.file(f"Band/{number:02d}.tif", f"scan {number:02d}")
    httpserver.expect_request("/hook", method="POST").respond_with_data("", status=202)
    setup.write_config(
        backup__folders=[str(folder)], notification__webhook=httpserver.url_for("/hook")
    )
    result = setup.run()
    assert result.returncode == 0, result.stderr
    return folder


def _object_puts(proxy: S3Proxy) -> list[str]:
    """Keys of the objects PUT through the proxy (path style: /bucket/key)."""
    return sorted(
        line.split(" ", 1)[1].split("?", 1)[0].split("/", 2)[2]
        for line in proxy.log
        if line.startswith("PUT ") and line.count("/") >= 2 and "?" not in line
    )


def _cards(httpserver: Any) -> list[str]:
    """The cards this test's runs posted (a slow request of an earlier test may land late)."""
    return [
        json.dumps(request.get_json())
        for request, _response in httpserver.log
        if request.path == "/hook"
    ]


def _rewrite(folder: Path, numbers: range, tag: str) -> None:
    for number in numbers:
        (folder / f"{number:02d}.tif").write_bytes(f"encrypted {tag} {number:02d} !!".encode())


def test_30_of_40_files_rewritten_uploads_none_of_them_until_allowed(
    setup: Setup, s3: Any, s3_proxy: S3Proxy, httpserver: Any
) -> None:
    folder = _folder_of_40(setup, httpserver)
    bucket = setup.bucket(folder)
    before = latest_versions(s3, bucket)
    _rewrite(folder, range(30), "a")
    setup.file("Band/new-1.tif", b"a new scan")
    setup.file("Band/new-2.tif", b"another new scan")
    dry = setup.run("--dry-run")
    assert "would upload 2 files" in dry.stdout and "30 changed files held back" in dry.stdout
    s3_proxy.reset_counts()

    refused = setup.run()

    assert refused.returncode == 1
    # Only the two new files went up; no changed file was read into a PUT.
    prefix = str(folder).lstrip("/") + "/"
    assert _object_puts(s3_proxy) == [prefix + "new-1.tif", prefix + "new-2.tif"]
    assert "30 of 40 backed-up files (75%) changed since the last run" in refused.stderr
    assert "--allow-mass-change" in refused.stderr
    assert "30 changed files held back (mass change guard)" in refused.stdout
    latest = latest_versions(s3, bucket)
    for number in range(30):
        key = prefix + f"{number:02d}.tif"
        assert latest[key]["VersionId"] == before[key]["VersionId"]
    cards = _cards(httpserver)
    assert len(cards) == 1
    assert "30 of 40 backed-up files" in cards[0] and "ransomware" in cards[0]
    assert "00.tif" in cards[0] and "--allow-mass-change" in cards[0]
    # The rows still hold the backed-up size and mtime: the next run holds them again.
    assert setup.run().returncode == 1
    assert len(_cards(httpserver)) == 2
    s3_proxy.reset_counts()

    allowed = setup.run("--allow-mass-change")

    assert allowed.returncode == 0, allowed.stderr
    assert _object_puts(s3_proxy) == sorted(prefix + f"{n:02d}.tif" for n in range(30))
    latest = latest_versions(s3, bucket)
    assert latest[prefix + "00.tif"]["Size"] == len(b"encrypted a 00 !!")
    assert len(_cards(httpserver)) == 2  # told nothing more: the administrator chose it
    assert setup.db(
        "SELECT files_changed FROM run_folders WHERE run_id = (SELECT max(id) FROM runs)"
    ) == [(30,)]


def test_files_only_touched_are_held_too_and_cost_nothing_when_allowed(
    setup: Setup, s3_proxy: S3Proxy, httpserver: Any
) -> None:
    """The guard decides before reading a byte, so a mass `touch` looks like a change;
    allowing it uploads nothing, as the bytes equal the backup's."""
    folder = _folder_of_40(setup, httpserver)
    for number in range(30):
        os.utime(folder / f"{number:02d}.tif", (1_800_000_000, 1_800_000_000))

    refused = setup.run()

    assert refused.returncode == 1
    assert "30 of 40 backed-up files (75%) changed" in refused.stderr
    s3_proxy.reset_counts()
    allowed = setup.run("--allow-mass-change")
    assert allowed.returncode == 0, allowed.stderr
    assert "30 unchanged (only touched" in allowed.stdout
    assert _object_puts(s3_proxy) == []


def test_a_few_changes_a_night_are_told_once_when_the_week_passes_the_share(
    setup: Setup, httpserver: Any
) -> None:
    """8 of 40 files a night (20%, 8 files: under both limits of one run) add up to
    40% in two nights: the second night tells Teams, the third does not again."""
    folder = _folder_of_40(setup, httpserver)

    def night(numbers: range, tag: str) -> tuple[int, str]:
        _rewrite(folder, numbers, tag)
        result = setup.run()
        assert "uploaded 8/8 files" in result.stdout, result.stdout + result.stderr
        return result.returncode, result.stderr

    assert night(range(0, 8), "1") == (0, "")
    code, stderr = night(range(8, 16), "2")
    assert code == 1
    assert "16 of 40 files (40%) got new versions in the last 7 days (8 by this run)" in stderr
    cards = _cards(httpserver)
    assert len(cards) == 1 and "16 of 40 files" in cards[0]
    assert night(range(16, 24), "3") == (0, "")  # still above: not told every night
    assert len(_cards(httpserver)) == 1

    # A week later those runs are out of the window: the count starts again.
    with contextlib.closing(sqlite3.connect(setup.cache / "state.db")) as conn, conn:
        conn.execute("UPDATE runs SET started_at = started_at - ?", (WEEK_AND_A_DAY,))
    assert night(range(24, 32), "4") == (0, "")
    code, stderr = night(range(32, 40), "5")
    assert code == 1 and "16 of 40 files (40%)" in stderr
    assert len(_cards(httpserver)) == 2


def test_a_few_deletions_a_night_are_told_when_the_week_passes_the_delete_share(
    setup: Setup, httpserver: Any
) -> None:
    folder = _folder_of_40(setup, httpserver)
    for night, numbers in enumerate((range(0, 8), range(8, 16)), start=1):
        for number in numbers:
            (folder / f"{number:02d}.tif").unlink()
        result = setup.run()
        assert "deleted 8/8" in result.stdout, result.stdout + result.stderr
        assert result.returncode == (0 if night == 1 else 1)
    assert "16 of 32 files (50%) were deleted in the last 7 days" in result.stderr
    assert "backup.max_delete_percent (20%)" in result.stderr
    assert len(_cards(httpserver)) == 1


def test_max_change_percent_is_configurable(setup: Setup, httpserver: Any) -> None:
    folder = _folder_of_40(setup, httpserver)
    setup.write_config(backup__max_change_percent=80)
    _rewrite(folder, range(30), "a")

    result = setup.run()

    assert result.returncode == 0, result.stderr
    assert "uploaded 30/30 files" in result.stdout
    assert _cards(httpserver) == []
