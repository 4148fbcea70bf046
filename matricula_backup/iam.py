"""Least privilege: the IAM policy each role needs, and why.

Three roles, each a set of IAM actions:

- ``backup``: the nightly run (also ``--dry-run``, ``--reset``, ``--folder``,
  ``--allow-mass-delete``) and ``verify``. It creates the buckets of new
  folders and sets their versioning, lifecycle rules, Object Lock, public
  access block and encryption; it uploads (with an Object Lock retention) and
  extends retentions; it deletes without a version id, which only adds a
  delete marker. It may NOT delete a version or a bucket, change a bucket
  policy or bypass a governance retention: the policy denies those outright,
  so that a broader policy attached by mistake does not give them back.
- ``restore``: ``restore`` and ``drill``: list the buckets and their versions,
  HEAD and GET versions, RestoreObject.
- ``admin``: everything on the tool's buckets, for what the tool never does
  on its own: delete versions or buckets on purpose, remove a bucket policy,
  shorten a governance retention. Used by people, by hand.

The actions of ``backup`` and ``restore`` are not a list kept by hand: they
are the IAM actions of the S3 operations the code sends (``OPERATION_ACTIONS``,
``PARAMETER_ACTIONS``), and ``tests/test_iam.py`` derives the operations each
command reaches from the package's source and checks that both sides agree.
"""

from __future__ import annotations

from typing import Any

ROLES = ("backup", "restore", "admin")

# The CLI commands that talk to S3, and the role whose keys they run with.
# Commands not listed (init, status, history, notify-test, forget,
# iam-policy) send no S3 request at all.
COMMAND_ROLES = {
    "backup": "backup",
    "verify": "backup",
    "check-config": "backup",  # --online: one GetBucketVersioning
    "restore": "restore",
    "drill": "restore",  # a restore drill: list versions, HEAD, RestoreObject, GET
}

# S3 API operation -> the IAM actions it needs (AWS "Actions, resources, and
# condition keys for Amazon S3"). HeadObject needs s3:GetObject, a multipart
# upload s3:PutObject for each of its requests.
OPERATION_ACTIONS: dict[str, tuple[str, ...]] = {
    "CreateBucket": ("s3:CreateBucket",),
    "GetBucketVersioning": ("s3:GetBucketVersioning",),
    "PutBucketVersioning": ("s3:PutBucketVersioning",),
    "GetBucketLifecycleConfiguration": ("s3:GetLifecycleConfiguration",),
    "PutBucketLifecycleConfiguration": ("s3:PutLifecycleConfiguration",),
    "PutPublicAccessBlock": ("s3:PutBucketPublicAccessBlock",),
    "PutBucketEncryption": ("s3:PutEncryptionConfiguration",),
    "GetBucketPolicy": ("s3:GetBucketPolicy",),
    "GetObjectLockConfiguration": ("s3:GetBucketObjectLockConfiguration",),
    "PutObjectLockConfiguration": ("s3:PutBucketObjectLockConfiguration",),
    "ListBuckets": ("s3:ListAllMyBuckets",),
    "ListObjectsV2": ("s3:ListBucket",),
    "ListObjectVersions": ("s3:ListBucketVersions",),
    "PutObject": ("s3:PutObject",),
    "CreateMultipartUpload": ("s3:PutObject",),
    "UploadPart": ("s3:PutObject",),
    "CompleteMultipartUpload": ("s3:PutObject",),
    "AbortMultipartUpload": ("s3:AbortMultipartUpload",),
    "PutObjectRetention": ("s3:PutObjectRetention",),
    "DeleteObjects": ("s3:DeleteObject",),
    "DeleteObject": ("s3:DeleteObject",),
    "HeadObject": ("s3:GetObject",),
    "GetObject": ("s3:GetObject",),
    "RestoreObject": ("s3:RestoreObject",),
    "GetCallerIdentity": (),  # STS: allowed to every identity, no permission needed
}

# A parameter that changes what an operation needs. With a VersionId, reading
# needs s3:GetObjectVersion instead of s3:GetObject (and deleting would need
# s3:DeleteObjectVersion, which no role that runs unattended has).
PARAMETER_ACTIONS: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]] = {
    # (operation, parameter): (actions added, actions no longer needed)
    ("HeadObject", "VersionId"): (("s3:GetObjectVersion",), ("s3:GetObject",)),
    ("GetObject", "VersionId"): (("s3:GetObjectVersion",), ("s3:GetObject",)),
    ("DeleteObject", "VersionId"): (("s3:DeleteObjectVersion",), ()),
    ("PutObject", "ObjectLockMode"): (("s3:PutObjectRetention",), ()),
    ("CreateMultipartUpload", "ObjectLockMode"): (("s3:PutObjectRetention",), ()),
    ("CreateBucket", "ObjectLockEnabledForBucket"): (
        ("s3:PutBucketObjectLockConfiguration", "s3:PutBucketVersioning"),
        (),
    ),
    ("PutObjectRetention", "BypassGovernanceRetention"): (("s3:BypassGovernanceRetention",), ()),
    ("DeleteObjects", "BypassGovernanceRetention"): (("s3:BypassGovernanceRetention",), ()),
}

# What no key that runs unattended may ever do: explicitly denied to ``backup``.
NEVER_UNATTENDED = (
    "s3:DeleteObjectVersion",
    "s3:DeleteBucket",
    "s3:PutBucketPolicy",
    "s3:DeleteBucketPolicy",
    "s3:BypassGovernanceRetention",
)

