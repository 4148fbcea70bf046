"""The one S3 request classifier (testkit.classify) that every proxy of the tests
and the benchmarks counts by: each request kind the tool, rclone, aws-cli or
s5cmd send, as they send it (path-style addressing)."""

from __future__ import annotations

import pytest

from testkit.classify import classify

CASES = [
    # objects
    ("PUT", "/bkt/a/b%20c.tif", {}, "PUT object"),
    ("PUT", "/bkt/a/b.tif?x-id=PutObject", {}, "PUT object"),
    ("PUT", "/bkt/a/b.tif", {"X-Amz-Copy-Source": "/bkt/old.tif"}, "PUT copy"),
    ("HEAD", "/bkt/a/b.tif", {}, "HEAD object"),
    ("HEAD", "/bkt/a/b.tif?versionId=3HL4kqtJlcpXroDTDmJ", {}, "HEAD object"),
    ("GET", "/bkt/a/b.tif", {}, "GET object"),
    ("GET", "/bkt/a/b.tif?versionId=3HL4kqtJlcpXroDTDmJ&x-id=GetObject", {}, "GET object"),
    ("GET", "/bkt/a/b.tif?partNumber=2", {}, "GET object"),
    ("GET", "/bkt/a/b.tif?response-content-type=image%2Ftiff", {}, "GET object"),
    ("DELETE", "/bkt/a/b.tif", {}, "DELETE object"),
    ("DELETE", "/bkt/a/b.tif?versionId=v1", {}, "DELETE object"),
    ("POST", "/bkt/a/b.tif?restore", {}, "POST restore"),
    ("POST", "/bkt/a/b.tif?restore&versionId=v1", {}, "POST restore"),
    ("PUT", "/bkt/a/b.tif?retention", {}, "PUT retention"),
    # multipart uploads
    ("POST", "/bkt/big.tif?uploads", {}, "POST uploads"),
    ("PUT", "/bkt/big.tif?partNumber=1&uploadId=abc", {}, "PUT part"),
    ("PUT", "/bkt/big.tif?uploadId=abc&partNumber=12", {}, "PUT part"),
    ("POST", "/bkt/big.tif?uploadId=abc", {}, "POST complete"),
    ("DELETE", "/bkt/big.tif?uploadId=abc", {}, "DELETE upload"),
    ("GET", "/bkt/big.tif?uploadId=abc&max-parts=1000", {}, "GET parts"),
    ("GET", "/bkt?uploads&prefix=a%2F", {}, "GET uploads"),
    # buckets and listings
    ("POST", "/bkt?delete", {}, "POST delete"),
    ("GET", "/bkt?list-type=2&prefix=a%2F&continuation-token=xyz", {}, "GET list-v2"),
    ("GET", "/bkt?list-type=2&encoding-type=url&fetch-owner=false", {}, "GET list-v2"),
    ("GET", "/bkt?prefix=a%2F&marker=k&max-keys=1000", {}, "GET list"),
    ("GET", "/bkt", {}, "GET list"),
    ("GET", "/bkt?versions", {}, "GET versions"),
    ("GET", "/bkt?versions&prefix=a%2F&key-marker=k&version-id-marker=v", {}, "GET versions"),
    ("GET", "/bkt?versioning", {}, "GET versioning"),
    ("PUT", "/bkt?versioning", {}, "PUT versioning"),
    ("GET", "/bkt?lifecycle", {}, "GET lifecycle"),
    ("PUT", "/bkt?publicAccessBlock", {}, "PUT publicAccessBlock"),
    ("PUT", "/bkt?encryption", {}, "PUT encryption"),
    ("GET", "/bkt?policy", {}, "GET policy"),
    ("GET", "/bkt?location", {}, "GET location"),
    ("PUT", "/bkt", {}, "PUT bucket"),
    ("HEAD", "/bkt", {}, "HEAD bucket"),
    ("GET", "/", {}, "GET service"),
    # a presigned URL's signature is no sub-resource
    ("GET", "/bkt/a.tif?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=ab", {}, "GET object"),
]


@pytest.mark.parametrize(("method", "path", "headers", "label"), CASES)
def test_each_request_kind_has_one_label(
    method: str, path: str, headers: dict[str, str], label: str
) -> None:
    assert classify(method, path, headers) == label
