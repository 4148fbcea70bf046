"""Objects already in a bucket: delete, list, HEAD, restore request, download."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus
from xml.etree import ElementTree

from botocore.exceptions import ClientError

from matricula_backup.errors import ChecksumMismatch, RequestFailed
from matricula_backup.model import ListedObject
from matricula_backup.s3.client import (
    FAST_PUT_MAX,
    READ_CHUNK,
    S3_ERRORS,
    Store,
    error_code,
    parse_timestamp,
)

logger = logging.getLogger(__name__)


def delete(store: Store, bucket: str, keys: list[str]) -> dict[str, str]:
    """Delete up to 1000 keys in one request (delete markers in a versioned bucket).

    Returns {key: error message} for the keys S3 did not delete.
    """
    response = store.client.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True}
    )
    return {
        error["Key"]: f"{error.get('Code', '?')} {error.get('Message', '')}".strip()
        for error in response.get("Errors", [])
    }


def first_key(store: Store, bucket: str) -> str | None:
    """The first key of ``bucket`` in listing order, None if it is empty (one ListObjectsV2)."""
    contents = store.client.list_objects_v2(Bucket=bucket, MaxKeys=1).get("Contents", [])
    return str(contents[0]["Key"]) if contents else None


def list_latest(store: Store, bucket: str, prefix: str) -> Iterator[list[ListedObject]]:
    """The latest, not deleted versions under ``prefix``, a page at a time.

    A bucket that does not exist yields nothing.
    """
    try:
        for page in list_versions(store, bucket, prefix):
            yield [
                ListedObject(rel, entry.size, entry.last_modified_ms // 1000, entry.version_id)
                for entry in page
                if entry.is_latest
                and not entry.is_marker
                and (rel := entry.key[len(prefix) :])
                and not rel.endswith("/")
            ]
    except S3_ERRORS as exc:
        if error_code(exc) != "NoSuchBucket":
            raise


ARCHIVE_CLASSES = {"DEEP_ARCHIVE", "GLACIER"}


@dataclass(frozen=True)
class Version:
    """One entry of a bucket's version listing: an object version or a delete marker."""

    key: str
    version_id: str
    size: int
    last_modified_ms: int
    storage_class: str
    is_marker: bool
    is_latest: bool


@dataclass(frozen=True)
class ObjectState:
    """What HEAD says of an object version."""

    archived: bool  # needs a restore before it can be read
    restore: str  # "", "ongoing", or "done" (readable until it expires)
    mtime_ns: int | None  # from the 'mtime' metadata
    sha256: str | None  # hex, from the 'sha256' metadata
    metadata: dict[str, str] = field(default_factory=dict)  # all of it, untrusted


def list_versions(
    store: Store, bucket: str, prefix: str, page_size: int = 1000, first_page: int = 0
) -> Iterator[list[Version]]:
    """Every version and delete marker under ``prefix``, a page (of up to
    ``page_size``) at a time, in the listing's order (by key; a key's versions
    newest first).

    ``first_page`` (through the CRT) asks for a smaller first page, whose answer
    comes sooner: a server takes time in proportion to the page (SeaweedFS
    ~0.25 s for 1,000 versions), and a restore can start its downloads then.
    """
    if store.fast_put is None:
        yield from _botocore_versions(store, bucket, prefix, page_size)
        return
    marker: tuple[str, str] | None = ("", "")
    size = first_page or page_size
    while marker is not None:
        params = [
            ("versions", ""),
            ("encoding-type", "url"),
            ("max-keys", str(size)),
            ("prefix", prefix),
        ]
        if marker[0]:
            params += [("key-marker", marker[0]), ("version-id-marker", marker[1])]
        store.counter("ListObjectVersions")
        entries, following = parse_versions(store.fast_put.list_object_versions(bucket, params))
        if following == marker:
            raise RequestFailed("ListObjectVersions", "", "the listing did not advance")
        marker = following
        size = page_size
        yield entries


_LISTING_NS = re.compile(r"^\{[^}]*\}")


def parse_versions(body: bytes) -> tuple[list[Version], tuple[str, str] | None]:
    """A ListObjectVersions answer: (its entries in order, the next (key, version id)
    markers, None on the last page). Keys are url-decoded if the answer says so."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:
        raise RequestFailed("ListObjectVersions", "", f"unreadable answer: {exc}") from None
    found = _LISTING_NS.match(root.tag)
    ns = found.group(0) if found else ""
    decode = unquote_plus if root.findtext(f"{ns}EncodingType") == "url" else str
    version, marker, skip = f"{ns}Version", f"{ns}DeleteMarker", len(ns)
    entries = []
    for element in root:
        if element.tag != version and element.tag != marker:
            continue
        fields = {child.tag[skip:]: child.text or "" for child in element}
        try:
            entries.append(
                Version(
                    decode(fields["Key"]),
                    fields.get("VersionId") or "null",
                    int(fields.get("Size") or 0),
                    int(parse_timestamp(fields["LastModified"]).timestamp() * 1000),
                    fields.get("StorageClass") or "STANDARD",
                    element.tag == marker,
                    fields.get("IsLatest") == "true",
                )
            )
        except (KeyError, ValueError):
            raise RequestFailed(
                "ListObjectVersions", "", "an entry without a readable Key, Size or LastModified"
            ) from None
    if root.findtext(f"{ns}IsTruncated") != "true":
        return entries, None
    following = decode(root.findtext(f"{ns}NextKeyMarker") or "")
    if not following:
        raise RequestFailed("ListObjectVersions", "", "a truncated page without NextKeyMarker")
    return entries, (following, root.findtext(f"{ns}NextVersionIdMarker") or "")


def _botocore_versions(
    store: Store, bucket: str, prefix: str, page_size: int
) -> Iterator[list[Version]]:
    """The same through botocore's paginator, where the CRT is not available."""
    paginator = store.client.get_paginator("list_object_versions")
    pages = paginator.paginate(
        Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}
    )
    for page in pages:
        entries = [
            Version(
                item["Key"],
                item.get("VersionId") or "null",
                int(item.get("Size", 0)),
                int(item["LastModified"].timestamp() * 1000),
                item.get("StorageClass", "STANDARD"),
                is_marker,
                bool(item.get("IsLatest")),
            )
            for is_marker, name in ((False, "Versions"), (True, "DeleteMarkers"))
            for item in page.get(name, [])
        ]
        yield entries


