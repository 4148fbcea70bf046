"""scrub: bytes changed behind an unchanged size and mtime are found, held and reported."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.conftest import CLI, Setup


def _versions(s3: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    listed = s3.list_object_versions(Bucket=bucket, Prefix=key).get("Versions", [])
    return [v for v in listed if v["Key"] == key]


def _backed_up(setup: Setup, webhook: str | None = None, **config: Any) -> Path:
    folder = setup.images / "Taufbuch"
    setup.file("Taufbuch/001.tif", b"A" * 4000)
    setup.file("Taufbuch/002.tif", b"B" * 5000)
    setup.write_config(
        backup__folders=[str(folder)],
        **({"notification__webhook": webhook} if webhook else {}),
        **config,
    )
    assert setup.run().returncode == 0
    return folder


def _tamper(path: Path) -> None:
    """Other bytes of the same size, mtime put back: what bit rot or a careful attacker does."""
    info = path.stat()
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert path.stat().st_mtime_ns == info.st_mtime_ns


def _events(setup: Setup, kind: str) -> list[tuple[str, str]]:
    return [
        (str(row[0]), str(row[1]))
        for row in setup.db(
            "SELECT path, result FROM fixity_events WHERE kind = ? ORDER BY id", kind
        )
    ]


def test_a_damaged_file_is_reported_held_and_uploaded_once_after_accept(
    setup: Setup, s3: Any, httpserver: Any
) -> None:
    httpserver.expect_request("/hook").respond_with_data("", status=202)
    folder = _backed_up(setup, httpserver.url_for("/hook") + "?sig=TOPSECRET")
    bucket = setup.bucket(folder)
    damaged = folder / "001.tif"
    key = str(damaged).lstrip("/")
    good_version = _versions(s3, bucket, key)[0]["VersionId"]
    assert sorted(_events(setup, "upload")) == [("001.tif", "ok"), ("002.tif", "ok")]

    _tamper(damaged)
    result = setup.run("scrub")
    assert result.returncode == 1, result.stderr
    assert f"fixity failure: {damaged}" in result.stderr
    assert good_version in result.stderr
    assert "TOPSECRET" not in result.stderr + result.stdout
    card = httpserver.log[-1][0].get_json()
    text = str(card)
    assert str(damaged) in text and good_version in text and "Last verified" in text
    assert f"matricula-backup restore --cache {setup.cache}" in text
    assert "TOPSECRET" not in text
    assert setup.db("SELECT path FROM fixity_holds") == [("001.tif",)]
    assert sorted(_events(setup, "scrub")) == [("001.tif", "failed"), ("002.tif", "ok")]

    # The next runs never upload it: not as it is, not when it is touched, not after --reset.
    nightly = setup.run()
    assert nightly.returncode == 0
    assert "1 files held after a fixity failure are not uploaded (e.g. 001.tif)" in nightly.stdout
    os.utime(damaged, (time.time(), time.time()))
    assert setup.run().returncode == 0
    assert setup.run("--reset").returncode == 0
    assert len(_versions(s3, bucket, key)) == 1
    assert setup.db("SELECT path FROM fixity_holds") == [("001.tif",)]

    accepted = setup.run("scrub", "--accept", str(damaged))
    assert accepted.returncode == 0, accepted.stderr
    assert setup.db("SELECT count(*) FROM fixity_holds") == [(0,)]
    assert setup.run().returncode == 0
    assert setup.run().returncode == 0
    versions = _versions(s3, bucket, key)
    assert len(versions) == 2  # uploaded once
    assert _events(setup, "upload")[-1] == ("001.tif", "ok")
    assert ("001.tif", "accepted") in _events(setup, "scrub")


def test_the_restore_command_of_the_report_brings_the_good_copy_back(setup: Setup, s3: Any) -> None:
    folder = _backed_up(setup)
    damaged = folder / "002.tif"
    good = damaged.read_bytes()
    _tamper(damaged)
    result = setup.run("scrub")
    assert result.returncode == 1
    message = result.stderr
    restore = message.split("Restore the good copy: ", 1)[1].split(" (again until", 1)[0]
    copy = message.split("then cp -p ", 1)[1].strip().splitlines()[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    argv = shlex.split(restore)
    assert argv[0] == "matricula-backup"
    for _ in range(3):  # moto finishes restores at once; S3 would need hours
        done = subprocess.run([CLI, *argv[1:]], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
    subprocess.run(["cp", "-p", *shlex.split(copy)], check=True)
    assert damaged.read_bytes() == good

    assert setup.run().returncode == 0  # releases the hold; uploads nothing
    assert setup.db("SELECT count(*) FROM fixity_holds") == [(0,)]
    assert len(_versions(s3, setup.bucket(folder), str(damaged).lstrip("/"))) == 1
    assert ("002.tif", "restored") in _events(setup, "scrub")


def test_files_checked_within_scrub_days_are_not_read_again(setup: Setup) -> None:
    _backed_up(setup)
    first = setup.run("scrub")
    assert first.returncode == 0, first.stderr
    assert "2 files read" in first.stdout and "of 2 due" in first.stdout

    again = setup.run("scrub")
    assert "0 files read" in again.stdout and "of 0 due" in again.stdout

    # 91 days later (scrub_days is 90 by default) both are due again, oldest check first.
    old = int(time.time()) - 91 * 86400
    setup.db("UPDATE scrub_checks SET checked_at = ? WHERE path = '002.tif'", old)
    later = setup.run("scrub")
    assert "1 files read" in later.stdout and "of 1 due" in later.stdout


def test_the_time_budget_leaves_the_rest_for_the_next_scrub(setup: Setup) -> None:
    _backed_up(setup)
    result = setup.run("scrub", "--max-minutes", "0")
    assert result.returncode == 0
    assert "0 files read" in result.stdout and "2 left for the next scrub" in result.stdout


def test_the_read_rate_limit_holds(setup: Setup) -> None:
    folder = setup.images / "Sterbebuch"
    setup.file("Sterbebuch/big.tif", os.urandom(3_000_000))
    setup.write_config(backup__folders=[str(folder)], preservation__scrub_rate="1MB/s")
    assert setup.run().returncode == 0
    started = time.monotonic()
    result = setup.run("scrub")
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    # 3 MB at 1 MB/s, less the quarter-second burst the token bucket starts with.
    assert took >= 2.7, took


def test_the_nightly_run_can_end_with_a_scrub(setup: Setup) -> None:
    folder = _backed_up(setup, None, preservation__scrub_nightly=True)
    assert sorted(_events(setup, "scrub")) == [("001.tif", "ok"), ("002.tif", "ok")]
    _tamper(folder / "001.tif")
    setup.db("DELETE FROM scrub_checks")
    result = setup.run()
    assert result.returncode == 1
    assert f"fixity failure: {folder / '001.tif'}" in result.stderr


def test_a_fifo_put_in_a_files_place_does_not_hang_the_scrub(setup: Setup) -> None:
    """A local user replaces a backed-up empty file by a FIFO with the same mtime: the
    scrub (running as root) must neither block on it nor read it; it says so and goes on."""
    folder = _backed_up(setup)
    empty = setup.file("Taufbuch/empty.tif", b"")
    assert setup.run().returncode == 0
    mtime_ns = empty.stat().st_mtime_ns
    empty.unlink()
    os.mkfifo(empty)
    os.utime(empty, ns=(mtime_ns, mtime_ns))
    result = setup.run("scrub")  # a blocked open would end in setup.run's timeout
    assert f"{folder}/empty.tif: cannot read: not a regular file" in result.stderr + result.stdout
    assert sorted(_events(setup, "scrub")) == [("001.tif", "ok"), ("002.tif", "ok")]
    assert setup.db("SELECT path FROM fixity_holds") == []
