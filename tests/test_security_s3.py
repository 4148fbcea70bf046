"""A stolen key or a ransomed server cannot destroy the archive unnoticed, against moto.

Hardening S3 refuses is a warning (through testkit/proxy.py); Object Lock on
new buckets, on every upload (CRT PUT, botocore PUT, multipart) and extended
before it lapses; a version delete refused; lifecycle rules, bucket policies and
a weakened Object Lock found by ``verify`` and by a run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from testkit.proxy import S3Proxy
from tests.conftest import Setup, latest_versions

MiB = 1024 * 1024
DAY = 86400


@pytest.fixture()
def faults(setup: Setup, moto_url: str) -> Iterator[S3Proxy]:
    proxy = S3Proxy(moto_url, seed=10).start()
    setup.write_config(aws__endpoint_url=proxy.url)
    yield proxy
    proxy.stop()


def _key(path: Path) -> str:
    return str(path).lstrip("/")


def _tree(setup: Setup, name: str = "Band", count: int = 3) -> Path:
    for number in range(count):
        setup.file(f"{name}/{number:03d}.tif", f"scan {number}")
    return setup.images / name


@pytest.mark.parametrize(
    ("kind", "code"), [("denied", "AccessDenied"), ("unsupported", "NotImplemented")]
)
def test_refused_hardening_is_a_warning_and_everything_is_uploaded(
    setup: Setup, s3: Any, faults: S3Proxy, kind: str, code: str
) -> None:
    folder = _tree(setup)
    other = _tree(setup, "Band 2")
    setup.write_config(backup__folders=[str(folder), str(other)])
    faults.configure(rate=1.0, kinds=(kind,), only={"PUT publicAccessBlock", "PUT encryption"})

    result = setup.run()

    assert result.returncode == 0, result.stderr
    assert "uploaded 3/3 files" in result.stdout and "0 errors" in result.stdout
    assert faults.faulted == {"PUT publicAccessBlock": 2, "PUT encryption": 2}
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    # Once per setting and answer, not once per bucket.
    assert len(warnings) == 2, result.stdout
    assert f"public access block not set ({code}" in warnings[0]
    assert f"default encryption not set ({code}" in warnings[1]
    for path in (folder, other):
        bucket = setup.bucket(path)
        assert len(latest_versions(s3, bucket)) == 3
        assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    assert setup.db("SELECT outcome, errors FROM runs") == [("ok", 0)]


def test_refused_versioning_still_fails_the_folder(setup: Setup, faults: S3Proxy) -> None:
    folder = _tree(setup)
    setup.write_config(backup__folders=[str(folder)])
    faults.configure(rate=1.0, kinds=("denied",), only={"PUT versioning"})

    result = setup.run()

    assert result.returncode == 1
    assert "cannot enable versioning" in result.stderr and "AccessDenied" in result.stderr
    assert "uploaded 0/3" in result.stdout


def _locked_setup(setup: Setup, days: int = 2, **lock: Any) -> Path:
    folder = setup.images / "Band"
    setup.file("Band/small.tif", b"s" * 1000)  # a PUT through the CRT
    setup.file("Band/medium.tif", b"m" * (9 * MiB))  # above the CRT's 8 MiB: botocore's PUT
    setup.file("Band/large.tif", b"l" * (11 * MiB))  # a multipart upload
    setup.write_config(
        backup__folders=[str(folder)],
        backup__multipart_threshold_mb=10,
        backup__part_size_mb=5,
        backup__object_lock={"mode": "GOVERNANCE", "days": days, **lock},
    )
    return folder


def _retention(s3: Any, bucket: str, key: str, version_id: str) -> tuple[str, int]:
    head = s3.head_object(Bucket=bucket, Key=key, VersionId=version_id)
    return head.get("ObjectLockMode"), int(head["ObjectLockRetainUntilDate"].timestamp())


def test_object_lock_on_new_buckets_and_every_upload(setup: Setup, s3: Any) -> None:
    folder = _locked_setup(setup, days=2)
    before = int(time.time())

    result = setup.run()

    assert result.returncode == 0, result.stderr
    assert "uploaded 3/3 files" in result.stdout
    bucket = setup.bucket(folder)
    assert s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"] == {
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 2, "Years": 0}},
    }
    latest = latest_versions(s3, bucket)
    rows = dict(setup.db(f'SELECT path, retain_until FROM "{setup.table(folder)}"'))
    for name in ("small.tif", "medium.tif", "large.tif"):
        key = _key(folder / name)
        mode, until = _retention(s3, bucket, key, latest[key]["VersionId"])
        assert mode == "GOVERNANCE", name
        assert before + 2 * DAY <= until <= int(time.time()) + 2 * DAY, name
        assert rows[name] == until, name

    # Governance mode without the bypass permission: no version can be deleted...
    key = _key(folder / "small.tif")
    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket=bucket, Key=key, VersionId=latest[key]["VersionId"])
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert latest_versions(s3, bucket)[key]["VersionId"] == latest[key]["VersionId"]
    # ... while a delete marker (what the tool sends for a removed file) still works.
    (folder / "small.tif").unlink()
    assert setup.run().returncode == 0
    assert key not in latest_versions(s3, bucket)


def test_retention_is_extended_before_it_lapses(setup: Setup, s3: Any) -> None:
    # renew_days == days: every version is due at the next run (a day passing, in short).
    folder = _locked_setup(setup, days=1, renew_days=1)
    assert setup.run().returncode == 0
    bucket = setup.bucket(folder)
    table = setup.table(folder)
    first = dict(setup.db(f'SELECT path, retain_until FROM "{table}"'))
    time.sleep(1.1)

    dry = setup.run("--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would extend Object Lock on 3" in dry.stdout
    assert "for about 3 PUT requests (3 of them extend Object Lock retentions)" in dry.stdout

    result = setup.run()

    assert result.returncode == 0, result.stderr
    assert "Object Lock extended on 3/3" in result.stdout
    assert "(3 of them set Object Lock retentions)" in result.stdout
    second = dict(setup.db(f'SELECT path, retain_until FROM "{table}"'))
    latest = latest_versions(s3, bucket)
    for name, until in second.items():
        assert until > first[name], name
        assert (
            _retention(s3, bucket, _key(folder / name), latest[_key(folder / name)]["VersionId"])[1]
            == until
        )


def test_a_refused_extension_is_an_error_and_tried_again_next_run(
    setup: Setup, faults: S3Proxy
) -> None:
    folder = _locked_setup(setup, days=1, renew_days=1)
    assert setup.run().returncode == 0
    table = setup.table(folder)
    first = dict(setup.db(f'SELECT path, retain_until FROM "{table}"'))
    time.sleep(1.1)
    faults.configure(rate=1.0, kinds=("denied",), only={"PUT retention"})

    refused = setup.run()

    assert refused.returncode == 1
    assert "Object Lock extended on 0/3" in refused.stdout
    assert refused.stderr.count("Object Lock not extended: PutObjectRetention failed") == 3
    assert dict(setup.db(f'SELECT path, retain_until FROM "{table}"')) == first
    faults.off()
    again = setup.run()
    assert again.returncode == 0, again.stderr
    assert "Object Lock extended on 3/3" in again.stdout
    assert all(
        until > first[path] for path, until in setup.db(f'SELECT path, retain_until FROM "{table}"')
    )


def test_a_reset_locks_the_versions_it_adopts(setup: Setup, s3: Any) -> None:
    """A listing does not say until when a version is locked: the reset locks them anew."""
    folder = _locked_setup(setup, days=2)
    assert setup.run().returncode == 0
    table = setup.table(folder)
    check = setup.run("check-config")
    assert "has not been seen with Object Lock on" not in check.stdout

    dry = setup.run("--reset", "--dry-run")
    assert "would extend Object Lock on 3" in dry.stdout, dry.stdout
    before = int(time.time())
    result = setup.run("--reset")

    assert result.returncode == 0, result.stderr
    # large.tif went up in parts (its S3 checksum, a CRC64NVME, proves nothing): it is
    # uploaded again, locked by its upload; the other two are compared and kept.
    assert "2 found already in the bucket" in result.stdout
    assert "uploaded 1/1 files" in result.stdout
    assert "Object Lock extended on 2/2" in result.stdout
    latest = latest_versions(s3, setup.bucket(folder))
    for path, until in setup.db(f'SELECT path, retain_until FROM "{table}"'):
        assert until >= before + 2 * DAY, path
        key = _key(folder / path)
        assert _retention(s3, setup.bucket(folder), key, latest[key]["VersionId"])[1] == until


def test_nothing_is_due_with_the_default_renewal_window(setup: Setup, s3_proxy: Any) -> None:
    folder = _locked_setup(setup, days=180)
    assert setup.run().returncode == 0
    s3_proxy.reset_counts()

    result = setup.run()

    assert result.returncode == 0, result.stderr
    assert s3_proxy.total == 0  # nothing to do costs nothing, Object Lock or not
    assert "Object Lock" not in result.stdout
    assert folder.is_dir()


def test_an_existing_bucket_without_object_lock_is_told_how_to_enable_it(
    setup: Setup, s3: Any
) -> None:
    folder = _tree(setup)
    setup.write_config(backup__folders=[str(folder)])
    assert setup.run().returncode == 0
    setup.write_config(backup__object_lock={"mode": "GOVERNANCE", "days": 180})
    setup.file("Band/new.tif", b"new")

    result = setup.run()

    bucket = setup.bucket(folder)
    assert result.returncode == 0, result.stderr
    assert "uploaded 1/1" in result.stdout
    assert f"warning: bucket {bucket} has no Object Lock" in result.stdout
    command = f"aws s3api put-object-lock-configuration --bucket {bucket}"
    assert command in result.stdout
    check = setup.run("check-config")
    assert check.returncode == 0, check.stderr
    assert f"Object Lock: bucket {bucket} has not been seen with Object Lock on" in check.stdout
    assert command in check.stdout

    # What it says is valid for S3. (moto refuses Object Lock on a bucket that is not
    # empty, unlike AWS since 2023, so it is not applied here.)
    configuration = check.stdout.split("--object-lock-configuration '", 1)[1].split("'", 1)[0]
    assert json.loads(configuration) == {
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 180}},
    }
    found = setup.run("verify")
    assert found.returncode == 1
    assert f"finding: object_lock: s3://{bucket}: no Object Lock" in found.stdout


@pytest.mark.parametrize(
    ("lock", "message"),
    [
        ("GOVERNANCE", "backup.object_lock: must be an object"),
        ({"mode": "governance", "days": 180}, "backup.object_lock.mode: must be GOVERNANCE"),
        ({"mode": "COMPLIANCE"}, "backup.object_lock.days: missing"),
        ({"mode": "COMPLIANCE", "days": 0}, "backup.object_lock.days: must be a whole number"),
        (
            {"mode": "GOVERNANCE", "days": 10, "renew_days": 11},
            "backup.object_lock.renew_days: must be a whole number from 1 to 10",
        ),
        ({"mode": "GOVERNANCE", "days": 10, "years": 1}, "unknown key years"),
    ],
)
def test_object_lock_settings_are_validated(setup: Setup, lock: Any, message: str) -> None:
    setup.write_config(backup__folders=[str(setup.images)], backup__object_lock=lock)
    result = setup.run("check-config")
    assert result.returncode == 2
    assert message in result.stderr


# --- tampering -------------------------------------------------------------------------------

EVIL_RULE = {
    "ID": "cleanup",
    "Status": "Enabled",
    "Filter": {},
    "Expiration": {"Days": 1},
    "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
}
HARMLESS_RULE = {
    "ID": "tidy-uploads",
    "Status": "Enabled",
    "Filter": {"Prefix": "tmp/"},
    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 3},
}


def _add_rules(s3: Any, bucket: str, *rules: dict[str, Any]) -> None:
    current = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    s3.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [*current, *rules]}
    )


def test_a_foreign_lifecycle_rule_is_found_by_verify_and_removed_by_a_run(
    setup: Setup, s3: Any, httpserver: Any
) -> None:
    folder = _tree(setup)
    httpserver.expect_request("/hook").respond_with_data("", status=202)
    setup.write_config(
        backup__folders=[str(folder)], notification__webhook=httpserver.url_for("/hook")
    )
    assert setup.run().returncode == 0
    bucket = setup.bucket(folder)
    _add_rules(s3, bucket, EVIL_RULE, HARMLESS_RULE)

    found = setup.run("verify")

    assert found.returncode == 1
    assert (
        f"finding: lifecycle: s3://{bucket}: bucket {bucket}: lifecycle rule 'cleanup' not set "
        "by this tool expires the current version of every object it matches after 1 days"
    ) in found.stdout
    assert "tidy-uploads" not in found.stdout
    assert len(s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]) == 4  # unchanged

    setup.file("Band/new.tif", b"new")
    result = setup.run()

    assert result.returncode == 1
    assert "uploaded 1/1" in result.stdout
    assert "lifecycle rule 'cleanup' not set by this tool" in result.stderr
    assert "removed. Find out who added it" in result.stderr
    rules = {rule["ID"] for rule in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert rules == {
        "matricula-backup-noncurrent",
        "matricula-backup-delete-markers",
        "tidy-uploads",
    }
    # Both told Teams: the verify (it runs unattended, weekly) and the run.
    assert len(httpserver.log) == 2
    for request, _response in httpserver.log:
        assert "lifecycle rule 'cleanup'" in json.dumps(request.get_json())
    assert setup.run("verify").returncode == 0


def test_a_shorter_noncurrent_expiry_is_destructive_a_longer_one_is_not(
    setup: Setup, s3: Any
) -> None:
    folder = _tree(setup)
    setup.write_config(backup__folders=[str(folder)])
    assert setup.run().returncode == 0
    bucket = setup.bucket(folder)
    longer = {"ID": "keep-longer", "Status": "Enabled", "Filter": {}}
    _add_rules(s3, bucket, {**longer, "NoncurrentVersionExpiration": {"NoncurrentDays": 365}})
    assert setup.run("verify").returncode == 0
    _add_rules(
        s3, bucket, {**longer, "ID": "short", "NoncurrentVersionExpiration": {"NoncurrentDays": 30}}
    )
    found = setup.run("verify")
    assert found.returncode == 1
    assert (
        "lifecycle rule 'short' not set by this tool deletes replaced and deleted versions 30"
        in (found.stdout)
    )


@pytest.mark.parametrize(
    ("principal", "finding"),
    [
        ("*", "allows anyone (Principal *)"),
        ({"AWS": "arn:aws:iam::999999999999:root"}, "allows another AWS account"),
        ({"AWS": ["444455556666"]}, "allows another AWS account"),
        ({"AWS": "arn:aws:iam::123456789012:role/admin"}, None),  # moto's own account
    ],
)
def test_a_bucket_policy_that_lets_others_in_is_found(
    setup: Setup, s3: Any, principal: Any, finding: str | None
) -> None:
    folder = _tree(setup)
    setup.write_config(backup__folders=[str(folder)])
    assert setup.run().returncode == 0
    bucket = setup.bucket(folder)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Share",
                "Effect": "Allow",
                "Principal": principal,
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{bucket}/*",
            }
        ],
    }
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))

    found = setup.run("verify")
    setup.file("Band/new.tif", b"new")
    run = setup.run()

    if finding is None:
        assert found.returncode == 0, found.stdout
        assert run.returncode == 0, run.stderr
        return
    assert found.returncode == 1
    assert f"finding: policy: s3://{bucket}: bucket {bucket}: bucket policy Share: {finding}" in (
        found.stdout
    )
    assert f"aws s3api delete-bucket-policy --bucket {bucket}" in found.stdout
    assert run.returncode == 1 and finding in run.stderr
    assert "uploaded 1/1" in run.stdout  # reported, the backup goes on
    assert s3.get_bucket_policy(Bucket=bucket)["Policy"]  # never changed by the tool


def test_a_weakened_object_lock_and_suspended_versioning_are_found(setup: Setup, s3: Any) -> None:
    folder = _locked_setup(setup, days=2)
    assert setup.run().returncode == 0
    bucket = setup.bucket(folder)
    # moto changes Object Lock settings of empty buckets only (AWS: of any): an admin
    # empties it first, which takes the bypass permission no nightly key has.
    for version in s3.list_object_versions(Bucket=bucket)["Versions"]:
        s3.delete_object(
            Bucket=bucket,
            Key=version["Key"],
            VersionId=version["VersionId"],
            BypassGovernanceRetention=True,
        )
    s3.put_object_lock_configuration(
        Bucket=bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
        },
    )
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})

    found = setup.run("verify")

    assert found.returncode == 1
    assert "Object Lock default retention shortened to 1 days (backup.object_lock.days is 2)" in (
        found.stdout
    )
    assert "finding: versioning:" in found.stdout
    setup.file("Band/new.tif", b"new")
    run = setup.run()
    assert run.returncode == 1
    assert "Object Lock default retention shortened to 1 days" in run.stderr
    assert "versioning was Suspended; enabled again" in run.stderr
