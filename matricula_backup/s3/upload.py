"""Everything that talks to S3: the client, buckets, uploads, deletes, listings.

One boto3 client is built per run and shared by the worker threads (clients
are thread-safe). Every upload sends the SHA-256 of its bytes, which S3 checks
(BadDigest on a mismatch); the checksum S3 answers is compared too, for servers
that do not check. The file's mtime and SHA-256 go into the object metadata at
upload time: archived objects cannot be changed later without a new upload.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import io
import json
import logging
import os
import stat
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from matricula_backup import tamper
from matricula_backup.config import ObjectLock, Settings
from matricula_backup.errors import (
    ChecksumMismatch,
    FileChanged,
    FolderError,
    RequestFailed,
    Stopped,
)
from matricula_backup.queues import ListedObject, Uploaded
from matricula_backup.s3.parts import PartsStopped, RequestSlots, send_parts
from matricula_backup.throttle import Throttle, ThrottledBody

if TYPE_CHECKING:
    from matricula_backup.s3.crt import FastPut

logger = logging.getLogger(__name__)

STORAGE_CLASS = "DEEP_ARCHIVE"
NONCURRENT_DAYS = 180
ABORT_MULTIPART_DAYS = 7
READ_CHUNK = 8 * 1024 * 1024
CONNECT_TIMEOUT = 20
# The CRT saves CPU per request, which matters for small files; it also copies
# the body into buffers of its own, which a large one would double (crt.py).
FAST_PUT_MAX = 8 * 1024 * 1024
LIFECYCLE_RULES: list[dict[str, Any]] = [
    {
        "ID": "matricula-backup-noncurrent",
        "Status": "Enabled",
        "Filter": {},
        "NoncurrentVersionExpiration": {"NoncurrentDays": NONCURRENT_DAYS},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_MULTIPART_DAYS},
    },
    {
        # Cannot share a rule with Days/Date: a rule of its own.
        "ID": "matricula-backup-delete-markers",
        "Status": "Enabled",
        "Filter": {},
        "Expiration": {"ExpiredObjectDeleteMarker": True},
    },
]
_NOT_SUPPORTED = {"NotImplemented", "NotImplementedError", "MethodNotAllowed", "501"}
_DENIED = {"AccessDenied", "AllAccessDisabled", "403"}


class RequestCounter:
    """Counts HTTP requests sent to S3, by operation.

    Each botocore retry counts; retries the CRT makes inside a single PUT
    (crt.py) cannot be seen: such a PUT counts once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_operation: Counter[str] = Counter()

    def __call__(self, event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        with self._lock:
            self.by_operation[operation] += 1

    @property
    def total(self) -> int:
        return sum(self.by_operation.values())


@dataclass(frozen=True)
class Store:
    """The shared client plus what every S3 call needs to know."""

    client: Any
    region: str
    counter: RequestCounter
    part_size: int
    multipart_threshold: int
    throttle: Throttle | None = None
    fast_put: FastPut | None = None  # single PUTs through the CRT (crt.py)
    sts: Any = None  # for the account id of the keys (bucket policy checks)
    # backup.workers upload requests at a time, small files and parts together (parts.py)
    slots: RequestSlots = field(default_factory=lambda: RequestSlots(8))

    def body(self, data: bytes) -> Any:
        """What to send: the bytes, read at the allowed pace if there is a limit."""
        return ThrottledBody(data, self.throttle) if self.throttle else data


def connect(settings: Settings) -> Store:
    """Build the run's one S3 client. Makes no request."""
    # Imported here, not at the top: boto3 and botocore's config (which loads
    # awscrt) cost ~0.2 s of start-up that a run with nothing to upload skips.
    import boto3
    from botocore.config import Config

    aws = settings.aws
    session = boto3.session.Session(
        aws_access_key_id=aws.access_key or None,
        aws_secret_access_key=aws.secret_access_key or None,
        # botocore reads AWS_DEFAULT_REGION; AWS_REGION is the newer standard name.
        region_name=aws.region or os.environ.get("AWS_REGION") or None,
    )
    endpoint = (
        aws.endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    config = Config(
        # 503 SlowDown, 500s, timeouts and dropped connections are retried with
        # backoff; what still fails is recorded and retried on the next run.
        # total_max_attempts counts the first try too (max_attempts would not).
        retries={"mode": aws.retry_mode, "total_max_attempts": aws.max_attempts},  # type: ignore[arg-type]
        max_pool_connections=settings.workers + 4,
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=300,
        # We send our own SHA-256; no extra CRC32 that some S3 servers reject.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"} if endpoint else {},
    )
    client = session.client("s3", endpoint_url=endpoint or None, config=config)
    counter = RequestCounter()
    client.meta.events.register("before-send.s3", counter)
    region = client.meta.region_name or "us-east-1"
    throttle = Throttle(settings.max_bandwidth) if settings.max_bandwidth else None
    fast_put = None
    # A bandwidth limit needs botocore's body (throttle.py); one attempt only
    # cannot be told to the CRT (max_retries 0 means its default, 5).
    if aws.crt and throttle is None and aws.max_attempts > 1:
        fast_put = _fast_put(session, client, region, endpoint is not None, aws.max_attempts)
    return Store(
        client,
        region,
        counter,
        settings.part_size,
        settings.multipart_threshold,
        throttle,
        fast_put,
        # An S3-compatible server may answer STS at its endpoint (moto does) or not.
        session.client("sts", endpoint_url=endpoint or None, config=config),
        RequestSlots(settings.workers),
    )


def _fast_put(
    session: Any, client: Any, region: str, path_style: bool, max_attempts: int
) -> FastPut | None:
    credentials = session.get_credentials()
    if credentials is None:  # botocore says what is missing at the first request
        return None
    try:
        from matricula_backup.s3.crt import FastPut
    except ImportError as exc:
        logger.warning("AWS CRT not available (%s): botocore sends every request", exc)
        return None
    return FastPut(
        client.meta.endpoint_url, path_style, region, credentials, max_attempts, CONNECT_TIMEOUT
    )


def describe(exc: BaseException) -> str:
    """A short, secret-free text for an S3 error."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "?")
        message = error.get("Message") or ""
        operation = getattr(exc, "operation_name", "")
        return f"{operation} failed: {code} {message}".strip()
    if isinstance(exc, RequestFailed):
        return str(exc)
    if isinstance(exc, BotoCoreError | OSError):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc}"


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    if isinstance(exc, RequestFailed):
        return exc.code
    return ""


# --- buckets ---------------------------------------------------------------------------------


S3_ERRORS = (ClientError, BotoCoreError, RequestFailed)


@dataclass
class BucketState:
    """What preparing a bucket found: errors, warnings, and whether uploads can be locked."""

    problems: list[str] = field(default_factory=list)  # repairs and tampering: errors
    warnings: list[str] = field(default_factory=list)  # hardening S3 refused: not errors
    locked: bool = False  # Object Lock on: every upload carries its retention


def prepare_bucket(
    store: Store,
    bucket: str,
    known_ready: bool,
    warned: set[tuple[str, str]],
    lock: ObjectLock | None = None,
) -> BucketState:
    """Make sure the bucket exists and has its settings; say what was wrong with it.

    A bucket this tool set up before is checked (versioning, lifecycle rules,
    bucket policy, Object Lock) and repaired where the tool can; every change
    found is a problem (an error of the run). Otherwise it is created (with
    Object Lock when ``lock`` is set), or adopted when it already exists and is
    ours. Versioning and the lifecycle rules are required: raises FolderError
    when they cannot be set. Public access block and default encryption are
    hardening: a refusal is a warning and the bucket is used without them.
    """
    state = BucketState()
    client = store.client
    if known_ready:
        try:
            versioning = client.get_bucket_versioning(Bucket=bucket).get("Status")
        except ClientError as exc:
            if error_code(exc) != "NoSuchBucket":
                raise FolderError(f"bucket {bucket}: {describe(exc)}") from None
            state.problems.append(
                f"bucket {bucket} was gone (deleted by hand?) and is created again; "
                "files recorded as backed up in it must be uploaded again (run with --reset)"
            )
            known_ready = False
        else:
            if versioning != "Enabled":
                state.problems.append(
                    f"bucket {bucket}: versioning was {versioning or 'off'}; enabled again"
                )
                _put_versioning(client, bucket)
            state.problems.extend(check_lifecycle(client, bucket, repair=True))
            state.problems.extend(check_policy(store, bucket))
            if lock is not None:
                state.locked = _check_lock(store, bucket, lock, state)
            return state
    created = _create(store, bucket, lock)
    _put_versioning(client, bucket)
    _put_lifecycle(client, bucket)
    if lock is not None:
        if created:
            state.locked = True
            _optional(
                lambda: client.put_object_lock_configuration(
                    Bucket=bucket, ObjectLockConfiguration=lock_configuration(lock)
                ),
                "the Object Lock default retention (each upload still sets its own)",
                bucket,
                warned,
                state.warnings,
            )
        else:  # ours from before (a lost state.db): its lock is what it is
            state.locked = _check_lock(store, bucket, lock, state)
    _optional(
        lambda: client.put_public_access_block(
            Bucket=bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        ),
        "public access block",
        bucket,
        warned,
        state.warnings,
    )
    _optional(
        lambda: client.put_bucket_encryption(
            Bucket=bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
        ),
        "default encryption",
        bucket,
        warned,
        state.warnings,
    )
    return state


def lock_configuration(lock: ObjectLock) -> dict[str, Any]:
    return {
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": lock.mode, "Days": lock.days}},
    }


def enable_lock_command(bucket: str, lock: ObjectLock) -> str:
    """The aws-cli command that turns Object Lock on for an existing (versioned) bucket."""
    configuration = json.dumps(lock_configuration(lock), separators=(",", ":"))
    return (
        f"aws s3api put-object-lock-configuration --bucket {bucket} "
        f"--object-lock-configuration '{configuration}'"
    )


def _check_lock(store: Store, bucket: str, lock: ObjectLock, state: BucketState) -> bool:
    """Whether the existing bucket has Object Lock on; what is weaker than asked goes to state."""
    try:
        configuration = object_lock_configuration(store, bucket)
    except ClientError as exc:
        raise FolderError(
            f"bucket {bucket}: cannot read its Object Lock configuration (backup.object_lock "
            f"is set): {describe(exc)}"
        ) from None
    if configuration is None or configuration.get("ObjectLockEnabled") != "Enabled":
        state.warnings.append(
            f"bucket {bucket} has no Object Lock (it was set up before backup.object_lock "
            f"was); its uploads are not locked. To enable it: {enable_lock_command(bucket, lock)}"
        )
        return False
    state.problems.extend(
        f"bucket {bucket}: {p}" for p in tamper.lock_problems(configuration, lock)
    )
    return True


def object_lock_configuration(store: Store, bucket: str) -> dict[str, Any] | None:
    """The bucket's ObjectLockConfiguration, or None when it has none."""
    try:
        answer = store.client.get_object_lock_configuration(Bucket=bucket)
    except ClientError as exc:
        if error_code(exc) in ("ObjectLockConfigurationNotFoundError", *_NOT_SUPPORTED):
            return None
        raise
    configuration: dict[str, Any] = answer.get("ObjectLockConfiguration") or {}
    return configuration


def check_lifecycle(client: Any, bucket: str, repair: bool) -> list[str]:
    """Problems with the bucket's lifecycle rules; with ``repair``, put the tool's back.

    A rule of someone else's that can destroy data (tamper.destructive_rule) is
    removed by the repair: harmless foreign rules are kept.
    """
    try:
        rules = client.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
    except ClientError as exc:
        if error_code(exc) != "NoSuchLifecycleConfiguration":
            raise FolderError(f"bucket {bucket}: {describe(exc)}") from None
        rules = []
    own_ids = {str(rule["ID"]) for rule in LIFECYCLE_RULES}
    problems = []
    if not _own_rules_intact(rules):
        problems.append(
            f"bucket {bucket}: lifecycle rules were changed; "
            + ("restored" if repair else "the next backup run with work restores them")
        )
    foreign = tamper.foreign_rules(rules, own_ids)
    for rule_id, why in foreign:
        problems.append(
            f"bucket {bucket}: lifecycle rule {rule_id!r} not set by this tool {why}; "
            + (
                "removed. Find out who added it: whoever holds these keys can destroy history"
                if repair
                else "the next backup run with work removes it"
            )
        )
    if repair and problems:
        bad = {rule_id for rule_id, _ in foreign} | own_ids
        _put_lifecycle(client, bucket, [rule for rule in rules if rule.get("ID") not in bad])
    return problems


def check_policy(store: Store, bucket: str) -> list[str]:
    """What in the bucket's policy lets others in (reported, never changed by the tool)."""
    try:
        policy = store.client.get_bucket_policy(Bucket=bucket).get("Policy")
    except ClientError as exc:
        if error_code(exc) in ("NoSuchBucketPolicy", *_NOT_SUPPORTED):
            return []
        return [f"bucket {bucket}: cannot check the bucket policy: {describe(exc)}"]
    return [
        f"bucket {bucket}: {problem}; remove it (with admin keys): "
        f"aws s3api delete-bucket-policy --bucket {bucket}"
        for problem in tamper.policy_problems(policy, caller_account(store))
    ]


def caller_account(store: Store) -> str | None:
    """The AWS account id of the keys (STS GetCallerIdentity, which needs no permission)."""
    if store.sts is None:
        return None
    return _account(store.sts)


@functools.cache
def _account(sts: Any) -> str | None:
    try:
        return str(sts.get_caller_identity()["Account"])
    except (ClientError, BotoCoreError, KeyError) as exc:
        logger.info("cannot tell the account of the keys (%s): policies checked for '*' only", exc)
        return None


def _create(store: Store, bucket: str, lock: ObjectLock | None) -> bool:
    """Create the bucket; False when it existed already and is ours."""
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if store.region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": store.region}
    if lock is not None:
        kwargs["ObjectLockEnabledForBucket"] = True
    try:
        store.client.create_bucket(**kwargs)
        logger.info("created bucket %s in %s", bucket, store.region)
        return True
    except ClientError as exc:
        code = error_code(exc)
        if code == "BucketAlreadyOwnedByYou":
            logger.info("bucket %s exists and is ours: reusing it", bucket)
            return False
        if code == "BucketAlreadyExists":
            raise FolderError(
                f"bucket name {bucket} is taken by another AWS account. Set "
                "backup.bucket_prefix in config.json to a prefix of your own (e.g. your "
                "organisation's name) and run again"
            ) from None
        raise FolderError(
            f"cannot create bucket {bucket}: {describe(exc)}"
            + (
                " (backup.object_lock is set: does this S3 server support Object Lock?)"
                if lock is not None
                else ""
            )
        ) from None
    except BotoCoreError as exc:
        raise FolderError(f"cannot create bucket {bucket}: {describe(exc)}") from None


def _put_versioning(client: Any, bucket: str) -> None:
    try:
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    except (ClientError, BotoCoreError) as exc:
        # Without versioning a deletion or overwrite loses data at once: do not upload.
        raise FolderError(f"cannot enable versioning on bucket {bucket}: {describe(exc)}") from None


def _put_lifecycle(client: Any, bucket: str, keep: list[dict[str, Any]] | None = None) -> None:
    try:
        client.put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration={"Rules": [*LIFECYCLE_RULES, *(keep or [])]}
        )
    except (ClientError, BotoCoreError) as exc:
        raise FolderError(
            f"cannot set the lifecycle rules of bucket {bucket}: {describe(exc)}"
        ) from None


def versioning_status(store: Store, bucket: str) -> str | None:
    """'Enabled', 'Suspended', '' (never set), or None when the bucket does not exist."""
    try:
        return str(store.client.get_bucket_versioning(Bucket=bucket).get("Status", ""))
    except ClientError as exc:
        if error_code(exc) == "NoSuchBucket":
            return None
        raise


def _own_rules_intact(rules: list[dict[str, Any]]) -> bool:
    have = {rule.get("ID"): rule for rule in rules}
    for wanted in LIFECYCLE_RULES:
        rule = have.get(wanted["ID"])
        if rule is None or rule.get("Status") != "Enabled":
            return False
        for key in ("NoncurrentVersionExpiration", "AbortIncompleteMultipartUpload", "Expiration"):
            if key in wanted and rule.get(key) != wanted[key]:
                return False
    return True


def _optional(
    call: Any, feature: str, bucket: str, warned: set[tuple[str, str]], warnings: list[str]
) -> None:
    """Hardening S3 may refuse (AccessDenied to least-privilege keys, NotImplemented on
    S3-compatible servers): a warning, once per feature and answer per run; go on."""
    try:
        call()
    except ClientError as exc:
        code = error_code(exc)
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in _NOT_SUPPORTED or status in ("501", "405"):
            reason = "this S3 server does not support it"
        elif code in _DENIED or status == "403":
            reason = "the keys may not set it (IAM policy: matricula-backup iam-policy)"
        else:
            raise FolderError(f"bucket {bucket}: cannot set {feature}: {describe(exc)}") from None
        logger.info("bucket %s: %s not set: %s", bucket, feature, describe(exc))
        if (feature, code) not in warned:
            warned.add((feature, code))
            warnings.append(
                f"bucket {bucket}: {feature} not set ({code or status}: {reason}); the bucket "
                "is used without it (the log names every bucket it happened to)"
            )


# --- objects ---------------------------------------------------------------------------------


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
    offset = 0
    while offset < size:
        crc = 0
        end = min(offset + part_size, size)
        while offset < end:
            chunk = os.pread(fd, min(READ_CHUNK, end - offset), offset)
            if not chunk:
                raise FileChanged("it became shorter while it was read")
            whole.update(chunk)
            crc = crc64nvme(chunk, crc)
            offset += len(chunk)
        parts.append(crc.to_bytes(8, "big"))
    return whole.digest(), parts


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


def list_latest(store: Store, bucket: str, prefix: str) -> Iterator[list[ListedObject]]:
    """The latest, not deleted versions under ``prefix``, a page at a time.

    A bucket that does not exist yields nothing.
    """
    paginator = store.client.get_paginator("list_object_versions")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            objects = []
            for version in page.get("Versions", []):
                rel = version["Key"][len(prefix) :]
                if version.get("IsLatest") and rel and not rel.endswith("/"):
                    objects.append(
                        ListedObject(
                            rel,
                            int(version["Size"]),
                            int(version["LastModified"].timestamp()),
                            version.get("VersionId"),
                        )
                    )
            yield objects
    except ClientError as exc:
        if error_code(exc) != "NoSuchBucket":
            raise


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


# --- restores --------------------------------------------------------------------------------

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


def list_versions(store: Store, bucket: str, prefix: str) -> Iterator[list[Version]]:
    """Every version and delete marker under ``prefix``, a page at a time."""
    paginator = store.client.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
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
    if store.fast_put is not None and size <= FAST_PUT_MAX:
        # Through the CRT (crt.py), like small PUTs: a third of botocore's CPU.
        store.counter("GetObject")
        headers, data = store.fast_put.get_object(bucket, key, version_id, size)
        metadata = {
            name[len("x-amz-meta-") :]: value
            for name, value in headers.items()
            if name.startswith("x-amz-meta-")
        }
        answer = {
            "Restore": headers.get("x-amz-restore"),
            "StorageClass": headers.get("x-amz-storage-class", "STANDARD"),
            "Metadata": metadata,
        }
        return Download(data, expected or _state(answer), size)
    response = store.client.get_object(Bucket=bucket, Key=key, VersionId=version_id)
    return Download(response["Body"], expected or _state(response), size)


def parse_mtime(value: str | None) -> int | None:
    """'1600000000.250000000' (rclone's form) -> nanoseconds, or None."""
    if not value:
        return None
    try:
        seconds, _, fraction = value.partition(".")
        return int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])
    except ValueError:
        return None
