"""Backup folders and their bucket names."""

from __future__ import annotations

from pathlib import Path

import pytest

from matricula_backup.config import Settings
from matricula_backup.folders import backup_folders, bucket_name, is_valid_bucket_name


@pytest.mark.parametrize(
    ("path", "prefix", "start"),
    [
        ("/images/Taufbuch 1890", "", "taufbuch-1890-"),
        ("/images/Taufbücher", "", "taufbucher-"),
        ("/images/Wien/Матрика", "", "folder-"),
        ("/images/a", "", "a-"),
        ("/images/A_B.C", "matricula-", "matricula-a-b-c-"),
        ("/images/sthree-thing", "", "mb-sthree-thing-"),
        ("/images/" + "x" * 200, "", "x"),
    ],
)
def test_bucket_names_are_valid_readable_and_deterministic(
    path: str, prefix: str, start: str
) -> None:
    name = bucket_name(Path(path), prefix)
    assert name.startswith(start)
    assert is_valid_bucket_name(name)
    assert len(name) <= 63
    assert name == bucket_name(Path(path), prefix)


def test_same_name_in_two_places_gets_two_buckets() -> None:
    assert bucket_name(Path("/a/Wien")) != bucket_name(Path("/b/Wien"))


@pytest.mark.parametrize(
    "name",
    ["ab", "-abc", "abc-", "Abc", "a.b.c", "xn--abc", "abc-s3alias", "abc--x-s3", "a" * 64],
)
def test_invalid_bucket_names_are_recognised(name: str) -> None:
    assert not is_valid_bucket_name(name)


def test_roots_expand_to_their_direct_subfolders(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "B" / "deeper").mkdir(parents=True)
    (root / "A").mkdir()
    (root / "file.tif").write_text("")
    (root / "link").symlink_to(root / "A")
    settings = Settings(cache_dir=tmp_path, roots=(root, tmp_path / "missing"))

    folders, problems = backup_folders(settings)

    assert [f.path for f in folders] == [root / "A", root / "B"]
    assert [f.source for f in folders] == ["backup.roots[0]", "backup.roots[0]"]
    said = {p.path: p.message for p in problems}
    assert set(said) == {str(root / "link"), str(root / "file.tif"), None}
    assert said[str(root / "link")].startswith(
        f"backup.roots[0]: symlinked subfolder (-> {root}/A)"
    )
    assert said[str(root / "file.tif")].startswith("backup.roots[0]: a file lying directly in")
    assert said[None].startswith("backup.roots[1]: folder missing")


def test_a_root_without_subfolders_is_reported(tmp_path: Path) -> None:
    (tmp_path / "empty-root").mkdir()
    _, problems = backup_folders(Settings(cache_dir=tmp_path, roots=(tmp_path / "empty-root",)))
    assert "has no subfolders" in problems[0].message


def test_key_prefix_is_the_absolute_path_without_the_leading_slash(tmp_path: Path) -> None:
    folders, _ = backup_folders(Settings(cache_dir=tmp_path, folders=(Path("/images/a b"),)))
    assert folders[0].key_prefix == "images/a b/"
