"""Uploads: single PUTs, multipart uploads in part windows, checksums, retentions.

One boto3 client is built per run and shared by the worker threads (clients
are thread-safe). Every upload sends the SHA-256 of its bytes, which S3 checks
(BadDigest on a mismatch); the checksum S3 answers is compared too, for servers
that do not check. The file's mtime and SHA-256 go into the object metadata at
upload time: archived objects cannot be changed later without a new upload.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from matricula_backup.config import ObjectLock
from matricula_backup.errors import (
    ChecksumMismatch,
    FileChanged,
    Stopped,
)
from matricula_backup.model import Uploaded
from matricula_backup.s3.buckets import ABORT_MULTIPART_DAYS
from matricula_backup.s3.client import FAST_PUT_MAX, READ_CHUNK, Store, describe
from matricula_backup.s3.parts import PartsStopped, send_parts
from matricula_backup.throttle import Throttle

logger = logging.getLogger(__name__)


STORAGE_CLASS = "DEEP_ARCHIVE"


def upload(
    store: Store,
    bucket: str,
    key: str,
    path: str,
    rel: str,
    stopping: Callable[[], bool],
    in_bucket_sha256: bytes | None = None,
    lock: ObjectLock | None = None,
) -> Uploaded:
    """Upload one file as it is now; raise FileChanged if it changes while read.

    ``lock``: the bucket has Object Lock on; the new version is locked for
    ``lock.days`` from now, set on the upload itself (not left to the bucket's
    default retention, which S3 does not apply everywhere alike).

    When the file's SHA-256 equals ``in_bucket_sha256`` (the bytes of the
    bucket's latest version, as recorded at upload), nothing is sent: a file
    that was only touched costs no PUT and no second Deep Archive copy.

    A single PUT always completes; a multipart upload calls ``stopping()`` before
    each part and starts no further part when the run stops: the parts in flight
    finish, then the upload is aborted, so stopping takes one part's time at most.
    """
    # O_NONBLOCK: a file replaced by a FIFO since the scan must not block the
    # open (it fails the S_ISREG check below instead); no effect on regular files.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        before = os.fstat(handle.fileno())
        if not stat.S_ISREG(before.st_mode):
            raise FileChanged("is no longer a regular file")
        if before.st_size < store.multipart_threshold:
            data = handle.read()
            digest = hashlib.sha256(data).digest()
            _check_unchanged(path, before, len(data))
            if digest == in_bucket_sha256:
                return Uploaded(rel, before.st_size, before.st_mtime_ns, None, digest, False)
            retention = Retention.from_now(lock) if lock else None
            response = _put(store, bucket, key, data, _metadata(before, digest), digest, retention)
            _check_echo(response, digest, key)
        else:
            # The whole-file SHA-256 goes into the metadata, which is set when the
            # upload starts: hash first (each part's CRC64NVME in the same pass),
            # then send the parts straight from the file.
            part_size = max(store.part_size, -(-before.st_size // 10_000))
            digest, part_crcs = _hash_parts(handle.fileno(), before.st_size, part_size)
            _check_unchanged(path, before, before.st_size)
            if digest == in_bucket_sha256:
                return Uploaded(rel, before.st_size, before.st_mtime_ns, None, digest, False)
            retention = Retention.from_now(lock) if lock else None
            response = _multipart(
                store,
                bucket,
                key,
                path,
                handle.fileno(),
                before,
                digest,
                part_size,
                part_crcs,
                stopping,
                retention,
            )
        version_id = response.get("VersionId")
    until = retention.epoch if retention else None
    return Uploaded(rel, before.st_size, before.st_mtime_ns, version_id, digest, True, until)


@dataclass(frozen=True)
class Retention:
    """An Object Lock retention as sent with an upload or an extension."""

    mode: str  # GOVERNANCE | COMPLIANCE
    until: datetime.datetime  # UTC, whole seconds

    @classmethod
    def from_now(cls, lock: ObjectLock) -> Retention:
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        return cls(lock.mode, now + datetime.timedelta(days=lock.days))

    @property
    def epoch(self) -> int:
        return int(self.until.timestamp())

    def arguments(self) -> dict[str, Any]:
        """For botocore's PutObject and CreateMultipartUpload."""
        return {"ObjectLockMode": self.mode, "ObjectLockRetainUntilDate": self.until}

    def headers(self) -> dict[str, str]:
        """The same as HTTP headers, for the CRT's PUT (which carries a SHA-256 checksum,
        as S3 requires of a PUT with a retention)."""
        return {
            "x-amz-object-lock-mode": self.mode,
            "x-amz-object-lock-retain-until-date": self.until.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


def extend_retention(
    store: Store, bucket: str, key: str, version_id: str, retention: Retention
) -> None:
    """Lock a version until ``retention.until`` (later than now: S3 only lets it grow)."""
    store.client.put_object_retention(
        Bucket=bucket,
        Key=key,
        VersionId=version_id,
        Retention={"Mode": retention.mode, "RetainUntilDate": retention.until},
    )


def upload_unless_in_bucket(
    store: Store,
    bucket: str,
    key: str,
    path: str,
    rel: str,
    stopping: Callable[[], bool],
    lock: ObjectLock | None = None,
) -> Uploaded:
    """Upload a file whose row was adopted from a listing, unless the bucket holds its bytes.

    A listing says nothing about the bytes, and metadata (``mtime``, ``sha256``)
    is whatever the writer sent: anyone holding the keys can plant an object
    of the right size and metadata with other bytes. Only a checksum S3
    computed itself proves the bytes: one HEAD with ChecksumMode (~$0.0004 per
    1,000, a Deep Archive PUT ~$0.05 per 1,000) reads the SHA-256 S3 checked
    on receipt, and the file is read once and sent only if its SHA-256 differs
    (``upload``'s ``in_bucket_sha256``). An object without such a checksum
    (uploaded in parts, whose checksum is a CRC64NVME anyone can forge, by
    another tool, or planted) proves nothing: the file is uploaded.
    """
    try:
        with store.slots.held():
            response = store.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status not in (403, 404):  # 404: gone, or a delete marker is the latest
            raise
        logger.debug("HEAD %s: HTTP %s; uploading", key, status)
        return upload(store, bucket, key, path, rel, stopping, None, lock)
    digest = s3_sha256(response)
    if digest is None:
        logger.debug("%s: the object has no SHA-256 computed by S3; uploading", key)
    done = upload(store, bucket, key, path, rel, stopping, digest, lock)
    if done.sent:
        return done
    return replace(done, version_id=response.get("VersionId"))


def s3_sha256(response: dict[str, Any]) -> bytes | None:
    """The whole-object SHA-256 S3 computed on receipt (HEAD with ChecksumMode), or None.

    A composite checksum of parts ("<base64>-N", or ChecksumType COMPOSITE) is
    not the SHA-256 of the bytes and is not returned.
    """
    value = response.get("ChecksumSHA256")
    if not isinstance(value, str) or response.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
        return None
    try:
        digest = base64.b64decode(value, validate=True)
    except ValueError:  # also a composite's "-N" suffix
        return None
    return digest if len(digest) == 32 else None


def _put(
    store: Store,
    bucket: str,
    key: str,
    data: bytes,
    metadata: dict[str, str],
    digest: bytes,
    retention: Retention | None = None,
) -> dict[str, Any]:
    """One PutObject; the answer as botocore gives it (VersionId, ChecksumSHA256)."""
    with store.slots.held():
        return _put_now(store, bucket, key, data, metadata, digest, retention)


def _put_now(
    store: Store,
    bucket: str,
    key: str,
    data: bytes,
    metadata: dict[str, str],
    digest: bytes,
    retention: Retention | None,
) -> dict[str, Any]:
    if store.fast_put is None or len(data) > FAST_PUT_MAX:
        response: dict[str, Any] = store.client.put_object(
            Bucket=bucket,
            Key=key,
            Body=store.body(data),
            StorageClass=STORAGE_CLASS,
            Metadata=metadata,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=_b64(digest),
            **(retention.arguments() if retention else {}),
        )
        return response
    store.counter("PutObject")
    headers = {
        "x-amz-storage-class": STORAGE_CLASS,
        "x-amz-sdk-checksum-algorithm": "SHA256",
        "x-amz-checksum-sha256": _b64(digest),
        **{f"x-amz-meta-{name}": value for name, value in metadata.items()},
        **(retention.headers() if retention else {}),
    }
    answer = store.fast_put.put(bucket, key, data, headers)
    return {
        "VersionId": answer.get("x-amz-version-id"),
        "ChecksumSHA256": answer.get("x-amz-checksum-sha256"),
    }


def _hash_parts(fd: int, size: int, part_size: int) -> tuple[bytes, list[bytes]]:
    """In one read of the file: its SHA-256, and each part's CRC64NVME.

    The SHA-256 identifies the file (metadata, state.db, touched files, restore
    checks). A part only needs a checksum S3 verifies on receipt: CRC64NVME
    (S3's full-object checksum type) runs at ~10 GB/s in awscrt, against
    ~1.5 GB/s for a second SHA-256 of every byte.
    """
    from awscrt.checksums import crc64nvme

    whole = hashlib.sha256()
    parts = []
    for start in range(0, size, part_size):
        crc = 0
        for chunk in _chunks(fd, start, min(part_size, size - start), READ_CHUNK, "read"):
            whole.update(chunk)
            crc = crc64nvme(chunk, crc)
        parts.append(crc.to_bytes(8, "big"))
    return whole.digest(), parts


def _chunks(fd: int, start: int, length: int, chunk_size: int, while_: str) -> Iterator[bytes]:
    """Bytes ``[start, start + length)`` of the file in reads of ``chunk_size``.

    Never fewer bytes: a file that became shorter raises FileChanged ("... while
    it was ``while_``").
    """
    offset, end = start, start + length
    while offset < end:
        chunk = os.pread(fd, min(chunk_size, end - offset), offset)
        if not chunk:
            raise FileChanged(f"it became shorter while it was {while_}")
        yield chunk
        offset += len(chunk)


def _multipart(
    store: Store,
    bucket: str,
    key: str,
    path: str,
    fd: int,
    before: os.stat_result,
    digest: bytes,
    part_size: int,
    part_crcs: list[bytes],
    stopping: Callable[[], bool],
    retention: Retention | None = None,
) -> dict[str, Any]:
    """Send the file in parts, each with its CRC64NVME from the first pass.

    The parts go in parallel, each holding one of the run's request slots
    (parts.py), so a large file uses the workers the small files leave free. A
    part is read from the file while it is sent (memory: a few KiB per part in
    flight, not a part). If the file changed since it was hashed, S3 finds
    that part's checksum wrong and refuses it, and the ctime check catches
    it before the upload is completed: the object never differs from the
    SHA-256 recorded for it. On any failure, or when the run stops, the
    upload is aborted once the parts in flight are done (no upload id is kept
    for a later run; after a kill -9 the bucket's lifecycle rule removes the
    parts).
    """
    client = store.client
    with store.slots.held():
        upload_id = client.create_multipart_upload(
            Bucket=bucket,
            Key=key,
            StorageClass=STORAGE_CLASS,
            Metadata=_metadata(before, digest),
            ChecksumAlgorithm="CRC64NVME",  # a full-object checksum, S3's only type for it
            **(retention.arguments() if retention else {}),
        )["UploadId"]

    def send(number: int) -> dict[str, Any]:
        part_crc = part_crcs[number - 1]
        start = (number - 1) * part_size
        length = min(part_size, before.st_size - start)
        try:
            response = client.upload_part(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=FileRange(fd, start, length, store.throttle),
                ContentLength=length,
                ChecksumAlgorithm="CRC64NVME",
                ChecksumCRC64NVME=_b64(part_crc),
            )
        except ClientError:
            _check_unchanged(path, before, before.st_size)  # BadDigest: it changed
            raise
        _check_echo(response, part_crc, f"{key} part {number}", "CRC64NVME")
        return {"PartNumber": number, "ETag": response["ETag"], "ChecksumCRC64NVME": _b64(part_crc)}

    try:
        try:
            parts = send_parts(store.slots, len(part_crcs), send, stopping)
        except PartsStopped:
            raise Stopped(f"{key}: multipart upload aborted, the run is stopping") from None
        _check_unchanged(path, before, before.st_size)
        with store.slots.held():
            result: dict[str, Any] = client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
    except BaseException:
        try:
            with store.slots.held():
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except (ClientError, BotoCoreError) as exc:
            logger.warning(
                "could not abort the multipart upload of %s (the bucket's lifecycle "
                "rule removes it in %d days): %s",
                key,
                ABORT_MULTIPART_DAYS,
                describe(exc),
            )
        raise
    if retention is not None and result.get("VersionId"):
        # Some S3 servers (moto, and S3-compatible ones) keep no retention given at
        # CreateMultipartUpload: set it again on the version. One more request
        # per large file; the same date again is no change on AWS.
        with store.slots.held():
            extend_retention(store, bucket, key, result["VersionId"], retention)
    return result


SIGN_CHUNK = 1024 * 1024


class FileRange(io.RawIOBase):
    """Bytes ``[start, start + length)`` of an open file, as a request body.

    Read with ``pread`` (no shared file position), seekable so that botocore
    can send it again on a retry, paced by the bandwidth limit if there is one.
    """

    def __init__(self, fd: int, start: int, length: int, throttle: Throttle | None) -> None:
        super().__init__()
        self._fd = fd
        self._start = start
        self._length = length
        self._position = 0
        self._throttle = throttle

    def __len__(self) -> int:
        return self._length

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        self._position = min(max(base + offset, 0), self._length)
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        left = self._length - self._position
        wanted = left if size is None or size < 0 else min(size, left)
        if wanted <= 0:
            return b""
        chunk = os.pread(self._fd, wanted, self._start + self._position)
        if not chunk:
            raise FileChanged("it became shorter while it was uploaded")
        self._position += len(chunk)
        if self._throttle is not None:
            self._throttle.consume(len(chunk))
        return chunk

    def readinto(self, buffer: Any) -> int:
        chunk = self.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def sha256_hex(self) -> str:
        """The SHA-256 of the whole range, for signing (signing.py): unpaced, 1 MiB reads."""
        digest = hashlib.sha256()
        for chunk in _chunks(self._fd, self._start, self._length, SIGN_CHUNK, "uploaded"):
            digest.update(chunk)  # hashlib releases the GIL for large chunks, as pread does
        return digest.hexdigest()


def _metadata(before: os.stat_result, digest: bytes) -> dict[str, str]:
    # "mtime" as decimal seconds, "mode" as octal with the file type bits,
    # "uid"/"gid" as decimal: what rclone writes and reads too (--metadata).
    seconds, nanos = divmod(before.st_mtime_ns, 1_000_000_000)
    return {
        "mtime": f"{seconds}.{nanos:09d}",
        "sha256": digest.hex(),
        "mode": f"{before.st_mode:07o}",
        "uid": str(before.st_uid),
        "gid": str(before.st_gid),
    }


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _check_echo(
    response: dict[str, Any], digest: bytes, what: str, algorithm: str = "SHA256"
) -> None:
    echoed = response.get(f"Checksum{algorithm}")
    if echoed and echoed != _b64(digest):
        raise ChecksumMismatch(f"{what}: S3 stored {algorithm} {echoed}, we sent {_b64(digest)}")


def _check_unchanged(path: str, before: os.stat_result, read: int) -> None:
    after = os.stat(path, follow_symlinks=False)
    if (
        read != before.st_size
        or after.st_size != before.st_size
        or after.st_mtime_ns != before.st_mtime_ns
        or after.st_ino != before.st_ino
        # A write whose mtime was put back (touch -r, a sync tool) still moves ctime.
        or after.st_ctime_ns != before.st_ctime_ns
    ):
        raise FileChanged("it changed while it was read")
