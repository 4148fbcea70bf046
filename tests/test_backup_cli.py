"""End to end: the installed command against moto's S3 server on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from testkit.proxy import S3Proxy
from tests.conftest import Setup, latest_versions


def _tree(setup: Setup) -> Path:
    folder = setup.images / "Taufbuch 1890"
    setup.file("Taufbuch 1890/0001.tif", b"A" * 1000, mtime=1_600_000_000.25)
    setup.file("Taufbuch 1890/sub dir/0002 ü.jpg", b"B" * 2000)
    setup.file("Taufbuch 1890/empty.tif", b"")
    setup.write_config(backup__folders=[str(folder)])
    return folder


def _key(path: Path) -> str:
    return str(path).lstrip("/")


# Small files go through the CRT by default (crt.py); the objects must not differ.
@pytest.mark.parametrize("crt", [True, False], ids=["crt", "botocore"])
def test_first_run_uploads_everything_to_a_configured_bucket(
    setup: Setup, s3: Any, crt: bool
) -> None:
    folder = _tree(setup)
    setup.write_config(aws__crt=crt)

    result = setup.run()

    assert result.returncode == 0, result.stderr
    assert "uploaded 3/3 files" in result.stdout
    bucket = setup.bucket(folder)
    assert bucket.startswith("taufbuch-1890-") and len(bucket) == len("taufbuch-1890-") + 8
    latest = latest_versions(s3, bucket)
    assert set(latest) == {
        _key(folder / "0001.tif"),
        _key(folder / "sub dir/0002 ü.jpg"),
        _key(folder / "empty.tif"),
    }
    assert {v["StorageClass"] for v in latest.values()} == {"DEEP_ARCHIVE"}
    head = s3.head_object(Bucket=bucket, Key=_key(folder / "0001.tif"), ChecksumMode="ENABLED")
    assert head["Metadata"]["mtime"] == "1600000000.250000000"
    assert head["Metadata"]["sha256"] == hashlib.sha256(b"A" * 1000).hexdigest()
    assert head["ContentLength"] == 1000
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(b"A" * 1000).digest()).decode()

    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert rules["matricula-backup-noncurrent"]["NoncurrentVersionExpiration"] == {
        "NoncurrentDays": 180
    }
    assert rules["matricula-backup-noncurrent"]["AbortIncompleteMultipartUpload"] == {
        "DaysAfterInitiation": 7
    }
    assert rules["matricula-backup-delete-markers"]["Expiration"] == {
        "ExpiredObjectDeleteMarker": True
    }
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values())
    encryption = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
    assert encryption["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"

    table = setup.table(folder)
    rows = setup.db(
        f'SELECT path, size, state, version_id, hex(sha256), uploaded_at FROM "{table}" '
        "ORDER BY path"
    )
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("0001.tif", 1000, "backed_up"),
        ("empty.tif", 0, "backed_up"),
        ("sub dir/0002 ü.jpg", 2000, "backed_up"),
    ]
    assert rows[0][3] == latest[_key(folder / "0001.tif")]["VersionId"]
    assert rows[0][4].lower() == hashlib.sha256(b"A" * 1000).hexdigest()
    assert abs(rows[0][5] - time.time()) < 120
    assert setup.db("SELECT mode, outcome, files_uploaded FROM runs") == [("backup", "ok", 3)]


def test_a_run_with_nothing_to_do_makes_no_s3_request(setup: Setup, s3_proxy: S3Proxy) -> None:
    _tree(setup)
    assert setup.run().returncode == 0
    s3_proxy.reset_counts()

    result = setup.run()

    assert result.returncode == 0, result.stderr
    assert s3_proxy.total == 0, s3_proxy.log
    assert "0 S3 requests" in result.stdout


def test_changed_added_and_deleted_files(setup: Setup, s3: Any, s3_proxy: S3Proxy) -> None:
    folder = _tree(setup)
    assert setup.run().returncode == 0
    bucket = setup.bucket(folder)
    first = latest_versions(s3, bucket)
    setup.file("Taufbuch 1890/0001.tif", b"C" * 1000, mtime=1_700_000_000)  # same size, new mtime
    setup.file("Taufbuch 1890/new.tif", b"new")
    (folder / "sub dir/0002 ü.jpg").unlink()
    s3_proxy.reset_counts()

    result = setup.run()

    assert result.returncode == 0, result.stderr
    assert "uploaded 2/2 files" in result.stdout and "deleted 1/1" in result.stdout
    # Two PUTs, one DeleteObjects, and three GETs checking the bucket's settings.
    assert s3_proxy.requests == {
        "PUT object": 2,
        "POST delete": 1,
        "GET versioning": 1,
        "GET lifecycle": 1,
        "GET policy": 1,
    }, s3_proxy.requests
    latest = latest_versions(s3, bucket)
    assert set(latest) == {
        _key(folder / "0001.tif"),
        _key(folder / "new.tif"),
        _key(folder / "empty.tif"),
    }
    changed = _key(folder / "0001.tif")
    assert latest[changed]["VersionId"] != first[changed]["VersionId"]
    markers = s3.list_object_versions(Bucket=bucket).get("DeleteMarkers", [])
    assert [m["Key"] for m in markers] == [_key(folder / "sub dir/0002 ü.jpg")]
    # The deleted file's data stays as a noncurrent version (lifecycle expires it later).
    versions = s3.list_object_versions(Bucket=bucket)["Versions"]
    assert any(v["Key"] == _key(folder / "sub dir/0002 ü.jpg") for v in versions)
    rows = setup.db(f'SELECT path, state FROM "{setup.table(folder)}" ORDER BY path')
    assert rows == [("0001.tif", "backed_up"), ("empty.tif", "backed_up"), ("new.tif", "backed_up")]


def test_dry_run_changes_nothing_and_reports_the_work(
    setup: Setup, s3: Any, s3_proxy: S3Proxy, httpserver: Any
) -> None:
    folder = _tree(setup)
    setup.write_config(notification__webhook=httpserver.url_for("/hook"))
    (setup.images / "bad\udcff.tif").parent.mkdir(exist_ok=True)

    result = setup.run("--dry-run")

    assert result.returncode == 0, result.stderr
    assert "would upload 3 files (2.9 KiB)" in result.stdout
    assert s3.list_buckets()["Buckets"] == []
    assert not (setup.cache / "state.db").exists()
    assert httpserver.log == []

    assert setup.run().returncode == 0
    setup.file("Taufbuch 1890/new.tif", b"12345")
    (folder / "empty.tif").unlink()
    db_before = (setup.cache / "state.db").read_bytes()
    s3_proxy.reset_counts()

    result = setup.run("--dry-run")

    assert result.returncode == 0, result.stderr
    assert "would upload 1 files (5 B), would delete 1 files (0 B)" in result.stdout
    assert (setup.cache / "state.db").read_bytes() == db_before
    assert s3_proxy.total == 0
    assert len(latest_versions(s3, setup.bucket(folder))) == 3


def test_reset_rebuilds_the_tables_without_uploading_again(
    setup: Setup, s3: Any, s3_proxy: S3Proxy
) -> None:
    folder = _tree(setup)
    assert setup.run().returncode == 0
    setup.file("Taufbuch 1890/changed-size.tif", b"x")
    assert setup.run().returncode == 0
    setup.file("Taufbuch 1890/changed-size.tif", b"xyz")  # changed since its upload
    setup.file("Taufbuch 1890/brand-new.tif", b"new")
    s3_proxy.reset_counts()

    result = setup.run("--reset")

    assert result.returncode == 0, result.stderr
    assert "3 found already in the bucket" in result.stdout
    assert "uploaded 2/2 files" in result.stdout
    assert s3_proxy.requests["PUT object"] == 2
    rows = dict(setup.db(f'SELECT path, state FROM "{setup.table(folder)}"'))
    assert set(rows.values()) == {"backed_up"} and len(rows) == 5
    s3_proxy.reset_counts()
    assert setup.run().returncode == 0
    assert s3_proxy.total == 0


def test_lost_state_database_adopts_the_bucket_and_deletes_what_is_gone(
    setup: Setup, s3: Any, s3_proxy: S3Proxy
) -> None:
    folder = _tree(setup)
    assert setup.run().returncode == 0
    bucket = setup.bucket(folder)
    (setup.cache / "state.db").unlink()
    (folder / "empty.tif").unlink()
    s3_proxy.reset_counts()

    result = setup.run()

    assert result.returncode == 0, result.stderr
    assert setup.bucket(folder) == bucket  # derived again, the same
    assert s3_proxy.requests["PUT object"] == 0
    assert "deleted 1/1" in result.stdout
    assert set(latest_versions(s3, bucket)) == {
        _key(folder / "0001.tif"),
        _key(folder / "sub dir/0002 ü.jpg"),
    }


def test_roots_give_one_bucket_per_subfolder(setup: Setup, s3: Any) -> None:
    root = setup.images / "archive"
    setup.file("archive/Wien/a.tif", b"1")
    setup.file("archive/Graz/b.tif", b"2")
    setup.file("archive/loose-file.tif", b"not in a subfolder: not backed up, but reported")
    setup.write_config(backup__roots=[str(root)])

    result = setup.run()

    assert result.returncode == 1, result.stderr  # the loose file (tests/test_roots.py)
    assert f"{root}/loose-file.tif: backup.roots[0]: a file lying directly" in result.stderr
    buckets = sorted(b["Name"] for b in s3.list_buckets()["Buckets"])
    assert [b.rsplit("-", 1)[0] for b in buckets] == ["graz", "wien"]
    assert set(latest_versions(s3, setup.bucket(root / "Wien"))) == {_key(root / "Wien/a.tif")}


def test_multipart_upload_of_a_large_file(setup: Setup, s3: Any) -> None:
    folder = setup.images / "big"
    data = os.urandom(12 * 1024 * 1024)
    setup.file("big/scan.tif", data)
    setup.write_config(
        backup__folders=[str(folder)], backup__part_size_mb=5, backup__multipart_threshold_mb=5
    )

    result = setup.run()

    assert result.returncode == 0, result.stderr
    bucket = setup.bucket(folder)
    head = s3.head_object(Bucket=bucket, Key=_key(folder / "scan.tif"))
    assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + 2 MiB
    assert head["StorageClass"] == "DEEP_ARCHIVE"
    assert head["ContentLength"] == len(data)
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    rows = setup.db(f'SELECT state, hex(sha256) FROM "{setup.table(folder)}"')
    assert rows == [("backed_up", hashlib.sha256(data).hexdigest().upper())]


def test_errors_are_counted_reported_once_and_do_not_stop_the_rest(
    setup: Setup, s3: Any, httpserver: Any
) -> None:
    folder = _tree(setup)
    os.mkfifo(folder / "a-fifo")  # skipped: not a regular file
    os.symlink("/etc/passwd", folder / "a-link")  # skipped: symlinks are not followed
    bad_name = os.fsencode(str(folder)) + b"/bad-\xff.tif"
    with open(bad_name, "wb") as handle:
        handle.write(b"x")
    missing = setup.images / "not-mounted"
    httpserver.expect_request("/webhook/abc", method="POST").respond_with_data("", status=202)
    webhook = httpserver.url_for("/webhook/abc") + "?api-version=1&sig=SECRETSIG"
    setup.write_config(backup__folders=[str(folder), str(missing)], notification__webhook=webhook)

    result = setup.run()

    assert result.returncode == 1, result.stderr
    assert "uploaded 3/3 files" in result.stdout
    assert "2 errors" in result.stdout
    assert len(httpserver.log) == 1
    payload = httpserver.log[0][0].get_json()
    assert payload["type"] == "message"
    attachment = payload["attachments"][0]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card_text = str(attachment["content"])
    assert "not valid UTF-8" in card_text and "not-mounted" in card_text
    assert len(httpserver.log[0][0].get_data()) < 28_000
    problems = setup.db("SELECT operation, message FROM problems ORDER BY id")
    assert len(problems) == 2
    log = (setup.cache / "matricula-backup.log").read_text()
    assert "SECRETSIG" not in log and "test-secret-never-logged" not in log
    assert "SECRETSIG" not in result.stdout + result.stderr
    assert set(latest_versions(s3, setup.bucket(folder))) == {
        _key(folder / "0001.tif"),
        _key(folder / "sub dir/0002 ü.jpg"),
        _key(folder / "empty.tif"),
    }


def test_a_failing_webhook_does_not_change_the_outcome(setup: Setup, httpserver: Any) -> None:
    _tree(setup)
    httpserver.expect_request("/hook").respond_with_data("boom", status=500)
    missing = setup.images / "gone"
    setup.write_config(
        backup__folders=[*setup.config["backup"]["folders"], str(missing)],
        notification__webhook=httpserver.url_for("/hook"),
    )

    result = setup.run()

    assert result.returncode == 1
    assert "uploaded 3/3 files" in result.stdout
    assert "Teams notification" in (setup.cache / "matricula-backup.log").read_text()


def test_an_empty_folder_deletes_nothing(setup: Setup, s3: Any) -> None:
    folder = _tree(setup)
    assert setup.run().returncode == 0
    for path in sorted(folder.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()

    result = setup.run()

    assert result.returncode == 1
    assert "folder is empty but 3 files of it are in the bucket" in result.stdout + str(
        setup.db("SELECT message FROM problems")
    )
    assert len(latest_versions(s3, setup.bucket(folder))) == 3


def test_a_second_run_exits_at_once_while_the_lock_is_held(setup: Setup) -> None:
    import fcntl

    _tree(setup)
    with open(setup.cache / "lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        started = time.monotonic()
        result = setup.run()
    assert result.returncode == 2
    assert "another matricula-backup run holds the lock" in result.stderr
    assert time.monotonic() - started < 30
    assert not (setup.cache / "state.db").exists()


def test_python_dash_m_works(setup: Setup) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "matricula_backup", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "--dry-run" in result.stdout


def test_bucket_prefix_applies_until_a_bucket_is_set_up_then_never_changes(
    setup: Setup, s3: Any
) -> None:
    folder = setup.images / "Band"
    folder.mkdir()
    setup.write_config(backup__folders=[str(folder)])
    assert setup.run().returncode == 0  # empty folder: nothing uploaded, no bucket yet
    setup.write_config(backup__bucket_prefix="matricula-")
    setup.file("Band/a.tif", b"a")
    assert setup.run().returncode == 0
    bucket = setup.bucket(folder)
    assert bucket.startswith("matricula-band-")
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == [bucket]

    setup.write_config(backup__bucket_prefix="other-")
    setup.file("Band/b.tif", b"b")
    result = setup.run()

    assert result.returncode == 0, result.stderr
    assert setup.bucket(folder) == bucket
    assert "keeps its recorded bucket" in (setup.cache / "matricula-backup.log").read_text()
    assert len(latest_versions(s3, bucket)) == 2


def test_verbose_logs_why_each_file_is_uploaded(setup: Setup) -> None:
    _tree(setup)
    assert setup.run().returncode == 0
    setup.file("Taufbuch 1890/0001.tif", b"A" * 1000, mtime=1_700_000_000)
    setup.file("Taufbuch 1890/empty.tif", b"now longer")
    setup.file("Taufbuch 1890/fresh.tif", b"new")

    result = setup.run("--verbose")

    assert result.returncode == 0
    log = (setup.cache / "matricula-backup.log").read_text()
    assert "upload (changed mtime): " in log and "0001.tif" in log
    assert "upload (changed size): " in log
    assert "upload (new): " in log


def test_sigterm_stops_records_what_s3_confirmed_and_the_next_run_finishes(
    setup: Setup, s3_proxy: S3Proxy
) -> None:
    import signal
    import subprocess

    from tests.conftest import CLI

    folder = setup.images / "many"
    for number in range(400):
        setup.file(f"many/{number:04d}.tif", os.urandom(2000))
    setup.write_config(backup__folders=[str(folder)], backup__workers=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    process = subprocess.Popen(
        [CLI, "--cache", str(setup.cache)], env=env, stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while s3_proxy.requests["PUT object"] < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 130

    put_before = s3_proxy.requests["PUT object"]
    assert 20 <= put_before < 400
    table = setup.table(folder)
    recorded = setup.db(f"SELECT count(*) FROM \"{table}\" WHERE state = 'backed_up'")[0][0]
    assert recorded == put_before  # every upload S3 confirmed is recorded
    assert setup.db("SELECT outcome FROM runs") == [("interrupted",)]

    result = setup.run()

    assert result.returncode == 0, result.stderr
    assert s3_proxy.requests["PUT object"] == 400  # nothing uploaded twice
    assert setup.db(f"SELECT count(*) FROM \"{table}\" WHERE state = 'backed_up'") == [(400,)]


def test_a_bucket_name_taken_by_another_account_fails_that_folder_only(
    setup: Setup, s3: Any
) -> None:
    from matricula_backup.folders import bucket_name

    taken = setup.images / "Taken"
    fine = _tree(setup)
    setup.file("Taken/a.tif", b"a")
    setup.write_config(backup__folders=[str(taken), str(fine)])

    def as_other_account(request: Any, **_: Any) -> None:
        request.headers["x-moto-account-id"] = "111122223333"  # moto's multi-account header

    s3.meta.events.register("before-sign.s3", as_other_account)
    s3.create_bucket(
        Bucket=bucket_name(taken), CreateBucketConfiguration={"LocationConstraint": "eu-central-1"}
    )

    result = setup.run()

    assert result.returncode == 1
    assert "is taken by another AWS account. Set backup.bucket_prefix" in result.stderr
    assert "uploaded 3/3 files" in result.stdout  # the other folder went on

    setup.write_config(backup__bucket_prefix="matricula-")
    result = setup.run()

    assert result.returncode == 0, result.stderr
    assert setup.bucket(taken).startswith("matricula-taken-")
    assert setup.bucket(fine) == bucket_name(fine)  # set up before: never changes


def test_losing_many_files_at_once_deletes_nothing_unless_allowed(setup: Setup, s3: Any) -> None:
    folder = setup.images / "Band"
    for number in range(30):
        setup.file(f"Band/{number:02d}.tif", b"x")
    setup.write_config(backup__folders=[str(folder)])
    assert setup.run().returncode == 0
    for number in range(12):  # 40% > the default 20%
        (folder / f"{number:02d}.tif").unlink()

    refused = setup.run()

    assert refused.returncode == 1
    assert "12 of 30 files (40%) are gone from disk" in refused.stderr
    assert "--allow-mass-delete" in refused.stderr
    assert len(latest_versions(s3, setup.bucket(folder))) == 30

    allowed = setup.run("--allow-mass-delete")

    assert allowed.returncode == 0, allowed.stderr
    assert "deleted 12/12" in allowed.stdout
    assert len(latest_versions(s3, setup.bucket(folder))) == 18


def test_max_delete_percent_is_configurable(setup: Setup, s3: Any) -> None:
    folder = setup.images / "Band"
    for number in range(30):
        setup.file(f"Band/{number:02d}.tif", b"x")
    setup.write_config(backup__folders=[str(folder)], backup__max_delete_percent=50)
    assert setup.run().returncode == 0
    for number in range(12):
        (folder / f"{number:02d}.tif").unlink()

    result = setup.run()

    assert result.returncode == 0, result.stderr
    assert "deleted 12/12" in result.stdout


def test_touched_files_are_not_uploaded_again(setup: Setup, s3_proxy: S3Proxy) -> None:
    """A Deep Archive PUT plus a second copy billed for 180 days, for unchanged bytes:
    a file whose mtime changed but whose SHA-256 equals the upload's is only recorded."""
    folder = _tree(setup)
    big = os.urandom(6 * 1024 * 1024)
    setup.file("Taufbuch 1890/big.tif", big)
    setup.write_config(backup__multipart_threshold_mb=5, backup__part_size_mb=5)
    assert setup.run().returncode == 0
    for rel in ("0001.tif", "empty.tif", "big.tif"):
        os.utime(folder / rel, (1_800_000_000, 1_800_000_000))  # touch, same bytes
    s3_proxy.reset_counts()

    result = setup.run()

    assert result.returncode == 0, result.stderr
    assert "3 unchanged (only touched, same bytes: not uploaded)" in result.stdout
    assert s3_proxy.requests["PUT object"] == 0
    assert s3_proxy.requests["POST uploads"] == 0
    table = setup.table(folder)
    rows = setup.db(
        f"SELECT path, mtime_ns, state FROM \"{table}\" WHERE path != 'sub dir/0002 ü.jpg'"
    )
    assert sorted(rows) == [
        ("0001.tif", 1_800_000_000 * 10**9, "backed_up"),
        ("big.tif", 1_800_000_000 * 10**9, "backed_up"),
        ("empty.tif", 1_800_000_000 * 10**9, "backed_up"),
    ]
    s3_proxy.reset_counts()
    assert setup.run().returncode == 0
    assert s3_proxy.total == 0


def test_a_lock_held_for_days_is_reported_to_teams(setup: Setup, httpserver: Any) -> None:
    import fcntl

    _tree(setup)
    httpserver.expect_request("/hook").respond_with_data("", status=202)
    setup.write_config(notification__webhook=httpserver.url_for("/hook"))
    with open(setup.cache / "lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        handle.write(f"pid 4242 on imageserver, since two days ago [{int(time.time()) - 3600}]\n")
        handle.flush()
        fresh = setup.run()  # held for an hour: a long run, nothing to tell
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid 4242 on imageserver, since long ago [{int(time.time()) - 80 * 3600}]\n")
        handle.flush()
        stuck = setup.run()

    assert fresh.returncode == 2 and stuck.returncode == 2
    assert "(pid 4242 on imageserver, since long ago)" in stuck.stderr
    assert len(httpserver.log) == 1
    assert "pid 4242" in json.dumps(httpserver.log[0][0].get_json())