_BACKUP_ACTIONS = (
    "s3:CreateBucket",
    "s3:GetBucketVersioning",
    "s3:PutBucketVersioning",
    "s3:GetLifecycleConfiguration",
    "s3:PutLifecycleConfiguration",
    "s3:PutBucketPublicAccessBlock",
    "s3:PutEncryptionConfiguration",
    "s3:GetBucketPolicy",
    "s3:GetBucketObjectLockConfiguration",
    "s3:PutBucketObjectLockConfiguration",
    "s3:ListBucketVersions",
    "s3:PutObject",
    "s3:PutObjectRetention",
    "s3:AbortMultipartUpload",
    "s3:DeleteObject",
    "s3:GetObjectVersion",  # verify --deep: HEAD of the recorded version
    # After a lost state.db, a file of an adopted row: HEAD of the latest version
    # reads the SHA-256 S3 computed (s3.upload_unless_in_bucket). Archived
    # bytes stay unreadable without RestoreObject, which this role lacks.
    "s3:GetObject",
)
_RESTORE_ACTIONS = (
    "s3:ListAllMyBuckets",
    "s3:ListBucket",
    "s3:ListBucketVersions",
    "s3:GetObject",
    "s3:GetObjectVersion",
    "s3:RestoreObject",
)
ROLE_ACTIONS: dict[str, tuple[str, ...]] = {
    "backup": _BACKUP_ACTIONS,
    "restore": _RESTORE_ACTIONS,
    "admin": ("s3:*",),
}

# Actions on the account (Resource "*") and on buckets; the rest act on objects.
_ACCOUNT_ACTIONS = {"s3:ListAllMyBuckets"}
_OBJECT_ACTIONS = {
    "s3:PutObject",
    "s3:PutObjectRetention",
    "s3:AbortMultipartUpload",
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:GetObject",
    "s3:GetObjectVersion",
    "s3:RestoreObject",
    "s3:BypassGovernanceRetention",
}


def actions_of(operation: str, parameters: set[str]) -> set[str]:
    """The IAM actions one S3 operation needs when sent with ``parameters``."""
    if operation not in OPERATION_ACTIONS:
        raise KeyError(f"no IAM actions known for S3 operation {operation}: add it to iam.py")
    actions = set(OPERATION_ACTIONS[operation])
    for (name, parameter), (added, replaced) in PARAMETER_ACTIONS.items():
        if name == operation and parameter in parameters:
            actions = (actions - set(replaced)) | set(added)
    return actions


def allows(role: str, action: str) -> bool:
    """Whether ``role``'s policy allows ``action`` (and does not deny it)."""
    if role == "backup" and action in NEVER_UNATTENDED:
        return False
    granted = ROLE_ACTIONS[role]
    return "s3:*" in granted or action in granted


def partition(region: str | None) -> str:
    """The ARN partition of a region: aws, aws-cn or aws-us-gov."""
    if region and region.startswith("cn-"):
        return "aws-cn"
    if region and region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def policy(
    role: str, bucket_prefix: str, region: str | None = None, account: str | None = None
) -> dict[str, Any]:
    """The IAM policy document of ``role``, scoped to the buckets named ``<prefix>*``.

    Bucket names are global: ``<prefix>*`` also matches buckets of other
    accounts. With ``account``, the buckets must belong to it too
    (``s3:ResourceAccount``), so that a changed bucket name cannot send the
    archive to someone else's bucket.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    arn = f"arn:{partition(region)}:s3:::{bucket_prefix}*"
    actions = ROLE_ACTIONS[role]
    statements: list[dict[str, Any]] = []
    listing = sorted(a for a in actions if a in _ACCOUNT_ACTIONS)
    if listing:
        statements.append(
            {"Sid": "ListTheBuckets", "Effect": "Allow", "Action": listing, "Resource": "*"}
        )
    if role == "admin":
        statements.append(
            {
                "Sid": "EverythingOnTheBackupBuckets",
                "Effect": "Allow",
                "Action": ["s3:*"],
                "Resource": [arn, f"{arn}/*"],
            }
        )
        statements.insert(
            0,
            {
                "Sid": "ListTheBuckets",
                "Effect": "Allow",
                "Action": ["s3:ListAllMyBuckets"],
                "Resource": "*",
            },
        )
        return _owned(statements, account)
    bucket = sorted(a for a in actions if a not in _ACCOUNT_ACTIONS | _OBJECT_ACTIONS)
    objects = sorted(a for a in actions if a in _OBJECT_ACTIONS)
    statements.append({"Sid": "Buckets", "Effect": "Allow", "Action": bucket, "Resource": arn})
    statements.append(
        {"Sid": "Objects", "Effect": "Allow", "Action": objects, "Resource": f"{arn}/*"}
    )
    if role == "backup":
        statements.append(
            {
                "Sid": "NeverFromTheNightlyKeys",
                "Effect": "Deny",
                "Action": list(NEVER_UNATTENDED),
                "Resource": [arn, f"{arn}/*"],
            }
        )
    return _owned(statements, account)


def _owned(statements: list[dict[str, Any]], account: str | None) -> dict[str, Any]:
    if account:
        for statement in statements:
            if statement["Effect"] == "Allow" and statement["Resource"] != "*":
                statement["Condition"] = {"StringEquals": {"s3:ResourceAccount": account}}
    return {"Version": "2012-10-17", "Statement": statements}
