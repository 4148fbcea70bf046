"""S3 faults through testkit/proxy.py: 503 SlowDown, 500, dropped connections,
slow and lost answers, DeleteObjects errors. Every test checks the end state:
the bucket holds exactly the tree (latest versions, metadata) and state.db agrees.
"""

from __future__ import annotations

import hashlib
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

from testkit.proxy import S3Proxy
from tests.conftest import REGION, Setup, latest_versions

MiB = 1024 * 1024


@pytest.fixture()
def faults(setup: Setup, moto_url: str) -> Iterator[S3Proxy]:
    """The fault proxy in front of moto, named in config.json (faults off until configured)."""
    proxy = S3Proxy(moto_url, seed=20241126).start()
    setup.write_config(aws__endpoint_url=proxy.url)
    yield proxy
    proxy.stop()


def _key(path: Path) -> str:
    return str(path).lstrip("/")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _make_tree(setup: Setup, name: str, count: int, seed: int = 1) -> Path:
    rnd = random.Random(seed)
    for number in range(count):
        setup.file(f"{name}/{number // 10}/{number:03d}.tif", rnd.randbytes(rnd.randint(1, 3000)))
    return setup.images / name


def _assert_bucket_and_db_match_tree(setup: Setup, s3: Any, folder: Path) -> None:
    files = {p: p.stat() for p in folder.rglob("*") if p.is_file()}
    bucket = setup.bucket(folder)
    latest = latest_versions(s3, bucket)
    assert {key: v["Size"] for key, v in latest.items()} == {
        _key(p): st.st_size for p, st in files.items()
    }
    for path, st in files.items():
        head = s3.head_object(Bucket=bucket, Key=_key(path))
        assert head["Metadata"]["sha256"] == _sha256(path), path
        seconds, nanos = divmod(st.st_mtime_ns, 1_000_000_000)
        assert head["Metadata"]["mtime"] == f"{seconds}.{nanos:09d}", path
        assert head["StorageClass"] == "DEEP_ARCHIVE"
    rows = setup.db(
        f"SELECT path, size, mtime_ns, state, version_id, lower(hex(sha256)), error "
        f'FROM "{setup.table(folder)}"'
    )
    assert {r[0] for r in rows} == {str(p.relative_to(folder)) for p in files}
    for rel, size, mtime_ns, state, version_id, sha256, error in rows:
        path = folder / rel
        assert (state, error) == ("backed_up", None), rel
        assert (size, mtime_ns) == (files[path].st_size, files[path].st_mtime_ns), rel
        assert version_id == latest[_key(path)]["VersionId"], rel
        assert sha256 == _sha256(path), rel


