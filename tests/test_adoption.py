"""Adoption keeps what is known: after a lost state.db (or --reset) a file is
uploaded only when its bytes are not already the bucket's latest version,
whatever the order of lost state, refused deletes and returning files.

Counted from the server's side, through the proxy: PUT requests (Deep Archive
PUTs are what costs) and the HEADs that replace them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from testkit.proxy import S3Proxy
from tests.conftest import Setup

FILES = 30


def _band(setup: Setup) -> Path:
    folder = setup.images / "Band"
    for number in range(FILES):
        setup.file(f"Band/{number:04d}.tif", os.urandom(200 + number))
    setup.write_config(backup__folders=[str(folder)])
    return folder


def _versions(s3: Any, bucket: str) -> int:
    return sum(
        len(page.get("Versions", []))
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket)
    )


def _unmount(folder: Path) -> Path:
    """The disk goes away: the folder is there, empty (its mount point)."""
    away = folder.with_name(folder.name + ".unmounted")
    folder.rename(away)
    folder.mkdir()
    return away


def _mount(folder: Path, away: Path) -> None:
    folder.rmdir()
    away.rename(folder)  # the files come back as they were, mtimes included


def _lose_state(setup: Setup) -> None:
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (setup.cache / name).unlink(missing_ok=True)


@pytest.mark.parametrize("how", ["state.db lost", "--reset"])
def test_files_back_after_a_lost_state_while_unmounted_are_not_uploaded_again(
    setup: Setup, s3: Any, s3_proxy: S3Proxy, how: str
) -> None:
    folder = _band(setup)
    assert setup.run().returncode == 0
    bucket = setup.bucket(folder)
    assert _versions(s3, bucket) == FILES

    away = _unmount(folder)
    if how == "state.db lost":
        _lose_state(setup)
    refused = setup.run(*(["--reset"] if how == "--reset" else []))
    assert refused.returncode == 1
    assert f"folder is empty but {FILES} files of it are in the bucket" in refused.stderr

    _mount(folder, away)
    s3_proxy.reset_counts()
    result = setup.run()

    assert result.returncode == 0, result.stderr
    assert s3_proxy.requests["PUT object"] == 0
    assert s3_proxy.requests["HEAD object"] == FILES  # one HEAD per returning file
    assert f"{FILES} found already in the bucket" in result.stdout
    assert _versions(s3, bucket) == FILES  # not 60
    rows = setup.db(f'SELECT state, length(sha256) FROM "{setup.table(folder)}"')
    assert rows == [("backed_up", 32)] * FILES  # what the HEADs told is kept
    s3_proxy.reset_counts()
    assert setup.run().returncode == 0
    assert s3_proxy.total == 0  # and nothing is asked again


def test_one_file_really_changed_among_the_returning_ones_is_the_only_upload(
    setup: Setup, s3: Any, s3_proxy: S3Proxy
) -> None:
    folder = _band(setup)
    assert setup.run().returncode == 0
    bucket = setup.bucket(folder)
    away = _unmount(folder)
    _lose_state(setup)
    assert setup.run().returncode == 1  # mass delete refused
    _mount(folder, away)
    changed = folder / "0007.tif"
    changed.write_bytes(os.urandom(len(changed.read_bytes())))  # same size, other bytes
    touched = folder / "0008.tif"
    os.utime(touched, (time.time() + 60, time.time() + 60))  # same bytes, new mtime
    s3_proxy.reset_counts()

    result = setup.run()

    assert result.returncode == 0, result.stderr
    assert s3_proxy.requests["PUT object"] == 1
    assert "uploaded 1/1 files" in result.stdout
    assert f"{FILES - 1} found already in the bucket" in result.stdout
    assert _versions(s3, bucket) == FILES + 1
    head = s3.head_object(Bucket=bucket, Key=str(changed).lstrip("/"))
    assert head["ContentLength"] == changed.stat().st_size
    s3_proxy.reset_counts()
    assert setup.run().returncode == 0
    assert s3_proxy.total == 0


def test_state_lost_while_the_files_are_there(setup: Setup, s3: Any, s3_proxy: S3Proxy) -> None:
    folder = _band(setup)
    assert setup.run().returncode == 0
    bucket = setup.bucket(folder)
    # Touched after their upload (a copy without -p, a tool that rewrote the
    # mtime): the listing's LastModified no longer vouches for them.
    later = time.time() + 3600
    for number in range(0, FILES, 3):
        os.utime(folder / f"{number:04d}.tif", (later, later))
    _lose_state(setup)
    s3_proxy.reset_counts()

    result = setup.run()

    assert result.returncode == 0, result.stderr
    assert s3_proxy.requests["PUT object"] == 0
    # A listing proves no bytes: every file is compared with the SHA-256 S3 computed
    # of its object (one HEAD each, one read of the file), touched or not.
    assert s3_proxy.requests["HEAD object"] == FILES
    assert f"{FILES} found already in the bucket" in result.stdout
    assert _versions(s3, bucket) == FILES
    rows = setup.db(f'SELECT state, length(sha256) FROM "{setup.table(folder)}"')
    assert rows == [("backed_up", 32)] * FILES


def test_state_lost_twice_with_the_disk_away_then_the_files_return(
    setup: Setup, s3: Any, s3_proxy: S3Proxy
) -> None:
    folder = _band(setup)
    assert setup.run().returncode == 0
    bucket = setup.bucket(folder)
    away = _unmount(folder)
    _lose_state(setup)
    assert setup.run().returncode == 1
    _lose_state(setup)
    assert setup.run("--reset").returncode == 1
    _mount(folder, away)
    (folder / "new.tif").write_bytes(b"a new scan")
    s3_proxy.reset_counts()

    result = setup.run()

    assert result.returncode == 0, result.stderr
    assert s3_proxy.requests["PUT object"] == 1  # the new file, nothing else
    assert _versions(s3, bucket) == FILES + 1


@pytest.mark.parametrize("checksum", ["no checksum", "SHA-256 of its own bytes"])
@pytest.mark.parametrize("how", ["state.db lost", "--reset"])
def test_a_planted_object_with_the_files_size_and_metadata_is_not_adopted(
    setup: Setup, s3: Any, s3_proxy: S3Proxy, checksum: str, how: str
) -> None:
    """Whoever holds the keys plants other bytes with the size, mtime and sha256
    metadata of the real file (copied from a HEAD of the real object), then
    state.db is lost: the file is uploaded again, the planted bytes are not
    taken for its backup. (moto does not check a ChecksumSHA256 sent with a PUT;
    S3 refuses a wrong one with BadDigest, so an attacker can only send the
    SHA-256 of the bytes they send, or none.)"""
    folder = _band(setup)
    assert setup.run().returncode == 0
    bucket = setup.bucket(folder)
    target = folder / "0005.tif"
    key = str(target).lstrip("/")
    real = s3.head_object(Bucket=bucket, Key=key)
    planted = os.urandom(target.stat().st_size)
    extra = (
        {"ChecksumAlgorithm": "SHA256", "ChecksumSHA256": _b64(hashlib.sha256(planted))}
        if checksum != "no checksum"
        else {}
    )
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=planted,
        Metadata=real["Metadata"],
        StorageClass="DEEP_ARCHIVE",
        **extra,
    )
    if how == "state.db lost":
        _lose_state(setup)
    s3_proxy.reset_counts()

    result = setup.run(*(["--reset"] if how == "--reset" else []))

    assert result.returncode == 0, result.stderr
    assert s3_proxy.requests["PUT object"] == 1  # the file whose object was replaced
    assert s3_proxy.requests["HEAD object"] == FILES
    assert "uploaded 1/1 files" in result.stdout
    assert f"{FILES - 1} found already in the bucket" in result.stdout
    assert _versions(s3, bucket) == FILES + 2
    latest = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert latest["ChecksumSHA256"] == _b64(hashlib.sha256(target.read_bytes()))
    sha256 = setup.db(f'SELECT hex(sha256) FROM "{setup.table(folder)}" WHERE path = ?', "0005.tif")
    assert sha256 == [(hashlib.sha256(target.read_bytes()).hexdigest().upper(),)]


def test_an_object_without_a_checksum_from_s3_is_uploaded_again(
    setup: Setup, s3: Any, s3_proxy: S3Proxy
) -> None:
    """An object some other tool wrote without a checksum (the same bytes, the
    same size): nothing S3 computed proves its bytes, so the file is uploaded."""
    folder = _band(setup)
    assert setup.run().returncode == 0
    bucket = setup.bucket(folder)
    target = folder / "0003.tif"
    key = str(target).lstrip("/")
    s3.put_object(Bucket=bucket, Key=key, Body=target.read_bytes(), StorageClass="DEEP_ARCHIVE")
    _lose_state(setup)
    s3_proxy.reset_counts()

    result = setup.run()

    assert result.returncode == 0, result.stderr
    assert s3_proxy.requests["PUT object"] == 1
    assert f"{FILES - 1} found already in the bucket" in result.stdout


def _b64(digest: Any) -> str:
    return base64.b64encode(digest.digest()).decode()
