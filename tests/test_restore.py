"""Restore round trips against moto's server, which emulates Deep Archive: archived
objects refuse GetObject until RestoreObject made them readable."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from testkit.proxy import S3Proxy
from tests.conftest import CLI, Setup


def _tree(setup: Setup) -> dict[str, tuple[bytes, int]]:
    """A varied tree; returns relative path -> (bytes, mtime_ns)."""
    files = {
        "Band 1/0001.tif": os.urandom(3000),
        "Band 1/empty.tif": b"",
        "Band 2/Taufbücher ü.jpg": os.urandom(700),
        "Band 2/deep/er/x.tif": b"x" * 10,
        "big.tif": os.urandom(11 * 1024 * 1024),
    }
    result = {}
    for number, (rel, data) in enumerate(sorted(files.items())):
        path = setup.file(f"Archiv/{rel}", data, mtime=1_500_000_000 + number * 1000 + 0.123)
        result[rel] = (data, path.stat().st_mtime_ns)
    setup.write_config(
        backup__folders=[str(setup.images / "Archiv")],
        backup__multipart_threshold_mb=5,
        backup__part_size_mb=5,
    )
    return result


def _check_tree(root: Path, expected: dict[str, tuple[bytes, int]]) -> None:
    found = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert found == set(expected)
    for rel, (data, mtime_ns) in expected.items():
        assert (root / rel).read_bytes() == data, rel
        assert (root / rel).stat().st_mtime_ns == mtime_ns, rel


def test_full_round_trip_every_byte_and_mtime(setup: Setup, s3_proxy: S3Proxy) -> None:
    expected = _tree(setup)
    assert setup.run().returncode == 0
    folder = setup.images / "Archiv"
    shutil.rmtree(folder)

    first = setup.run("restore")  # the subcommand takes --cache after its name too

    assert first.returncode == 0, first.stderr
    assert "restore requested now: 5 files" in first.stdout
    assert "run the same command again" in first.stdout
    assert s3_proxy.requests["POST restore"] == 5
    assert not folder.exists()

    second = setup.run("restore")

    assert second.returncode == 0, second.stderr
    assert "downloaded and verified: 5 files" in second.stdout
    assert "restore complete" in second.stdout
    assert s3_proxy.requests["POST restore"] == 5  # nothing asked twice
    _check_tree(folder, expected)
    assert not list(folder.rglob("*.matricula-restore"))

    s3_proxy.reset_counts()
    third = setup.run("restore")
    assert "already in place: 5" in third.stdout
    assert s3_proxy.requests["GET object"] == 0
    rows = setup.db("SELECT count(*) FROM restores WHERE downloaded_at IS NOT NULL")
    assert rows == [(5,)]


def test_unrestored_objects_cannot_be_read_directly(setup: Setup, s3: Any) -> None:
    """The premise of the workflow, as moto (like AWS) enforces it."""
    _tree(setup)
    assert setup.run().returncode == 0
    bucket = setup.bucket(setup.images / "Archiv")
    key = str(setup.images / "Archiv/big.tif").lstrip("/")
    with pytest.raises(Exception, match="InvalidObjectState"):
        s3.get_object(Bucket=bucket, Key=key)


def test_restore_a_subfolder_to_another_place(setup: Setup) -> None:
    expected = _tree(setup)
    assert setup.run().returncode == 0
    target = setup.tmp / "restored"
    wanted = setup.images / "Archiv/Band 2"

    for _ in range(2):
        result = setup.run("restore", str(wanted), "--to", str(target), "--tier", "standard")
        assert result.returncode == 0, result.stderr

    assert "downloaded and verified: 2 files" in result.stdout
    _check_tree(
        target / str(wanted).lstrip("/"),
        {
            rel[len("Band 2/") :]: value
            for rel, value in expected.items()
            if rel.startswith("Band 2/")
        },
    )


def test_a_deleted_file_comes_back_from_its_noncurrent_version(setup: Setup) -> None:
    """moto's RestoreObject ignores VersionId (it restores the latest version; AWS
    restores the one asked for), so the restore is requested while the file still
    exists; the rest (selecting the version as of --at behind a delete marker, HEAD
    and GET of that version) runs against the noncurrent version for real."""
    _tree(setup)
    assert setup.run().returncode == 0
    lost = setup.images / "Archiv/Band 1/0001.tif"
    elsewhere = str(setup.tmp / "elsewhere")
    assert setup.run("restore", str(lost), "--to", elsewhere).returncode == 0  # while current
    time.sleep(1.5)
    before_deletion = time.strftime("%Y-%m-%dT%H:%M:%S")
    time.sleep(1.5)
    data = lost.read_bytes()
    mtime_ns = lost.stat().st_mtime_ns
    lost.unlink()
    assert setup.run().returncode == 0  # the deletion reaches the bucket (a delete marker)

    latest = setup.run("restore", str(lost), "--dry-run")
    assert "selected: 0 files" in latest.stdout  # by default: only files that exist now
    assert latest.returncode == 1
    assert "restore complete" not in latest.stdout

    result = setup.run("restore", str(lost), "--at", before_deletion)

    assert result.returncode == 0, result.stderr
    assert "selected: 1 files" in result.stdout and "downloaded and verified: 1" in result.stdout
    assert f"as of {before_deletion.replace('T', ' ')} " in result.stdout  # with its seconds
    assert lost.read_bytes() == data
    assert lost.stat().st_mtime_ns == mtime_ns


def test_a_path_matching_only_deleted_files_says_when_and_how_to_restore(setup: Setup) -> None:
    """The hint's --at command, run as printed, brings the file back; --deleted brings
    back every deleted file below a folder. (moto's RestoreObject ignores VersionId, see
    above: the restore is requested while the files still exist.)"""
    _tree(setup)
    assert setup.run().returncode == 0
    folder = setup.images / "Archiv"
    lost = folder / "Band 1/0001.tif"
    also = folder / "Band 2/deep/er/x.tif"
    assert setup.run("restore", "--to", str(setup.tmp / "warm")).returncode == 0
    expected = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in (lost, also)}
    time.sleep(1.1)
    lost.unlink()
    also.unlink()
    assert setup.run().returncode == 0  # delete markers

    result = setup.run("restore", str(lost))

    assert result.returncode == 1
    assert "restore complete" not in result.stdout
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert f"error: restore: {lost}: deleted at 20" in error
    command = error.split("To restore it as it was then: ", 1)[1]
    assert command.startswith(f"matricula-backup restore --cache {setup.cache} --at 20")
    argv = shlex.split(command)
    again = setup.run(*argv[1:2], *argv[4:])  # the same, through the test's CLI and cache
    assert again.returncode == 0, again.stderr
    assert "downloaded and verified: 1 files" in again.stdout
    assert (lost.read_bytes(), lost.stat().st_mtime_ns) == expected[lost]

    empty = folder / "Band 1/empty.tif"
    expected[empty] = (b"", empty.stat().st_mtime_ns)
    lost.unlink()
    empty.unlink()
    assert setup.run().returncode == 0
    several = setup.run("restore", str(folder / "Band 1"), "--dry-run")
    assert several.returncode == 1
    assert "only deleted files match: 2 files, deleted between 20" in several.stderr
    assert f"--deleted {shlex.quote(str(folder / 'Band 1'))}" in several.stderr

    deleted = setup.run("restore", str(folder), "--deleted")
    assert deleted.returncode == 0, deleted.stderr
    assert "selected: 3 files" in deleted.stdout and "downloaded and verified: 3" in deleted.stdout
    for path, value in expected.items():
        assert (path.read_bytes(), path.stat().st_mtime_ns) == value


def test_a_newer_local_file_is_kept_unless_overwrite(setup: Setup) -> None:
    _tree(setup)
    assert setup.run().returncode == 0
    local = setup.images / "Archiv/Band 2/deep/er/x.tif"
    local.write_bytes(b"edited after the backup")

    for _ in range(2):
        kept = setup.run("restore", str(local))
    assert "newer local files kept: 1" in kept.stdout
    assert local.read_bytes() == b"edited after the backup"

    for _ in range(2):
        replaced = setup.run("restore", str(local), "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert local.read_bytes() == b"x" * 10


def test_dry_run_estimates_the_cost_and_asks_nothing(setup: Setup, s3_proxy: S3Proxy) -> None:
    _tree(setup)
    assert setup.run().returncode == 0
    s3_proxy.reset_counts()

    result = setup.run("restore", "--dry-run", "--tier", "standard")

    assert result.returncode == 0, result.stderr
    assert "to restore from Deep Archive: 5 files (0.01 GiB)" in result.stdout
    assert "restore requests (Standard): 5 objects" in result.stdout
    assert "would cost about $" in result.stdout
    assert s3_proxy.requests["POST restore"] == 0
    assert set(s3_proxy.requests) <= {"GET versions", "GET list", "GET service", "GET list-v2"}


def test_an_interrupted_restore_resumes(setup: Setup, s3_proxy: S3Proxy) -> None:
    folder = setup.images / "Many"
    expected = {}
    for number in range(150):
        data = os.urandom(5000)
        path = setup.file(f"Many/{number:03d}.tif", data, mtime=1_600_000_000 + number)
        expected[f"{number:03d}.tif"] = (data, path.stat().st_mtime_ns)
    setup.write_config(backup__folders=[str(folder)], backup__workers=2)
    assert setup.run().returncode == 0
    shutil.rmtree(folder)
    assert setup.run("restore").returncode == 0  # requests
    s3_proxy.reset_counts()

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    process = subprocess.Popen(
        [CLI, "restore", "--cache", str(setup.cache)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while s3_proxy.requests["GET object"] < 30 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert s3_proxy.requests["GET object"] < 150
    # Recorded as downloaded only once complete under its final name; a file under
    # its final name is complete.
    recorded = setup.db("SELECT key FROM restores WHERE downloaded_at IS NOT NULL")
    for (key,) in recorded:
        name = key.rsplit("/", 1)[1]
        assert (folder / name).read_bytes() == expected[name][0], name
    for path in folder.glob("*.tif"):
        assert path.read_bytes() == expected[path.name][0], path

    result = setup.run("restore")

    assert result.returncode == 0, result.stderr
    assert "restore complete" in result.stdout
    _check_tree(folder, expected)
    assert not list(folder.rglob("*.matricula-restore"))


def test_after_a_disaster_roots_are_found_from_the_bucket_list(setup: Setup) -> None:
    """No state.db, no subfolders under the root: only config.json and the buckets."""
    root = setup.images / "archive"
    setup.file("archive/Wien/a.tif", b"wien")
    setup.file("archive/Graz/sub/b.tif", b"graz")
    setup.write_config(backup__roots=[str(root)], backup__bucket_prefix="mx-")
    assert setup.run().returncode == 0
    shutil.rmtree(root)
    root.mkdir()
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (setup.cache / name).unlink(missing_ok=True)

    for _ in range(2):
        result = setup.run("restore")
        assert result.returncode == 0, result.stderr

    assert "restore complete" in result.stdout
    assert (root / "Wien/a.tif").read_bytes() == b"wien"
    assert (root / "Graz/sub/b.tif").read_bytes() == b"graz"


RCLONE = shutil.which("rclone")


def test_rclone_restores_bytes_mtimes_and_modes(setup: Setup, moto_url: str) -> None:
    """The archive does not lock anyone in: after the tool's RestoreObject requests,
    Debian's rclone (1.60, installed by .ci/run) copies a folder back with
    ``--metadata``, and the bytes, mtimes and modes equal the originals.

    rclone 1.60 reads the ``mode`` (octal with type bits) and ``mtime`` metadata the
    tool writes, as its local backend's system metadata; uid/gid would be applied
    the same way (this test keeps root's own). It runs without AWS_CA_BUNDLE (this
    machine sets one that makes rclone 1.60 fail at start)."""
    if RCLONE is None:
        if os.environ.get("CI"):
            pytest.fail("rclone is missing in CI: .ci/run installs Debian's rclone package")
        pytest.skip("rclone is not installed (apt-get install rclone; .ci/run does it)")
    folder = setup.images / "Archiv"
    modes = {"a.tif": 0o644, "sub/b.tif": 0o640, "sub/run.sh": 0o755, "secret.tif": 0o600}
    for number, (rel, mode) in enumerate(modes.items()):
        setup.file(f"Archiv/{rel}", os.urandom(100 + number), mtime=1_500_000_000.25 + number)
        (folder / rel).chmod(mode)
    original = {
        rel: ((folder / rel).read_bytes(), (folder / rel).stat().st_mtime_ns, mode)
        for rel, mode in modes.items()
    }
    setup.write_config(backup__folders=[str(folder)])
    assert setup.run().returncode == 0
    bucket = setup.bucket(folder)
    requested = setup.run("restore", "--to", str(setup.tmp / "unused"))
    assert "restore requested now: 4 files" in requested.stdout
    target = setup.tmp / "by-rclone"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    env.update(
        RCLONE_CONFIG_ARCHIVE_TYPE="s3",
        RCLONE_CONFIG_ARCHIVE_PROVIDER="Other",
        RCLONE_CONFIG_ARCHIVE_ENDPOINT=moto_url,
        RCLONE_CONFIG_ARCHIVE_ACCESS_KEY_ID="test",
        RCLONE_CONFIG_ARCHIVE_SECRET_ACCESS_KEY="test",
        RCLONE_CONFIG_ARCHIVE_REGION="eu-central-1",
        RCLONE_CONFIG_ARCHIVE_FORCE_PATH_STYLE="true",
    )

    result = subprocess.run(
        [RCLONE, "copy", "--metadata", f"archive:{bucket}/{str(folder).lstrip('/')}", str(target)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr
    copied = {
        str(p.relative_to(target)): (
            p.read_bytes(),
            p.stat().st_mtime_ns,
            stat.S_IMODE(p.stat().st_mode),
        )
        for p in target.rglob("*")
        if p.is_file()
    }
    assert copied == original
