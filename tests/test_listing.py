"""Version listings read without botocore's parser (objects.list_versions).

Restore, verify, drill and adoption list every version of a bucket; the CRT
fetches each page and objects.py reads its XML (in less than half the GIL time
botocore's parser took). Both ways must give the same entries for the same
bucket: keys that need url-encoding (space, '+', '%', '&', '<', non-ASCII, a
control character), several versions of a key, delete markers, pages, keys
outside the prefix. The same check runs against SeaweedFS in test_seaweedfs.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import httpx
import pytest

from matricula_backup.config import parse_settings
from matricula_backup.errors import RequestFailed
from matricula_backup.s3 import objects
from matricula_backup.s3.client import Store, connect
from tests.conftest import REGION

NAMES = [
    "a.tif",
    "with space.tif",
    "plus+sign.tif",
    "percent%20.tif",
    "amp&lt<.tif",
    "ünïcode ß.tif",
    "ctl\tchar\x7f\u0085.tif",  # moto cannot list other C0 controls (test_restore_safety.py)
    "deep/er/x.tif",
    "folder marker/",
]


def make_store(tmp_path: Path, endpoint: str, key: str, secret: str, region: str) -> Store:
    settings = parse_settings(
        {
            "backup": {"folders": [str(tmp_path)]},
            "aws": {
                "access_key": key,
                "secret_access_key": secret,
                "region": region,
                "endpoint_url": endpoint,
            },
        },
        tmp_path,
    )
    return connect(settings)


def fill_bucket(s3: Any, bucket: str, prefix: str) -> None:
    """Versions, delete markers and a key outside ``prefix``."""
    region = s3.meta.region_name
    if region == "us-east-1":
        s3.create_bucket(Bucket=bucket)
    else:
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    for name in NAMES:
        s3.put_object(Bucket=bucket, Key=prefix + name, Body=name.encode())
    s3.put_object(Bucket=bucket, Key=prefix + "a.tif", Body=b"second version")
    s3.put_object(Bucket=bucket, Key=prefix + "a.tif", Body=b"third version, longer")
    s3.delete_object(Bucket=bucket, Key=prefix + "with space.tif")
    s3.put_object(Bucket=bucket, Key="other/b.tif", Body=b"outside the prefix")


def check_both_ways_agree(store: Store, s3: Any, bucket: str, prefix: str) -> None:
    assert store.fast_put is not None, "the CRT is part of the install"
    plain = dataclasses.replace(store, fast_put=None)
    before = store.counter.by_operation["ListObjectVersions"]
    fast_pages = list(objects.list_versions(store, bucket, prefix, page_size=3))
    assert store.counter.by_operation["ListObjectVersions"] - before == len(fast_pages)
    slow_pages = list(objects.list_versions(plain, bucket, prefix, page_size=3))
    fast = [entry for page in fast_pages for entry in page]
    slow = [entry for page in slow_pages for entry in page]

    assert len(fast_pages) > 2
    # A smaller first page (a restore starts on it), then pages of page_size.
    short_first = list(objects.list_versions(store, bucket, prefix, page_size=3, first_page=1))
    assert [len(page) for page in short_first[:2]] == [1, 3]
    assert sorted((entry for page in short_first for entry in page), key=repr) == sorted(
        (entry for page in fast_pages for entry in page), key=repr
    )  # (moto puts a page's delete markers after its versions: the order differs)
    # botocore groups a page's versions before its delete markers; the XML's order
    # is the listing's own: the same entries.
    assert sorted(fast, key=repr) == sorted(slow, key=repr)
    assert {entry.key for entry in fast} == {prefix + name for name in NAMES}
    by_key: dict[str, list[objects.Version]] = {}
    for entry in fast:
        by_key.setdefault(entry.key, []).append(entry)
    versions = by_key[prefix + "a.tif"]
    assert [v.size for v in versions] == [21, 14, 5]  # newest first
    assert [v.is_latest for v in versions] == [True, False, False]
    assert len({v.version_id for v in versions}) == 3
    deleted = by_key[prefix + "with space.tif"]
    # (AWS lists a key's markers and versions together, newest first; moto lists a
    # page's markers after its versions.)
    assert sorted((v.is_marker, v.is_latest) for v in deleted) == [(False, False), (True, True)]
    listed = {
        version["Key"]: version
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket)
        for version in page.get("Versions", [])
        if version["IsLatest"]
    }
    for entry in fast:
        if entry.is_latest and not entry.is_marker:
            theirs = listed[entry.key]
            assert entry.version_id == theirs["VersionId"]
            assert entry.last_modified_ms == int(theirs["LastModified"].timestamp() * 1000)

    fast_latest = [o for page in objects.list_latest(store, bucket, prefix) for o in page]
    slow_latest = [o for page in objects.list_latest(plain, bucket, prefix) for o in page]
    assert sorted(fast_latest, key=repr) == sorted(slow_latest, key=repr)
    # Deleted, and the folder marker, are not files.
    assert sorted(o.path for o in fast_latest) == sorted(
        name for name in NAMES if name not in ("with space.tif", "folder marker/")
    )
    assert list(objects.list_latest(store, "no-such-bucket-here", "")) == []


def test_the_crt_listing_and_botocore_s_agree_against_moto(
    tmp_path: Path, moto_url: str, s3: Any
) -> None:
    httpx.post(f"{moto_url}/moto-api/reset")
    store = make_store(tmp_path, moto_url, "test", "test", REGION)
    fill_bucket(s3, "listing", "images/Band 1/")
    check_both_ways_agree(store, s3, "listing", "images/Band 1/")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"<ListVersionsResult><Version>", "unreadable answer"),
        (
            b"<ListVersionsResult><Version><Key>k</Key><Size>x</Size></Version>"
            b"</ListVersionsResult>",
            "without a readable",
        ),
        (
            b"<ListVersionsResult><IsTruncated>true</IsTruncated></ListVersionsResult>",
            "without NextKeyMarker",
        ),
    ],
)
def test_an_answer_that_cannot_be_read_is_an_error_not_an_empty_page(
    body: bytes, problem: str
) -> None:
    with pytest.raises(RequestFailed, match=problem):
        objects.parse_versions(body)
