"""Awkward trees: odd names, odd file types, unreadable or vanished folders.

One test per case of docs/awkward-trees.md. Every test checks the end state in
the bucket (moto, via the ``s3`` fixture) and in ``state.db``, not only the
exit code. The permission tests run the command as the unprivileged user
nobody (uid 65534), since root reads everything.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from testkit.proxy import S3Proxy
from tests.conftest import CLI, Setup, latest_versions, skip_unless_other_users_can_run_the_command

NOBODY = 65534
SETPRIV = shutil.which("setpriv")


# --- helpers ---------------------------------------------------------------------------------


def _key(path: Path | str) -> str:
    return str(path).lstrip("/")


def _versions(s3: Any, bucket: str) -> list[str]:
    return sorted(v["Key"] for v in s3.list_object_versions(Bucket=bucket).get("Versions", []))


def _markers(s3: Any, bucket: str) -> list[str]:
    return sorted(m["Key"] for m in s3.list_object_versions(Bucket=bucket).get("DeleteMarkers", []))


def _buckets(s3: Any) -> list[str]:
    return sorted(b["Name"] for b in s3.list_buckets()["Buckets"])


def _rows(setup: Setup, folder: Path) -> dict[str, tuple[Any, ...]]:
    """path -> (size, state, version_id, error) of the folder's files table."""
    rows = setup.db(f'SELECT path, size, state, version_id, error FROM "{setup.table(folder)}"')
    return {row[0]: tuple(row[1:]) for row in rows}


def _states(setup: Setup, folder: Path) -> dict[str, str]:
    return {path: row[1] for path, row in _rows(setup, folder).items()}


def _problems(setup: Setup) -> list[tuple[str, str | None, str]]:
    """(operation, path, message) of the last run's problems."""
    return [
        (row[0], row[1], row[2])
        for row in setup.db(
            "SELECT operation, path, message FROM problems "
            "WHERE run_id = (SELECT max(id) FROM runs) ORDER BY id"
        )
    ]


def _last_run(setup: Setup) -> tuple[Any, ...]:
    return setup.db(
        "SELECT outcome, files_uploaded, files_deleted, errors FROM runs ORDER BY id DESC LIMIT 1"
    )[0]


def _log(setup: Setup) -> str:
    return (setup.cache / "matricula-backup.log").read_text()


def _write_bytes_path(path: bytes, content: bytes = b"x") -> None:
    with open(path, "wb") as handle:
        handle.write(content)


