"""Buckets changed by hand are detected, repaired and reported, per folder."""

from __future__ import annotations

from typing import Any

from tests.conftest import Setup


def _backed_up_folder(setup: Setup) -> str:
    setup.file("Band/a.tif", b"a")
    setup.write_config(backup__folders=[str(setup.images / "Band")])
    assert setup.run().returncode == 0
    return setup.bucket(setup.images / "Band")


def test_suspended_versioning_is_enabled_again_and_reported(setup: Setup, s3: Any) -> None:
    bucket = _backed_up_folder(setup)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    setup.file("Band/b.tif", b"b")

    result = setup.run()

    assert result.returncode == 1
    assert f"bucket {bucket}: versioning was Suspended; enabled again" in result.stderr
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    assert "uploaded 1/1" in result.stdout
    assert setup.db("SELECT operation FROM problems") == [("bucket",)]


def test_removed_lifecycle_rules_are_restored_and_reported(setup: Setup, s3: Any) -> None:
    bucket = _backed_up_folder(setup)
    s3.delete_bucket_lifecycle(Bucket=bucket)
    setup.file("Band/b.tif", b"b")

    result = setup.run()

    assert result.returncode == 1
    assert f"bucket {bucket}: lifecycle rules were changed; restored" in result.stderr
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert {rule["ID"] for rule in rules} == {
        "matricula-backup-noncurrent",
        "matricula-backup-delete-markers",
    }


def test_a_changed_lifecycle_rule_is_restored(setup: Setup, s3: Any) -> None:
    bucket = _backed_up_folder(setup)
    s3.put_bucket_lifecycle_configuration(
        Bucket=bucket,
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": "matricula-backup-noncurrent",
                    "Status": "Enabled",
                    "Filter": {},
                    "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
                }
            ]
        },
    )
    setup.file("Band/b.tif", b"b")

    assert setup.run().returncode == 1
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert rules["matricula-backup-noncurrent"]["NoncurrentVersionExpiration"] == {
        "NoncurrentDays": 180
    }


def test_a_bucket_deleted_by_hand_is_created_again_and_reported(setup: Setup, s3: Any) -> None:
    bucket = _backed_up_folder(setup)
    s3.delete_object(Bucket=bucket, Key=str(setup.images / "Band/a.tif").lstrip("/"))
    for version in s3.list_object_versions(Bucket=bucket).get(
        "Versions", []
    ) + s3.list_object_versions(Bucket=bucket).get("DeleteMarkers", []):
        s3.delete_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])
    s3.delete_bucket(Bucket=bucket)
    setup.file("Band/b.tif", b"b")

    result = setup.run()

    assert result.returncode == 1
    assert "was gone (deleted by hand?) and is created again" in result.stderr
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    keys = [v["Key"] for v in s3.list_object_versions(Bucket=bucket).get("Versions", [])]
    assert keys == [str(setup.images / "Band/b.tif").lstrip("/")]