def head(store: Store, bucket: str, key: str, version_id: str) -> ObjectState:
    return _state(store.client.head_object(Bucket=bucket, Key=key, VersionId=version_id))


def _state(response: dict[str, Any]) -> ObjectState:
    """What the headers of a HEAD or GET answer say of the object."""
    restore = response.get("Restore") or ""
    metadata = response.get("Metadata", {})
    return ObjectState(
        archived=response.get("StorageClass", "STANDARD") in ARCHIVE_CLASSES,
        restore=(
            "ongoing"
            if 'ongoing-request="true"' in restore
            else "done"
            if 'ongoing-request="false"' in restore
            else ""
        ),
        mtime_ns=parse_mtime(metadata.get("mtime")),
        sha256=metadata.get("sha256"),
        metadata=dict(metadata),
    )


def request_restore(
    store: Store, bucket: str, key: str, version_id: str, tier: str, days: int
) -> None:
    """Ask S3 to make an archived version readable for ``days`` days."""
    try:
        store.client.restore_object(
            Bucket=bucket,
            Key=key,
            VersionId=version_id,
            RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": tier}},
        )
    except ClientError as exc:
        if error_code(exc) != "RestoreAlreadyInProgress":
            raise


class Download:
    """A readable version being fetched: its state and its bytes, checked as they pass."""

    def __init__(self, body: Any, state: ObjectState, size: int) -> None:
        self.state = state
        self._body = body  # botocore's StreamingBody, or the bytes the CRT fetched
        self._size = size

    def chunks(self) -> Iterator[bytes]:
        """The bytes; raises ChecksumMismatch after the last chunk if size or SHA-256 differ.

        The caller writes them to a temporary file and puts it in place only
        when this ends without an error (localfs.py).
        """
        digest = hashlib.sha256()
        received = 0
        body = self._body
        try:
            for chunk in [body] if isinstance(body, bytes) else body.iter_chunks(READ_CHUNK):
                digest.update(chunk)
                received += len(chunk)
                yield chunk
        finally:
            if not isinstance(body, bytes):
                body.close()
        if received != self._size:
            raise ChecksumMismatch(f"got {received} bytes, the object has {self._size}")
        expected = self.state.sha256
        if expected and digest.hexdigest() != expected:
            raise ChecksumMismatch(
                f"SHA-256 {digest.hexdigest()} differs from {expected} recorded at upload"
            )


def download(
    store: Store, bucket: str, key: str, version_id: str, expected: ObjectState | None, size: int
) -> Download:
    """GET a version of ``size`` bytes; InvalidObjectState (a ClientError) if not readable.

    ``expected`` is what a HEAD said of the object; without one, the GET's own
    headers say it (mtime, SHA-256, the rest of the metadata).
    """
    if can_start_download(store, size):
        # Through the CRT (crt.py), like small PUTs: a third of botocore's CPU.
        assert store.fast_put is not None
        store.counter("GetObject")
        answer = store.fast_put.get_object(bucket, key, version_id, size)
        return received(answer, size, expected)
    response = store.client.get_object(Bucket=bucket, Key=key, VersionId=version_id)
    return Download(response["Body"], expected or _state(response), size)


def can_start_download(store: Store, size: int) -> bool:
    """Whether ``start_download`` can fetch a version of ``size`` bytes."""
    return store.fast_put is not None and size <= FAST_PUT_MAX


def start_download(
    store: Store,
    bucket: str,
    key: str,
    version_id: str,
    size: int,
    done: Callable[[tuple[dict[str, str], bytes] | RequestFailed], None],
) -> tuple[Any, float]:
    """Start the GET of a version of ``size`` bytes (``can_start_download``) without
    waiting: ``done`` gets, on another thread, what ``received`` turns into a
    Download, or the RequestFailed (InvalidObjectState if not readable).

    Returns the request and the seconds after which the caller gives it up
    (``cancel()``: ``done`` then gets the failure).
    """
    assert store.fast_put is not None
    store.counter("GetObject")
    sent = store.fast_put.start_get(bucket, key, version_id, size, done)
    return sent, store.fast_put.timeout(size)


def received(
    answer: tuple[dict[str, str], bytes], size: int, expected: ObjectState | None = None
) -> Download:
    """The Download of a CRT GET's (headers, body)."""
    headers, data = answer
    metadata = {
        name[len("x-amz-meta-") :]: value
        for name, value in headers.items()
        if name.startswith("x-amz-meta-")
    }
    state = {
        "Restore": headers.get("x-amz-restore"),
        "StorageClass": headers.get("x-amz-storage-class", "STANDARD"),
        "Metadata": metadata,
    }
    return Download(data, expected or _state(state), size)


def parse_mtime(value: str | None) -> int | None:
    """'1600000000.250000000' (rclone's form) -> nanoseconds, or None."""
    if not value:
        return None
    try:
        seconds, _, fraction = value.partition(".")
        return int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])
    except ValueError:
        return None
