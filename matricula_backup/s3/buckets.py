"""Bucket setup and checks: creation, versioning, lifecycle rules, Object Lock,
public access block, encryption and the bucket policy.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from matricula_backup import tamper
from matricula_backup.config import ObjectLock
from matricula_backup.errors import (
    FolderError,
)
from matricula_backup.s3.client import Store, describe, error_code

logger = logging.getLogger(__name__)


NONCURRENT_DAYS = 180
ABORT_MULTIPART_DAYS = 7

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


def bucket_names(store: Store) -> list[str]:
    """The names of every bucket the keys can see (one ListBuckets)."""
    return [str(bucket["Name"]) for bucket in store.client.list_buckets().get("Buckets", [])]


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
