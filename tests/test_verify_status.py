"""verify finds what was done to a bucket behind the tool's back; status reads state.db."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from testkit.proxy import S3Proxy
from tests.conftest import Setup


def _backed_up(setup: Setup) -> tuple[Path, str]:
    folder = setup.images / "Band"
    for name in ("a.tif", "b.tif", "c.tif"):
        setup.file(f"Band/{name}", name.encode() * 100)
    setup.write_config(backup__folders=[str(folder)])
    assert setup.run().returncode == 0
    return folder, setup.bucket(folder)


def _key(path: Path) -> str:
    return str(path).lstrip("/")


def test_a_clean_bucket_has_no_findings_even_deep(setup: Setup, s3_proxy: S3Proxy) -> None:
    _backed_up(setup)
    s3_proxy.reset_counts()

    result = setup.run("verify", "--deep")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 files in state.db, 3 objects in the bucket, 3 checksums checked" in result.stdout
    assert "0 findings" in result.stdout
    assert s3_proxy.requests["GET versions"] == 1  # one listing, not a request per object
    assert s3_proxy.requests["HEAD object"] == 3  # --deep: one HEAD per file


def test_tampering_is_found_and_missing_objects_are_uploaded_next_run(
    setup: Setup, s3: Any
) -> None:
    folder, bucket = _backed_up(setup)
    gone = _key(folder / "a.tif")
    for version in s3.list_object_versions(Bucket=bucket, Prefix=gone)["Versions"]:
        s3.delete_object(Bucket=bucket, Key=gone, VersionId=version["VersionId"])
    s3.put_object(
        Bucket=bucket, Key=_key(folder / "stray.tif"), Body=b"?", StorageClass="DEEP_ARCHIVE"
    )
    s3.put_object(
        Bucket=bucket, Key=_key(folder / "b.tif"), Body=b"other size", StorageClass="DEEP_ARCHIVE"
    )
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    s3.delete_bucket_lifecycle(Bucket=bucket)

    result = setup.run("verify")

    assert result.returncode == 1
    out = result.stdout
    assert f"missing: {folder}/a.tif: recorded as backed up, not in the bucket" in out
    assert f"size: {folder}/b.tif: 10 bytes in the bucket, 500 recorded" in out
    assert f"stray: {folder}/stray.tif: in the bucket, unknown to state.db" in out
    assert "versioning: " in out and "versioning is Suspended" in out
    assert "lifecycle: " in out
    assert "2 queued for upload" in out
    table = setup.table(folder)
    assert setup.db(f'SELECT path, state FROM "{table}" ORDER BY path') == [
        ("a.tif", "pending"),
        ("b.tif", "pending"),
        ("c.tif", "backed_up"),
    ]

    backup = setup.run()

    assert "uploaded 2/2 files" in backup.stdout  # repaired by the next run
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    again = setup.run("verify")
    assert "missing" not in again.stdout and "size:" not in again.stdout
    assert "versioning:" not in again.stdout and "lifecycle:" not in again.stdout


def test_deep_verify_finds_a_checksum_that_differs(setup: Setup, s3: Any) -> None:
    folder, bucket = _backed_up(setup)
    table = setup.table(folder)
    import sqlite3
    from contextlib import closing

    # As if the upload had had other bytes:
    with closing(sqlite3.connect(setup.cache / "state.db")) as conn, conn:
        conn.execute(f"UPDATE \"{table}\" SET sha256 = zeroblob(32) WHERE path = 'c.tif'")

    result = setup.run("verify", "--deep")

    assert result.returncode == 1
    assert f"checksum: {folder}/c.tif: metadata sha256" in result.stdout
    assert "differs from 0000" in result.stdout


def test_status_shows_each_folder_and_the_runs(setup: Setup) -> None:
    folder, bucket = _backed_up(setup)
    setup.file("Band/d.tif", b"dd")

    text = setup.run("status")
    as_json = setup.run("status", "--json")

    assert text.returncode == 0 and as_json.returncode == 0
    assert f"{folder} -> s3://{bucket}: 3 files (1.5 KiB) backed up; 0 to upload" in text.stdout
    assert "last successful run: #1" in text.stdout
    data = json.loads(as_json.stdout)
    assert data["folders"][0]["files_backed_up"] == 3
    assert data["folders"][0]["bytes_backed_up"] == 1500
    assert data["last_run"]["outcome"] == "ok"
    assert data["last_successful_run"]["files_uploaded"] == 3


def test_status_before_any_backup(setup: Setup) -> None:
    result = setup.run("status")
    assert result.returncode == 0
    assert "no backup has run yet" in result.stdout
    assert not (setup.cache / "state.db").exists()


def test_history_lists_runs_with_per_folder_counts(setup: Setup) -> None:
    folder, _bucket = _backed_up(setup)
    setup.file("Band/d.tif", b"dd")
    (folder / "a.tif").unlink()
    assert setup.run().returncode == 0

    text = setup.run("history")
    data = json.loads(setup.run("history", "--json", "--last", "1").stdout)

    lines = text.stdout.splitlines()
    assert lines[0].startswith("#2 ") and "backup ok" in lines[0]
    assert "1 files (2 B) uploaded, 1 deleted, 0 errors" in lines[0]
    assert f"    {folder}: 3 files, 1 uploaded (2 B), 1 deleted" in lines[1]
    assert lines[2].startswith("#1 ") and "3 files (1.5 KiB) uploaded" in lines[2]
    assert len(data) == 1 and data[0]["folders"][0]["files_uploaded"] == 1
    assert data[0]["folders"][0]["s3_requests"] == 5  # 3 bucket checks, 1 PUT, 1 DeleteObjects


def test_an_object_outside_the_folders_prefix_is_a_stray_finding(
    setup: Setup, s3: Any, s3_proxy: S3Proxy
) -> None:
    folder, bucket = _backed_up(setup)
    # A right-to-left override and a DEL in the key: printed escaped, not as they are.
    planted = "elsewhere/note\u202etxt.exe\x7f"
    s3.put_object(Bucket=bucket, Key=planted, Body=b"?")
    s3_proxy.reset_counts()

    result = setup.run("verify")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "3 files in state.db, 4 objects in the bucket" in result.stdout
    assert (
        f"stray: s3://{bucket}: object elsewhere/note\\u202etxt.exe\\x7f lies outside this "
        f"folder's prefix {_key(folder)}/" in result.stdout
    )
    assert "\u202e" not in result.stdout and "\x7f" not in result.stdout
    assert "1 findings" in result.stdout
    assert s3_proxy.requests["GET versions"] == 1  # still one listing for the whole bucket
