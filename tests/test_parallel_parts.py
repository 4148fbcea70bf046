"""The parts of a large file go in parallel, within ``backup.workers`` requests in all.

Seen from the server's side, through a proxy that holds every request for a
moment (a model of a far region) and counts how many are in flight at once:
the parts of one file overlap, the small files and the parts together never
exceed ``backup.workers``; a part that fails is retried while the others go
on, the object's SHA-256 is still checked; a part that keeps failing, or a
SIGTERM, aborts the upload once the parts in flight are done, and the next
run sends the file whole.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.proxy import S3Proxy
from tests.conftest import CLI, Setup, latest_versions

MiB = 1024 * 1024


@pytest.fixture()
def slow(setup: Setup, moto_url: str) -> Iterator[S3Proxy]:
    """Holds each request 0.25 s; ``most`` has the most requests in flight at once."""
    proxy = S3Proxy(moto_url, delay_ms=250).start()
    setup.write_config(aws__endpoint_url=proxy.url)
    yield proxy
    proxy.stop()


@pytest.fixture()
def faults(setup: Setup, moto_url: str) -> Iterator[S3Proxy]:
    proxy = S3Proxy(moto_url, seed=13).start()
    setup.write_config(aws__endpoint_url=proxy.url)
    yield proxy
    proxy.stop()


def _key(path: Path) -> str:
    return str(path).lstrip("/")


def _large(setup: Setup, rel: str, mib: int, seed: int) -> Path:
    return setup.file(rel, random.Random(seed).randbytes(mib * MiB))


def _assert_whole(setup: Setup, s3: Any, folder: Path, path: Path, parts: int) -> None:
    """The object is the file: size, part count, SHA-256 metadata; state.db agrees."""
    bucket = setup.bucket(folder)
    head = s3.head_object(Bucket=bucket, Key=_key(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert head["ContentLength"] == path.stat().st_size
    assert head["ETag"].strip('"').endswith(f"-{parts}")
    assert head["Metadata"]["sha256"] == digest
    s3.restore_object(Bucket=bucket, Key=_key(path), RestoreRequest={"Days": 1})  # moto: at once
    body = s3.get_object(Bucket=bucket, Key=_key(path))["Body"].read()
    assert hashlib.sha256(body).hexdigest() == digest  # the parts are in their order
    rel = str(path.relative_to(folder))
    row = setup.db(
        f'SELECT state, lower(hex(sha256)), version_id FROM "{setup.table(folder)}" WHERE path = ?',
        rel,
    )
    assert row == [("backed_up", digest, head["VersionId"])]
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_parts_go_in_parallel_and_all_requests_stay_within_the_workers(
    setup: Setup, s3: Any, slow: S3Proxy
) -> None:
    folder = setup.images / "Band"
    big = _large(setup, "Band/big.tif", 40, seed=1)  # 8 parts of 5 MiB
    for number in range(30):
        setup.file(f"Band/small/{number:03d}.tif", os.urandom(2000))
    setup.write_config(
        backup__folders=[str(folder)],
        backup__workers=4,
        backup__multipart_threshold_mb=5,
        backup__part_size_mb=5,
    )
    result = setup.run()

    assert result.returncode == 0, result.stdout + result.stderr
    assert "uploaded 31/31 files" in result.stdout
    assert slow.requests["PUT object"] == 30  # single PUTs, each once
    assert slow.requests["PUT part"] == 8  # and parts, each once
    assert slow.most["PUT part"] >= 2, slow.most  # the parts of one file overlapped
    assert slow.most["all"] <= 4, slow.most  # never more than backup.workers at once
    # The large file went first (its parts overlap the small files, not trail them).
    uploads = [
        line for line in slow.log if line.startswith(("PUT /", "POST /")) and "/Band/" in line
    ]
    started = next(n for n, line in enumerate(uploads) if line.endswith("?uploads"))
    assert started < 4, uploads[:10]  # behind at most the small files of the other workers
    _assert_whole(setup, s3, folder, big, 8)


def test_two_large_files_share_the_workers(setup: Setup, s3: Any, slow: S3Proxy) -> None:
    folder = setup.images / "Band"
    first = _large(setup, "Band/a.tif", 30, seed=2)
    second = _large(setup, "Band/b.tif", 26, seed=3)  # 5 full parts and a short one
    setup.write_config(
        backup__folders=[str(folder)],
        backup__workers=3,
        backup__multipart_threshold_mb=5,
        backup__part_size_mb=5,
    )

    result = setup.run()

    assert result.returncode == 0, result.stdout + result.stderr
    assert slow.most["PUT part"] == 3, slow.most  # the budget filled by parts
    assert slow.most["all"] <= 3, slow.most
    _assert_whole(setup, s3, folder, first, 6)
    _assert_whole(setup, s3, folder, second, 6)


def test_a_failing_part_is_retried_while_the_others_go_on(
    setup: Setup, s3: Any, faults: S3Proxy
) -> None:
    folder = setup.images / "Band"
    big = _large(setup, "Band/big.tif", 50, seed=4)  # 10 parts of 5 MiB
    setup.write_config(
        backup__folders=[str(folder)],
        backup__workers=4,
        backup__multipart_threshold_mb=5,
        backup__part_size_mb=5,
        aws__max_attempts=10,
    )
    faults.configure(rate=0.4, kinds=("slowdown", "internal", "drop"), only={"PUT part"})

    result = setup.run()

    faults.off()
    assert result.returncode == 0, result.stdout + result.stderr
    assert faults.injected >= 2, faults.faults
    assert faults.requests["PUT part"] == 10  # each part reached S3 exactly once
    assert faults.requests["POST uploads"] == 1  # one multipart upload, not restarted
    assert setup.db("SELECT count(*) FROM problems") == [(0,)]
    _assert_whole(setup, s3, folder, big, 10)


def test_a_part_failing_every_attempt_aborts_the_upload_and_the_next_run_sends_it(
    setup: Setup, s3: Any, faults: S3Proxy
) -> None:
    folder = setup.images / "Band"
    big = _large(setup, "Band/big.tif", 30, seed=5)
    setup.write_config(
        backup__folders=[str(folder)],
        backup__workers=4,
        backup__multipart_threshold_mb=5,
        backup__part_size_mb=5,
        aws__max_attempts=2,
    )
    faults.configure(rate=1.0, kinds=("internal",), only={"PUT part"}, methods={"PUT"})

    result = setup.run()

    assert result.returncode == 1, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "big.tif" in output and "InternalError" in output, output
    bucket = setup.bucket(folder)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # aborted
    assert latest_versions(s3, bucket) == {}
    # No part was started after the first one failed for good: at most the
    # first four were in flight (4 workers), each tried twice.
    assert 2 <= faults.faulted["PUT part"] <= 2 * 4, faults.faulted

    faults.off()
    again = setup.run()

    assert again.returncode == 0, again.stdout + again.stderr
    _assert_whole(setup, s3, folder, big, 6)


def test_sigterm_lets_the_parts_in_flight_finish_then_aborts_and_the_next_run_sends_it(
    setup: Setup, s3: Any, slow: S3Proxy
) -> None:
    folder = setup.images / "Band"
    big = _large(setup, "Band/big.tif", 60, seed=6)  # 12 parts
    for number in range(5):
        setup.file(f"Band/small/{number}.tif", os.urandom(1000))
    setup.write_config(
        backup__folders=[str(folder)],
        backup__workers=3,
        backup__multipart_threshold_mb=5,
        backup__part_size_mb=5,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    process = subprocess.Popen(
        [CLI, "--cache", str(setup.cache)], env=env, stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while slow.in_flight["PUT part"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 130

    bucket = setup.bucket(folder)
    assert slow.in_flight["all"] == 0
    assert (
        slow.requests["PUT object"] + slow.requests["PUT part"] < 5 + 12
    )  # stopped before all parts went
    assert slow.requests["DELETE upload"] == 1  # AbortMultipartUpload, once
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert _key(big) not in latest_versions(s3, bucket)
    table = setup.table(folder)
    assert setup.db(f"SELECT state FROM \"{table}\" WHERE path = 'big.tif'") != [("backed_up",)]
    assert setup.db("SELECT outcome FROM runs") == [("interrupted",)]

    result = setup.run()

    assert result.returncode == 0, result.stdout + result.stderr
    _assert_whole(setup, s3, folder, big, 12)
    rows = setup.db(f"SELECT count(*) FROM \"{table}\" WHERE state = 'backed_up'")
    assert rows == [(6,)]