def test_the_proxy_injects_each_kind_of_fault(s3_proxy: S3Proxy, moto_url: str) -> None:
    """The proxy itself, seen from a plain boto3 client without retries."""
    proxy = S3Proxy(moto_url, delay=4).start()

    def client(read_timeout: float) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=proxy.url,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name=REGION,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "total_max_attempts": 1},
                read_timeout=read_timeout,
            ),
        )

    client, impatient = client(60), client(1)
    try:
        client.create_bucket(
            Bucket="faults", CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        for kind, code in (("slowdown", "SlowDown"), ("internal", "InternalError")):
            proxy.configure(rate=1.0, kinds=(kind,), only={"PUT object"})
            with pytest.raises(ClientError) as raised:
                client.put_object(Bucket="faults", Key="a", Body=b"a")
            assert raised.value.response["Error"]["Code"] == code
        proxy.configure(rate=1.0, kinds=("drop",), only={"PUT object"})
        with pytest.raises(ConnectionClosedError):
            client.put_object(Bucket="faults", Key="a", Body=b"a")
        assert proxy.requests["PUT object"] == 0  # none of these reached the server

        proxy.configure(rate=1.0, kinds=("lost",), methods={"PUT"})
        with pytest.raises(ConnectionClosedError):
            client.put_object(Bucket="faults", Key="lost", Body=b"lost")
        proxy.configure(rate=1.0, kinds=("delay",), only={"PUT object"})
        with pytest.raises(ReadTimeoutError):
            impatient.put_object(Bucket="faults", Key="slow", Body=b"slow")
        assert proxy.requests["PUT object"] == 2  # both reached the server...
        proxy.off()
        # ... and were done there although the client saw an error.
        keys = {o["Key"] for o in client.list_objects_v2(Bucket="faults")["Contents"]}
        assert keys == {"lost", "slow"}

        proxy.configure(rate=1.0, kinds=("delete_errors",), only={"POST delete"})
        answer = client.delete_objects(
            Bucket="faults", Delete={"Objects": [{"Key": "lost"}, {"Key": "a&b <c>"}]}
        )
        assert {e["Key"]: e["Code"] for e in answer["Errors"]} == {
            "lost": "InternalError",
            "a&b <c>": "InternalError",
        }
        proxy.configure(rate=0.5, kinds=("internal",), only={"GET list-v2"})
        for _ in range(20):
            try:
                client.list_objects_v2(Bucket="faults")
            except ClientError:
                pass
        assert 0 < proxy.faulted["GET list-v2"] < 20
        assert proxy.faults == {
            "slowdown": 1,
            "internal": 1 + proxy.faulted["GET list-v2"],
            "drop": 1,
            "lost": 1,
            "delay": 1,
            "delete_errors": 1,
        }
    finally:
        proxy.stop()


@pytest.mark.parametrize("crt", [True, False], ids=["crt", "botocore"])
def test_a_backup_completes_through_30_percent_failing_requests(
    setup: Setup, s3: Any, faults: S3Proxy, crt: bool
) -> None:
    folder = _make_tree(setup, "Band", 50)
    setup.file("Band/big.tif", random.Random(2).randbytes(11 * MiB))  # 5 + 5 + 1 MiB parts
    setup.write_config(
        backup__folders=[str(folder)],
        backup__multipart_threshold_mb=5,
        backup__part_size_mb=5,
        backup__workers=4,
        aws__max_attempts=10,
        aws__crt=crt,
    )
    faults.configure(rate=0.3, kinds=("slowdown", "internal", "drop"))

    result = setup.run()

    faults.off()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "uploaded 51/51 files" in result.stdout
    assert faults.injected >= 10, faults.faults
    assert set(faults.faults) == {"slowdown", "internal", "drop"}, faults.faults
    _assert_bucket_and_db_match_tree(setup, s3, folder)
    # No fault let a request through, so each file and part reached S3 exactly once.
    assert faults.requests["PUT object"] == 50
    assert faults.requests["PUT part"] == 3
    assert faults.requests["POST uploads"] == 1  # CreateMultipartUpload
    head = s3.head_object(Bucket=setup.bucket(folder), Key=_key(folder / "big.tif"))
    assert head["ETag"].strip('"').endswith("-3")
    runs = setup.db("SELECT outcome, errors, files_uploaded, s3_requests FROM runs")
    assert runs[0][:3] == ("ok", 0, 51)
    if crt:  # the CRT's own retries of a single PUT are not seen: that PUT counts once
        assert faults.total <= runs[0][3] < faults.total + faults.injected
    else:  # botocore's every attempt is counted, the failed ones too
        assert runs[0][3] == faults.total + faults.injected
    assert setup.db("SELECT count(*) FROM problems") == [(0,)]


def test_uploads_failing_every_attempt_are_recorded_and_the_next_run_uploads_them(
    setup: Setup, s3: Any, faults: S3Proxy
) -> None:
    folder = _make_tree(setup, "Band", 20)
    setup.write_config(backup__folders=[str(folder)], aws__max_attempts=2)
    faults.configure(rate=1.0, kinds=("slowdown", "internal", "drop"), only={"PUT object"})

    result = setup.run()

    assert result.returncode == 1, result.stdout + result.stderr
    assert "uploaded 0/20 files" in result.stdout and "20 errors" in result.stdout
    # Every file was tried, and retried (how often: see the max_attempts test below).
    assert faults.injected > 20, faults.faults
    assert faults.requests["PUT object"] == 0
    assert latest_versions(s3, setup.bucket(folder)) == {}
    table = setup.table(folder)
    rows = setup.db(f'SELECT path, state, error, uploaded_at FROM "{table}"')
    assert len(rows) == 20
    for path, state, error, uploaded_at in rows:
        assert state == "failed", path
        assert uploaded_at is None
        assert error.endswith("; it is tried again next run"), error
        assert any(
            text in error
            for text in (
                "SlowDown",
                "InternalError",
                "Connection was closed",  # botocore
                "ConnectionClosed",
                "socket is closed",  # the CRT
            )
        ), error
    problems = setup.db("SELECT run_id, operation, path, message FROM problems")
    assert {p[2] for p in problems} == {str(folder / r[0]) for r in rows}
    assert {(p[0], p[1]) for p in problems} == {(1, "upload")}
    assert setup.db("SELECT outcome, errors, files_uploaded FROM runs") == [("errors", 20, 0)]

    faults.off()
    result = setup.run()

    assert result.returncode == 0, result.stdout + result.stderr
    assert "uploaded 20/20 files" in result.stdout
    _assert_bucket_and_db_match_tree(setup, s3, folder)
    assert faults.requests["PUT object"] == 20  # no file was uploaded twice overall
    assert setup.db("SELECT count(*) FROM problems WHERE run_id = 2") == [(0,)]
    assert setup.db("SELECT outcome FROM runs ORDER BY id") == [("errors",), ("ok",)]


@pytest.mark.parametrize(
    "kinds",
    [("slowdown", "internal", "drop"), ("delete_errors",)],
    ids=["request-fails", "per-key-errors"],
)
def test_failed_deletes_are_retried_by_the_next_run(
    setup: Setup, s3: Any, faults: S3Proxy, kinds: tuple[str, ...]
) -> None:
    folder = _make_tree(setup, "Band", 30)
    setup.write_config(backup__folders=[str(folder)], aws__max_attempts=2)
    assert setup.run().returncode == 0
    bucket = setup.bucket(folder)
    gone = [folder / "0" / f"00{n}.tif" for n in range(0, 10, 2)]
    for path in gone:
        path.unlink()
    faults.configure(rate=1.0, kinds=kinds, only={"POST delete"})

    result = setup.run()

    assert result.returncode == 1, result.stdout + result.stderr
    assert "deleted 0/5" in result.stdout
    assert faults.requests["POST delete"] == 0
    assert len(latest_versions(s3, bucket)) == 30  # nothing deleted, no delete marker
    table = setup.table(folder)
    rows = dict(setup.db(f'SELECT path, error FROM "{table}" WHERE error IS NOT NULL'))
    assert set(rows) == {str(p.relative_to(folder)) for p in gone}
    assert all("InternalError" in m or "SlowDown" in m or "Connection" in m for m in rows.values())
    problems = setup.db("SELECT operation, path FROM problems WHERE run_id = 2")
    assert sorted(problems) == sorted(("delete", str(p)) for p in gone)

    faults.off()
    result = setup.run()

    assert result.returncode == 0, result.stdout + result.stderr
    assert "deleted 5/5" in result.stdout
    assert faults.requests["POST delete"] == 1
    _assert_bucket_and_db_match_tree(setup, s3, folder)
    markers = s3.list_object_versions(Bucket=bucket).get("DeleteMarkers", [])
    assert sorted(m["Key"] for m in markers) == sorted(_key(p) for p in gone)


def test_slow_and_lost_answers_end_in_the_same_state(
    setup: Setup, s3: Any, faults: S3Proxy
) -> None:
    """Answers that come late, or never although S3 did the work (the retry repeats it)."""
    folder = _make_tree(setup, "Band", 30)
    setup.file("Band/big.tif", random.Random(3).randbytes(6 * MiB))
    setup.write_config(
        backup__folders=[str(folder)],
        backup__multipart_threshold_mb=5,
        backup__part_size_mb=5,
        aws__max_attempts=6,
    )
    faults.configure(rate=0.25, kinds=("delay", "lost"), delay=0.3)

    first = setup.run()

    assert first.returncode in (0, 1), first.stdout + first.stderr
    assert faults.faults["lost"] > 0 and faults.faults["delay"] > 0, faults.faults
    faults.off()
    second = setup.run()  # what the first run could not confirm

    assert second.returncode == 0, second.stdout + second.stderr
    _assert_bucket_and_db_match_tree(setup, s3, folder)
    # A lost answer makes the retry (or the next run) upload the same file again.
    assert faults.requests["PUT object"] + faults.requests["PUT part"] >= 30 + 2


def test_aws_max_attempts_is_the_number_of_attempts_per_request(
    setup: Setup, faults: S3Proxy
) -> None:
    max_attempts = 2
    folder = _make_tree(setup, "Band", 10)
    setup.write_config(backup__folders=[str(folder)], aws__max_attempts=max_attempts)
    # InternalError: retried after a short backoff; 10 files x 2 retries x 14 fits in
    # botocore's retry quota (500), so the quota does not cut the retries short.
    faults.configure(rate=1.0, kinds=("internal",), only={"PUT object"})

    result = setup.run()

    assert result.returncode == 1, result.stdout + result.stderr
    assert setup.db("SELECT count(*) FROM problems WHERE operation = 'upload'") == [(10,)]
    assert faults.faulted["PUT object"] == 10 * max_attempts  # is 10 * (max_attempts + 1)


def test_a_file_deleted_after_an_unconfirmed_upload_is_deleted_from_the_bucket(
    setup: Setup, s3: Any, faults: S3Proxy
) -> None:
    folder = _make_tree(setup, "Band", 3)
    setup.write_config(backup__folders=[str(folder)], aws__max_attempts=1)
    faults.configure(rate=1.0, kinds=("lost",), only={"PUT object"})

    result = setup.run()  # S3 stores the three files; the tool hears nothing back

    assert result.returncode == 1, result.stdout + result.stderr
    assert faults.requests["PUT object"] >= 3  # each attempt reached S3
    assert len(latest_versions(s3, setup.bucket(folder))) == 3
    faults.off()
    (folder / "0" / "000.tif").unlink()

    result = setup.run()

    assert result.returncode == 0, result.stdout + result.stderr
    _assert_bucket_and_db_match_tree(setup, s3, folder)  # fails: 000.tif is still latest


def test_a_file_changed_back_after_an_unconfirmed_upload_is_uploaded_again(
    setup: Setup, s3: Any, faults: S3Proxy
) -> None:
    folder = setup.images / "Band"
    path = setup.file("Band/scan.tif", b"A" * 1000)
    setup.write_config(backup__folders=[str(folder)], aws__max_attempts=1)
    assert setup.run().returncode == 0
    setup.file("Band/scan.tif", b"B" * 1000, mtime=1_700_000_000)
    faults.configure(rate=1.0, kinds=("lost",), only={"PUT object"})

    result = setup.run()  # S3 stores B; the tool hears nothing back

    assert result.returncode == 1, result.stdout + result.stderr
    head = s3.head_object(Bucket=setup.bucket(folder), Key=_key(path))
    assert head["Metadata"]["sha256"] == hashlib.sha256(b"B" * 1000).hexdigest()
    faults.off()
    setup.file("Band/scan.tif", b"A" * 1000, mtime=1_700_000_100)  # back to the bytes A

    result = setup.run()

    assert result.returncode == 0, result.stdout + result.stderr
    _assert_bucket_and_db_match_tree(setup, s3, folder)  # fails: the bucket's latest is B


def _restore_until_requested(setup: Setup, folder: Path) -> dict[str, tuple[bytes, int]]:
    """Back up the folder, lose it, and ask for its restore (moto restores at once)."""
    expected = {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }
    assert setup.run().returncode == 0
    shutil.rmtree(folder)
    first = setup.run("restore")
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"restore requested now: {len(expected)} files" in first.stdout
    return expected


def _assert_restored(folder: Path, expected: dict[str, tuple[bytes, int]]) -> None:
    found = {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()}
    assert set(found) == set(expected)
    for rel, (data, mtime_ns) in expected.items():
        assert found[rel].read_bytes() == data, rel
        assert found[rel].stat().st_mtime_ns == mtime_ns, rel


@pytest.mark.parametrize("crt", [True, False], ids=["crt", "botocore"])
def test_a_restore_completes_through_30_percent_failing_requests(
    setup: Setup, faults: S3Proxy, crt: bool
) -> None:
    """Small files are fetched by the restore's main thread through the CRT, the large
    one by a worker: both retry, and every file comes back verified."""
    folder = _make_tree(setup, "Band", 40)
    setup.file("Band/big.tif", random.Random(2).randbytes(9 * MiB))  # above FAST_PUT_MAX
    setup.write_config(
        backup__folders=[str(folder)],
        backup__workers=4,
        aws__max_attempts=10,
        aws__crt=crt,
    )
    expected = _restore_until_requested(setup, folder)
    faults.configure(rate=0.3, kinds=("slowdown", "internal", "drop"))

    result = setup.run("restore")

    faults.off()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "downloaded and verified: 41 files" in result.stdout
    assert faults.faulted["GET object"] >= 5, faults.faulted
    _assert_restored(folder, expected)
    assert not list(folder.rglob("*.matricula-restore"))


def test_downloads_failing_every_attempt_are_reported_and_the_next_run_restores_them(
    setup: Setup, faults: S3Proxy
) -> None:
    folder = _make_tree(setup, "Band", 20)
    setup.write_config(backup__folders=[str(folder)], aws__max_attempts=2)
    expected = _restore_until_requested(setup, folder)
    faults.configure(rate=1.0, kinds=("slowdown", "internal", "drop"), only={"GET object"})

    result = setup.run("restore")

    assert result.returncode == 1, result.stdout + result.stderr
    assert faults.faulted["GET object"] >= 20, faults.faulted
    assert faults.requests["GET object"] == 0
    # One problem per file, none written, not even a temporary file.
    assert not [p for p in folder.rglob("*") if not p.is_dir()]
    errors = setup.db("SELECT key, error FROM restores WHERE error IS NOT NULL")
    assert len(errors) == 20
    for key, error in errors:
        assert any(
            text in error
            for text in ("SlowDown", "InternalError", "socket is closed", "Connection")
        ), (key, error)
    assert setup.db("SELECT count(*) FROM restores WHERE downloaded_at IS NOT NULL") == [(0,)]

    faults.off()
    result = setup.run("restore")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "downloaded and verified: 20 files" in result.stdout
    _assert_restored(folder, expected)
    assert setup.db("SELECT count(*) FROM restores WHERE error IS NOT NULL") == [(0,)]
