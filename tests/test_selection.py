"""backup.exclude and --folder: what a run looks at."""

from __future__ import annotations

from typing import Any

import pytest

from matricula_backup.exclude import Excludes
from tests.conftest import Setup


@pytest.mark.parametrize(
    ("patterns", "name", "rel", "excluded"),
    [
        (("*.tmp",), "a.tmp", "x/y/a.tmp", True),
        (("*.tmp",), "a.tif", "x/a.tmp/a.tif", False),  # the folder a.tmp is matched by name
        (("*.tmp",), "a.tmp", "a.tmp", True),
        (("Thumbs.db",), "thumbs.db", "thumbs.db", False),  # case matters
        ((".DS_Store",), ".DS_Store", "deep/down/.DS_Store", True),
        (("scans/tmp/*",), "a.tif", "scans/tmp/a.tif", True),
        (("/scans/tmp/*",), "a.tif", "scans/tmp/a.tif", True),
        (("scans/tmp/*",), "a.tif", "other/scans/tmp/a.tif", False),  # anchored at the folder
        (("*/Vorschau/*",), "p.jpg", "Band 1/Vorschau/p.jpg", True),
        (("Band ?",), "Band 1", "Band 1", True),
        ((), "a", "a", False),
    ],
)
def test_the_matching_rules(patterns: tuple[str, ...], name: str, rel: str, excluded: bool) -> None:
    assert Excludes(patterns).excluded(name, rel) is excluded


def _latest_keys(s3: Any, bucket: str) -> set[str]:
    versions = s3.list_object_versions(Bucket=bucket).get("Versions", [])
    return {v["Key"].rsplit("/Band/", 1)[1] for v in versions if v["IsLatest"]}


def test_excluded_files_are_not_uploaded_and_deleted_once_excluded(setup: Setup, s3: Any) -> None:
    folder = setup.images / "Band"
    for rel in ("a.tif", "b.tmp", "Thumbs.db", "cache/c.tif", "sub/d.tif", "sub/.DS_Store"):
        setup.file(f"Band/{rel}", rel)
    setup.write_config(
        backup__folders=[str(folder)], backup__exclude=["*.tmp", "Thumbs.db", ".DS_Store"]
    )

    dry = setup.run("--dry-run")
    assert "would upload 3 files" in dry.stdout and "3 excluded by backup.exclude" in dry.stdout

    assert setup.run().returncode == 0
    bucket = setup.bucket(folder)
    assert _latest_keys(s3, bucket) == {"a.tif", "cache/c.tif", "sub/d.tif"}

    setup.write_config(backup__exclude=["*.tmp", "Thumbs.db", ".DS_Store", "cache"])
    result = setup.run("--allow-mass-delete")  # 1 of 3 is more than the default 20%

    assert result.returncode == 0, result.stderr
    assert "deleted 1/1" in result.stdout
    assert _latest_keys(s3, bucket) == {"a.tif", "sub/d.tif"}


def test_a_bad_exclude_is_a_config_error(setup: Setup) -> None:
    setup.write_config(backup__folders=["/images"], backup__exclude="*.tmp")
    result = setup.run()
    assert result.returncode == 2
    assert "backup.exclude: must be a list of glob patterns" in result.stderr


def test_folder_option_backs_up_only_that_folder(setup: Setup, s3: Any) -> None:
    setup.file("One/a.tif")
    setup.file("Two/b.tif")
    one, two = setup.images / "One", setup.images / "Two"
    setup.write_config(backup__folders=[str(one), str(two)])

    result = setup.run("--folder", str(two))

    assert result.returncode == 0, result.stderr
    assert str(two) in result.stdout and str(one) not in result.stdout
    assert len(s3.list_buckets()["Buckets"]) == 1

    unknown = setup.run("--folder", str(setup.images / "Three"))
    assert unknown.returncode == 2
    assert "not a backup folder of config.json" in unknown.stderr