def _rel_of_bytes(length: int, fill: str = "d") -> str:
    """A relative path of exactly ``length`` UTF-8 bytes, in segments below NAME_MAX."""
    per_char = len(fill.encode())
    segments: list[str] = []
    remaining = length
    while remaining > 200:
        segment = fill * (199 // per_char)
        segments.append(segment)
        remaining -= len(segment.encode()) + 1  # the '/' after it
    segments.append("f" * remaining)
    rel = "/".join(segments)
    assert len(rel.encode()) == length
    return rel


# --- running as nobody -----------------------------------------------------------------------


@pytest.fixture()
def as_nobody(setup: Setup) -> Iterator[Any]:
    """A runner of the command as uid/gid 65534, with the cache handed over to that user.

    The tmp_path chain is made traversable (o+x) for the test and restored after.
    """
    if SETPRIV is None:
        pytest.skip("setpriv (util-linux) is not installed")
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to the user nobody")
    skip_unless_other_users_can_run_the_command()
    changed: list[tuple[Path, int]] = []
    path = setup.tmp
    while path != path.parent and str(path) != "/tmp":
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o001 == 0:
            changed.append((path, mode))
            path.chmod(mode | 0o001)
        path = path.parent

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        for dirpath, _dirs, files in os.walk(setup.cache):
            os.chown(dirpath, NOBODY, NOBODY)
            for name in files:
                os.chown(os.path.join(dirpath, name), NOBODY, NOBODY)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["HOME"] = str(setup.cache)
        return subprocess.run(
            [
                SETPRIV,
                f"--reuid={NOBODY}",
                f"--regid={NOBODY}",
                "--clear-groups",
                CLI,
                "--cache",
                str(setup.cache),
                *args,
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=setup.cache,
            timeout=300,
        )

    yield run
    for changed_path, mode in changed:
        changed_path.chmod(mode)


# --- names -----------------------------------------------------------------------------------


def test_names_that_are_not_utf8_are_reported_and_skipped(setup: Setup, s3: Any) -> None:
    folder = setup.images / "Band"
    setup.file("Band/good.tif", b"good")
    setup.file("Band/sub/also-good.tif", b"also")
    raw = os.fsencode(str(folder))
    _write_bytes_path(raw + b"/bad-\xff.tif")  # Latin-1 leftovers, not UTF-8
    os.mkdir(raw + b"/Taufb\xfccher")  # a whole directory with such a name
    _write_bytes_path(raw + b"/Taufb\xfccher/1.tif")
    os.mkdir(raw + b"/Taufb\xfccher/deeper")
    _write_bytes_path(raw + b"/Taufb\xfccher/deeper/2.tif")
    root = setup.images / "archive"  # a root: each subfolder is a backup folder
    setup.file("archive/Graz/g.tif", b"g")
    os.mkdir(os.fsencode(str(root)) + b"/Taufb\xfccher")
    _write_bytes_path(os.fsencode(str(root)) + b"/Taufb\xfccher/3.tif")
    setup.write_config(backup__folders=[str(folder)], backup__roots=[str(root)])

    result = setup.run()

    assert result.returncode == 1, result.stderr
    assert "uploaded 2/2 files" in result.stdout
    assert set(latest_versions(s3, setup.bucket(root / "Graz"))) == {_key(root / "Graz/g.tif")}
    assert setup.db("SELECT count(*) FROM folders") == [(2,)]  # Band and Graz only
    assert set(latest_versions(s3, setup.bucket(folder))) == {
        _key(folder / "good.tif"),
        _key(folder / "sub/also-good.tif"),
    }
    assert _markers(s3, setup.bucket(folder)) == []
    assert _states(setup, folder) == {"good.tif": "backed_up", "sub/also-good.tif": "backed_up"}
    # One problem per bad name: the directory is reported once, not per file below it.
    problems = _problems(setup)
    assert sorted((p[0], p[1] or "") for p in problems) == [
        ("config", f"{root}/Taufb\\xfccher"),
        ("scan", f"{folder}/Taufb\\xfccher"),
        ("scan", f"{folder}/bad-\\xff.tif"),
    ]
    assert all("not valid UTF-8" in p[2] for p in problems)
    assert _last_run(setup) == ("errors", 3, 0, 3)


def test_a_newline_in_a_name_fails_on_moto_and_is_recorded(setup: Setup, s3: Any) -> None:
    # Real S3 accepts keys with a newline; moto's PutObject answers 404 for them.
    folder = setup.images / "Band"
    setup.file("Band/ok.tif", b"ok")
    setup.file("Band/new\nline.tif", b"newline")
    setup.write_config(backup__folders=[str(folder)])

    result = setup.run()

    assert result.returncode == 1, result.stderr
    assert "uploaded 1/2 files" in result.stdout
    bucket = setup.bucket(folder)
    assert _versions(s3, bucket) == [_key(folder / "ok.tif")]
    rows = _rows(setup, folder)
    assert rows["ok.tif"][1] == "backed_up"
    size, state, version_id, error = rows["new\nline.tif"]
    assert (size, state, version_id) == (7, "failed", None)
    assert "PutObject failed" in error and "tried again next run" in error
    assert [(p[0], p[1]) for p in _problems(setup)] == [("upload", str(folder / "new\nline.tif"))]
    assert _last_run(setup) == ("errors", 1, 0, 1)


def test_a_backslash_in_a_name_is_uploaded_under_its_key_as_is(setup: Setup, s3: Any) -> None:
    folder = setup.images / "Band"
    setup.file("Band/back\\slash.tif", b"one")
    setup.file("Band/dir\\name/inside.tif", b"two")
    setup.write_config(backup__folders=[str(folder)])

    result = setup.run()

    assert result.returncode == 0, result.stderr
    bucket = setup.bucket(folder)
    expected = {
        _key(folder) + "/back\\slash.tif",
        _key(folder) + "/dir\\name/inside.tif",
    }
    assert set(latest_versions(s3, bucket)) == expected
    head = s3.head_object(Bucket=bucket, Key=_key(folder) + "/back\\slash.tif")
    assert head["ContentLength"] == 3
    assert head["Metadata"]["sha256"] == hashlib.sha256(b"one").hexdigest()
    assert _states(setup, folder) == {
        "back\\slash.tif": "backed_up",
        "dir\\name/inside.tif": "backed_up",
    }
    assert _problems(setup) == []


def test_keys_longer_than_1024_bytes_are_reported_and_skipped(setup: Setup, s3: Any) -> None:
    folder = setup.images / "long"
    folder.mkdir()
    prefix = len((_key(folder) + "/").encode())
    exact = _rel_of_bytes(1024 - prefix)  # a key of exactly 1024 bytes: allowed
    over = _rel_of_bytes(1025 - prefix, fill="e")  # one byte more: skipped
    # Fewer than 1024 characters but more than 1024 bytes (ü is two bytes): skipped.
    umlauts = "/".join(["ü" * 110] * 5) + "/u.tif"
    assert len(_key(folder / umlauts)) < 1024 < len(_key(folder / umlauts).encode())
    for rel in (exact, over, umlauts):
        setup.file(f"long/{rel}", b"deep")
    setup.file("long/short.tif", b"short")
    setup.write_config(backup__folders=[str(folder)])

    result = setup.run()

    assert result.returncode == 1, result.stderr
    assert "uploaded 2/2 files" in result.stdout
    bucket = setup.bucket(folder)
    latest = latest_versions(s3, bucket)
    assert set(latest) == {_key(folder / exact), _key(folder / "short.tif")}
    assert len(_key(folder / exact).encode()) == 1024
    assert _states(setup, folder) == {exact: "backed_up", "short.tif": "backed_up"}
    problems = _problems(setup)
    assert sorted(p[1] or "" for p in problems) == sorted(
        [str(folder / over), str(folder / umlauts)]
    )
    assert all(p[0] == "scan" and "longer than the 1024 bytes" in p[2] for p in problems)


# --- file types ------------------------------------------------------------------------------


def test_symlinks_are_not_followed_nor_uploaded(setup: Setup, s3: Any) -> None:
    folder = setup.images / "Band"
    setup.file("Band/a.tif", b"a")
    setup.file("Band/sub/b.tif", b"b")
    setup.file("outside/secret.tif", b"not part of the backup folder")
    os.symlink("a.tif", folder / "link-to-file")
    os.symlink(setup.images / "outside/secret.tif", folder / "link-to-outside-file")
    os.symlink("sub", folder / "link-to-folder")
    os.symlink(setup.images / "outside", folder / "link-to-outside-folder")
    os.symlink("..", folder / "sub/loop-up")  # a directory loop
    os.symlink("self", folder / "self")  # a link to itself
    os.symlink("loop-b", folder / "loop-a")  # two links to each other
    os.symlink("loop-a", folder / "loop-b")
    os.symlink("does-not-exist", folder / "dangling")
    setup.write_config(backup__folders=[str(folder)])

    result = setup.run()

    assert result.returncode == 0, result.stderr
    bucket = setup.bucket(folder)
    assert set(latest_versions(s3, bucket)) == {_key(folder / "a.tif"), _key(folder / "sub/b.tif")}
    assert _states(setup, folder) == {"a.tif": "backed_up", "sub/b.tif": "backed_up"}
    assert _problems(setup) == []
    assert _last_run(setup) == ("ok", 2, 0, 0)
    assert "skipped 9 symlinks and special files" in _log(setup)


def test_fifos_sockets_and_devices_are_skipped(
    setup: Setup, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = setup.images / "Band"
    setup.file("Band/a.tif", b"a")
    os.mkfifo(folder / "fifo")  # opening it would block: it must never be read
    monkeypatch.chdir(folder)  # AF_UNIX paths are limited to 108 bytes: bind a short one
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind("socket")
    os.mknod(folder / "null-device", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    setup.write_config(backup__folders=[str(folder)])

    result = setup.run()

    assert result.returncode == 0, result.stderr
    assert set(latest_versions(s3, setup.bucket(folder))) == {_key(folder / "a.tif")}
    assert _states(setup, folder) == {"a.tif": "backed_up"}
    assert _problems(setup) == []
    assert _last_run(setup) == ("ok", 1, 0, 0)
    assert "skipped 3 symlinks and special files" in _log(setup)


def test_a_file_replaced_by_a_fifo_after_the_scan_does_not_hang_the_run(
    setup: Setup, s3: Any, s3_proxy: S3Proxy
) -> None:
    folder = setup.images / "Band"
    setup.file("Band/a.tif", b"a")
    late = setup.file("Band/z.tif", b"z")
    setup.write_config(backup__folders=[str(folder)], backup__workers=1)
    first_put, replaced = threading.Event(), threading.Event()
    record = s3_proxy.record

    def hold_the_first_upload(label: str, method: str, path: str) -> None:
        # The scan is over before the first PUT of an object: hold that PUT (of
        # a.tif, the one worker is busy with it) until z.tif has become a FIFO.
        record(label, method, path)
        parts = urlsplit(path)
        if method == "PUT" and not parts.query and "/" in parts.path.strip("/"):
            first_put.set()
            replaced.wait(30)

    s3_proxy.record = hold_the_first_upload  # type: ignore[method-assign]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    process = subprocess.Popen(
        [CLI, "--cache", str(setup.cache)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert first_put.wait(60), "no upload started"
        late.unlink()
        os.mkfifo(late)
        replaced.set()
        try:
            stdout, stderr = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail("the run hangs on the FIFO (opened for reading, no writer)")
    finally:
        replaced.set()
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 1, stderr
    assert set(latest_versions(s3, setup.bucket(folder))) == {_key(folder / "a.tif")}
    rows = _rows(setup, folder)
    assert rows["a.tif"][1] == "backed_up"
    assert rows["z.tif"][1] == "failed" and "no longer a regular file" in rows["z.tif"][3]


def test_an_empty_file_is_uploaded(setup: Setup, s3: Any) -> None:
    folder = setup.images / "Band"
    setup.file("Band/empty.tif", b"")
    setup.write_config(backup__folders=[str(folder)])

    result = setup.run()

    assert result.returncode == 0, result.stderr
    bucket = setup.bucket(folder)
    head = s3.head_object(Bucket=bucket, Key=_key(folder / "empty.tif"))
    assert head["ContentLength"] == 0
    assert head["StorageClass"] == "DEEP_ARCHIVE"
    assert head["Metadata"]["sha256"] == hashlib.sha256(b"").hexdigest()
    rows = setup.db(f'SELECT path, size, state, lower(hex(sha256)) FROM "{setup.table(folder)}"')
    assert rows == [("empty.tif", 0, "backed_up", hashlib.sha256(b"").hexdigest())]


def test_empty_folders_upload_nothing_and_create_no_bucket(setup: Setup, s3: Any) -> None:
    empty = setup.images / "Empty"
    empty.mkdir()
    (empty / "empty-sub").mkdir()
    folder = setup.images / "Band"
    setup.file("Band/a.tif", b"a")
    (folder / "empty-sub/deeper").mkdir(parents=True)
    setup.write_config(backup__folders=[str(empty), str(folder)])

    result = setup.run()

    assert result.returncode == 0, result.stderr
    # The empty backup folder is recorded but gets no bucket; an empty subfolder
    # of a folder with files gets no object (S3 has no folders).
    assert _buckets(s3) == [setup.bucket(folder)]
    assert setup.db(f'SELECT count(*) FROM "{setup.table(empty)}"') == [(0,)]
    assert _versions(s3, setup.bucket(folder)) == [_key(folder / "a.tif")]
    assert _states(setup, folder) == {"a.tif": "backed_up"}
    assert _problems(setup) == []
    assert _last_run(setup) == ("ok", 1, 0, 0)


# --- permissions -----------------------------------------------------------------------------


def test_an_unreadable_file_is_reported_and_stays_in_the_bucket(
    setup: Setup, s3: Any, as_nobody: Any
) -> None:
    folder = setup.images / "Band"
    setup.file("Band/unchanged.tif", b"unchanged")
    setup.file("Band/changed.tif", b"old")
    setup.file("Band/fine.tif", b"fine")
    setup.write_config(backup__folders=[str(folder)])
    assert setup.run().returncode == 0  # as root: everything backed up
    bucket = setup.bucket(folder)
    before = latest_versions(s3, bucket)
    (folder / "unchanged.tif").chmod(0)  # same size and mtime: nothing to read
    setup.file("Band/changed.tif", b"new content")  # must be read again, cannot be
    (folder / "changed.tif").chmod(0)
    setup.file("Band/new-unreadable.tif", b"never backed up").chmod(0)
    setup.file("Band/new.tif", b"new")

    result = as_nobody()

    assert result.returncode == 1, result.stderr
    assert "uploaded 1/3 files" in result.stdout
    problems = _problems(setup)
    assert sorted((p[0], p[1]) for p in problems) == [
        ("upload", str(folder / "changed.tif")),
        ("upload", str(folder / "new-unreadable.tif")),
    ]
    assert all("cannot read: Permission denied" in p[2] for p in problems)
    # Nothing deleted; the old version of the changed file stays the latest.
    latest = latest_versions(s3, bucket)
    assert set(latest) == {*before, _key(folder / "new.tif")}
    assert _markers(s3, bucket) == []
    changed = _key(folder / "changed.tif")
    assert latest[changed]["VersionId"] == before[changed]["VersionId"]
    assert latest[changed]["Size"] == 3
    rows = _rows(setup, folder)
    assert rows["unchanged.tif"][1:3] == (
        "backed_up",
        before[_key(folder / "unchanged.tif")]["VersionId"],
    )
    assert rows["changed.tif"][1:3] == ("failed", before[changed]["VersionId"])
    assert "Permission denied" in rows["changed.tif"][3]
    assert rows["new-unreadable.tif"][1:3] == ("failed", None)
    assert rows["fine.tif"][1] == rows["new.tif"][1] == "backed_up"
    assert _last_run(setup) == ("errors", 1, 0, 2)


def test_an_unreadable_subfolder_is_reported_and_nothing_below_it_deleted(
    setup: Setup, s3: Any, as_nobody: Any
) -> None:
    folder = setup.images / "Band"
    locked_folder = setup.images / "Locked"
    for rel in (
        "Band/top.tif",
        "Band/locked/a.tif",
        "Band/locked/deep/b.tif",
        "Band/no-search/c.tif",
        "Band/no-search/inner/d.tif",
        "Locked/e.tif",
    ):
        setup.file(rel, rel.encode())
    setup.write_config(backup__folders=[str(folder), str(locked_folder)])
    assert setup.run().returncode == 0  # as root: everything backed up
    bucket, locked_bucket = setup.bucket(folder), setup.bucket(locked_folder)
    before = latest_versions(s3, bucket)
    assert len(before) == 5
    (folder / "locked").chmod(0)  # cannot be listed
    (folder / "no-search").chmod(0o644)  # can be listed, its entries cannot be stat'ed
    locked_folder.chmod(0)  # the backup folder itself
    setup.file("Band/new.tif", b"new")

    result = as_nobody()

    assert result.returncode == 1, result.stderr
    problems = sorted((p[0], p[1], p[2].split(":")[0]) for p in _problems(setup))
    assert problems == [
        ("scan", str(folder / "locked"), "cannot list this directory"),
        ("scan", str(folder / "no-search/c.tif"), "cannot read file status"),
        ("scan", str(folder / "no-search/inner"), "cannot list this directory"),
        ("scan", str(locked_folder), "cannot list this directory"),
    ]
    # Nothing below the unreadable directories is deleted; the new file is uploaded.
    assert set(latest_versions(s3, bucket)) == {*before, _key(folder / "new.tif")}
    assert _markers(s3, bucket) == []
    assert set(latest_versions(s3, locked_bucket)) == {_key(locked_folder / "e.tif")}
    assert _markers(s3, locked_bucket) == []
    assert set(_states(setup, folder).values()) == {"backed_up"}
    assert len(_states(setup, folder)) == 6
    assert _states(setup, locked_folder) == {"e.tif": "backed_up"}
    assert _last_run(setup) == ("errors", 1, 0, 4)


# --- missing and unmounted folders -----------------------------------------------------------


def test_a_missing_backup_folder_is_reported_and_nothing_deleted(setup: Setup, s3: Any) -> None:
    folder = setup.images / "Band"
    setup.file("Band/a.tif", b"a")
    setup.file("Band/sub/b.tif", b"b")
    setup.write_config(backup__folders=[str(folder)])
    assert setup.run().returncode == 0
    bucket = setup.bucket(folder)
    folder.rename(setup.images / "moved-away")

    result = setup.run()

    assert result.returncode == 1, result.stderr
    problems = _problems(setup)
    assert len(problems) == 1 and problems[0][0] == "scan"
    assert "folder missing (not mounted?)" in problems[0][2]
    assert "folder missing" in result.stderr
    assert set(latest_versions(s3, bucket)) == {_key(folder / "a.tif"), _key(folder / "sub/b.tif")}
    assert _markers(s3, bucket) == []
    assert _states(setup, folder) == {"a.tif": "backed_up", "sub/b.tif": "backed_up"}
    assert _last_run(setup) == ("errors", 0, 0, 1)


def test_an_empty_mount_point_deletes_nothing_unless_allowed(setup: Setup, s3: Any) -> None:
    folder = setup.images / "Band"
    for rel in ("a.tif", "b.tif", "sub/c.tif"):
        setup.file(f"Band/{rel}", rel.encode())
    setup.write_config(backup__folders=[str(folder)])
    assert setup.run().returncode == 0
    bucket = setup.bucket(folder)
    # The share is not mounted: what is left is the empty mount point directory.
    folder.rename(setup.images / "the-share")
    folder.mkdir()

    refused = setup.run()

    assert refused.returncode == 1, refused.stderr
    problems = _problems(setup)
    assert len(problems) == 1 and problems[0][0] == "delete"
    assert "folder is empty but 3 files of it are in the bucket" in problems[0][2]
    assert len(latest_versions(s3, bucket)) == 3
    assert _markers(s3, bucket) == []
    assert set(_states(setup, folder).values()) == {"backed_up"}
    assert _last_run(setup) == ("errors", 0, 0, 1)

    allowed = setup.run("--allow-mass-delete")

    assert allowed.returncode == 0, allowed.stderr
    assert "deleted 3/3" in allowed.stdout
    assert latest_versions(s3, bucket) == {}
    assert len(_markers(s3, bucket)) == 3
    assert len(_versions(s3, bucket)) == 3  # the data stays as noncurrent versions
    assert _rows(setup, folder) == {}
    assert _last_run(setup) == ("ok", 0, 3, 0)


def test_an_empty_root_mount_point_deletes_nothing(setup: Setup, s3: Any) -> None:
    root = setup.images / "archive"
    setup.file("archive/Wien/a.tif", b"a")
    setup.file("archive/Graz/b.tif", b"b")
    setup.write_config(backup__roots=[str(root)])
    assert setup.run().returncode == 0
    buckets = {name: setup.bucket(root / name) for name in ("Wien", "Graz")}
    root.rename(setup.images / "the-share")
    root.mkdir()

    result = setup.run()

    assert result.returncode == 1, result.stderr
    problems = _problems(setup)
    assert len(problems) == 1 and problems[0][0] == "config"
    assert "has no subfolders" in problems[0][2]
    for name, bucket in buckets.items():
        assert len(latest_versions(s3, bucket)) == 1
        assert _markers(s3, bucket) == []
        assert set(_states(setup, root / name).values()) == {"backed_up"}
    assert _last_run(setup) == ("errors", 0, 0, 1)


def test_a_mount_point_holding_a_marker_file_is_guarded_only_by_the_share_rule(
    setup: Setup, s3: Any
) -> None:
    # Admins often put a file such as NOT_MOUNTED into a mount point. Then the
    # folder is not empty, and only backup.max_delete_percent guards it, which
    # needs more than 10 files gone: a small folder is deleted (delete markers).
    big, small = setup.images / "Big", setup.images / "Small"
    for number in range(12):
        setup.file(f"Big/{number:02d}.tif", b"x")
    for number in range(3):
        setup.file(f"Small/{number:02d}.tif", b"x")
    setup.write_config(backup__folders=[str(big), str(small)])
    assert setup.run().returncode == 0
    for folder in (big, small):
        folder.rename(setup.images / f"{folder.name}-share")
        folder.mkdir()
        (folder / "NOT_MOUNTED").write_text("the share is not mounted")

    result = setup.run()

    assert result.returncode == 1, result.stderr
    problems = _problems(setup)
    assert len(problems) == 1 and problems[0][0] == "delete"
    assert "12 of 12 files (100%) are gone from disk" in problems[0][2]
    # The marker file itself is a new file: it is uploaded like any other.
    assert set(latest_versions(s3, setup.bucket(big))) == {
        _key(big / f"{n:02d}.tif") for n in range(12)
    } | {_key(big / "NOT_MOUNTED")}
    assert _markers(s3, setup.bucket(big)) == []
    assert set(latest_versions(s3, setup.bucket(small))) == {_key(small / "NOT_MOUNTED")}
    assert len(_markers(s3, setup.bucket(small))) == 3
    assert set(_states(setup, big)) == {f"{n:02d}.tif" for n in range(12)} | {"NOT_MOUNTED"}
    assert _states(setup, small) == {"NOT_MOUNTED": "backed_up"}
    assert _last_run(setup) == ("errors", 2, 3, 1)


def test_a_vanished_subfolder_of_a_root_is_kept_and_reported(setup: Setup, s3: Any) -> None:
    root = setup.images / "archive"
    setup.file("archive/Wien/a.tif", b"a")
    setup.file("archive/Graz/b.tif", b"b")
    setup.write_config(backup__roots=[str(root)])
    assert setup.run().returncode == 0
    graz_bucket = setup.bucket(root / "Graz")
    (root / "Graz").rename(setup.images / "Graz-elsewhere")

    result = setup.run()

    # Graz is no longer a backup folder: its bucket and rows are left alone, and
    # every run reports it until `matricula-backup forget` closes it.
    assert result.returncode == 1, result.stderr
    problems = _problems(setup)
    assert len(problems) == 1 and problems[0][0] == "config"
    assert problems[0][2].startswith("no longer a backup folder of config.json")
    assert "matricula-backup forget" in result.stderr
    assert set(latest_versions(s3, graz_bucket)) == {_key(root / "Graz/b.tif")}
    assert _markers(s3, graz_bucket) == []
    assert _states(setup, root / "Graz") == {"b.tif": "backed_up"}
    assert _last_run(setup) == ("errors", 0, 0, 1)
