"""The one S3 request classifier of the tests and the benchmarks.

Every proxy counts a request under the label ``classify`` gives it, so a test's
``requests["PUT part"]`` and a benchmark's requests per run mean the same thing:

    "PUT object"        PutObject
    "PUT copy"          CopyObject (PUT with x-amz-copy-source)
    "PUT part"          UploadPart (PUT ?partNumber&uploadId)
    "POST uploads"      CreateMultipartUpload
    "POST complete"     CompleteMultipartUpload (POST ?uploadId)
    "DELETE upload"     AbortMultipartUpload
    "GET parts"         ListParts (GET ?uploadId)
    "HEAD object"       HeadObject, also of one version (?versionId)
    "GET object"        GetObject, also of one version or one part (?versionId, ?partNumber)
    "DELETE object"     DeleteObject, also of one version
    "POST restore"      RestoreObject (POST ?restore)
    "POST delete"       DeleteObjects (up to 1,000 keys)
    "GET list"          ListObjects (v1)
    "GET list-v2"       ListObjectsV2
    "GET versions"      ListObjectVersions
    "GET uploads"       ListMultipartUploads
    "PUT bucket"        CreateBucket, "HEAD bucket" HeadBucket, "GET service" ListBuckets
    "GET versioning", "PUT lifecycle", ...  any other sub-resource by its name

Query parameters that only qualify a request (a version, a prefix, a page
token, presigned-URL signatures) never make a label of their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl, urlsplit

# Query parameters that are not a sub-resource (they qualify a request).
_NOT_SUBRESOURCE = {
    "prefix",
    "delimiter",
    "marker",
    "max-keys",
    "encoding-type",
    "continuation-token",
    "start-after",
    "fetch-owner",
    "key-marker",
    "version-id-marker",
    "upload-id-marker",
    "max-uploads",
    "max-parts",
    "part-number-marker",
    "partNumber",
    "versionId",
    "x-id",
}


def _qualifier(name: str) -> bool:
    lower = name.lower()
    return name in _NOT_SUBRESOURCE or lower.startswith("response-") or lower.startswith("x-amz-")


def classify(method: str, path: str, headers: Mapping[str, str] | None = None) -> str:
    """The operation of one S3 request (path-style addressing), e.g. ``"PUT part"``."""
    parts = urlsplit(path)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    segments = parts.path.strip("/").split("/", 1)
    target = "service" if not segments[0] else ("object" if len(segments) == 2 else "bucket")
    lower = {k.lower() for k in (headers or {})}
    if target == "object":
        if "uploadId" in params:
            if method == "PUT":
                return "PUT part"
            if method == "POST":
                return "POST complete"
            if method == "DELETE":
                return "DELETE upload"
            return f"{method} parts"
        if "uploads" in params:
            return f"{method} uploads"
        if method == "PUT" and "x-amz-copy-source" in lower:
            return "PUT copy"
    if target == "bucket" and method == "GET":
        if params.get("list-type") == "2":
            return "GET list-v2"
        if not [k for k in params if not _qualifier(k) and k != "list-type"]:
            return "GET list"
    rest = [k for k in params if not _qualifier(k)]
    if rest:
        return f"{method} {rest[0]}"
    return f"{method} {target}"
