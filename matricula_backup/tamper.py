"""Is a bucket still safe to hold the archive? Pure checks of its settings.

Whoever holds the backup keys (or the console) can change a bucket so that
its history disappears later, without touching a single object: a lifecycle
rule that expires versions, suspended versioning, a shortened Object Lock, a
bucket policy that lets another account in. ``s3/buckets.py`` fetches the settings;
the functions here say what is wrong with them, in words a user can act on.
``verify`` and every run that works on a bucket report what they return.

No boto3 here: the inputs are the plain dicts and strings S3 answered.
"""

from __future__ import annotations

import json
import re
from typing import Any

from matricula_backup.config import ObjectLock

# Shorter than this, an expiry of noncurrent versions cuts into the 180 days
# that every Deep Archive version is billed anyway (and that restore --at
# promises): the tool's own rule keeps them exactly that long.
MIN_NONCURRENT_DAYS = 180
_ACCOUNT_IN_ARN = re.compile(r"^arn:aws[a-z-]*:(?:iam|sts)::(\d{12}):")


def destructive_rule(rule: dict[str, Any]) -> str | None:
    """Why an enabled lifecycle rule can destroy backed-up data, or None.

    Harmless: aborting incomplete multipart uploads, removing expired delete
    markers, transitions (Deep Archive is the coldest class), and expiring
    noncurrent versions no sooner than 180 days.
    """
    if rule.get("Status") != "Enabled":
        return None
    expiration = rule.get("Expiration") or {}
    if "Days" in expiration or "Date" in expiration:
        when = f"{expiration['Days']} days" if "Days" in expiration else f"on {expiration['Date']}"
        return f"expires the current version of every object it matches after {when}"
    noncurrent = rule.get("NoncurrentVersionExpiration") or {}
    days = noncurrent.get("NoncurrentDays")
    if days is not None and int(days) < MIN_NONCURRENT_DAYS:
        return (
            f"deletes replaced and deleted versions {days} days after they stop being "
            f"current (the tool keeps them {MIN_NONCURRENT_DAYS})"
        )
    return None


def foreign_rules(rules: list[dict[str, Any]], own_ids: set[str]) -> list[tuple[str, str]]:
    """(rule id, why) of the rules not set by this tool that can destroy data."""
    found = []
    for rule in rules:
        rule_id = str(rule.get("ID") or "(no id)")
        if rule_id in own_ids:
            continue
        why = destructive_rule(rule)
        if why:
            found.append((rule_id, why))
    return found


def policy_problems(policy: str | None, account: str | None) -> list[str]:
    """What in a bucket policy grants access outside the account (``account``: 12 digits).

    Only Allow statements count. A principal "*" is reported whatever its
    conditions say (a condition that limits it to the account is easy to get
    wrong, and the tool's buckets need no policy at all). When the account is
    not known (an S3-compatible server without STS), only "*" is looked for.
    """
    if not policy:
        return []
    try:
        document = json.loads(policy)
    except ValueError:
        return ["the bucket policy is not valid JSON"]
    statements = document.get("Statement", []) if isinstance(document, dict) else []
    if isinstance(statements, dict):
        statements = [statements]
    problems = []
    for index, statement in enumerate(statements):
        if not isinstance(statement, dict) or statement.get("Effect") != "Allow":
            continue
        name = statement.get("Sid") or f"statement {index + 1}"
        for principal in _principals(statement.get("Principal")):
            if principal == "*":
                problems.append(f"bucket policy {name}: allows anyone (Principal *)")
                continue
            other = _account_of(principal)
            if account and other and other != account:
                problems.append(f"bucket policy {name}: allows another AWS account ({principal})")
    return problems


def lock_problems(configuration: dict[str, Any] | None, wanted: ObjectLock) -> list[str]:
    """What makes a bucket's Object Lock weaker than backup.object_lock asks for.

    ``configuration``: GetObjectLockConfiguration's ObjectLockConfiguration of
    a bucket that has Object Lock enabled (a bucket without it is not tampered
    with, only older than the setting: see ``s3.prepare_bucket``).
    """
    rule = ((configuration or {}).get("Rule") or {}).get("DefaultRetention") or {}
    if not rule:
        return [
            "Object Lock has no default retention any more (backup.object_lock asks for "
            f"{wanted.mode} {wanted.days} days); new uploads still carry their own"
        ]
    days = int(rule.get("Days") or 0) + 365 * int(rule.get("Years") or 0)
    problems = []
    if days < wanted.days:
        problems.append(
            f"Object Lock default retention shortened to {days} days "
            f"(backup.object_lock.days is {wanted.days})"
        )
    if wanted.mode == "COMPLIANCE" and rule.get("Mode") != "COMPLIANCE":
        problems.append(
            f"Object Lock default mode weakened to {rule.get('Mode')} (backup.object_lock.mode "
            "is COMPLIANCE)"
        )
    return problems


def _principals(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    found: list[str] = []
    if isinstance(value, dict):
        for kind, names in value.items():
            if kind == "Service":  # an AWS service acting for this account (logging, ...)
                continue
            for name in names if isinstance(names, list) else [names]:
                found.append(str(name))
    return found


def _account_of(principal: str) -> str | None:
    if principal.isdigit() and len(principal) == 12:
        return principal
    match = _ACCOUNT_IN_ARN.match(principal)
    return match.group(1) if match else None
