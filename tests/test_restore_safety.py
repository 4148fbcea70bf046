"""Restore treats keys and metadata from a bucket as untrusted (issue 9).

Keys are planted straight into a folder's bucket with boto3 (DEEP_ARCHIVE, as
the tool uploads), as anyone holding the AWS keys could. Each test runs the
real command as root and, where it matters, as the unprivileged user nobody
(setpriv), lists the directories around the target before and after, and
checks that nothing was written outside the target.

moto limitations met here: a key with a C0 control character other than TAB
(e.g. \\x01, ESC) is stored, but every ListObjectVersions of its bucket then
answers 500 (AWS answers such keys URL-encoded, which botocore decodes); the
tests use TAB, DEL and the C1 control U+0085, which moto lists. A newline in a
key makes moto's PutObject answer 404. moto completes a RestoreObject at once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import unicodedata
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from matricula_backup import localfs
from tests.conftest import CLI, Setup, skip_unless_other_users_can_run_the_command

NOBODY = 65534
SETPRIV = shutil.which("setpriv")
USERS = ["root", "nobody"]


# --- helpers ---------------------------------------------------------------------------------


def _key(path: Path) -> str:
    return str(path).lstrip("/")


def _listing(top: Path, skip: tuple[Path, ...]) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``top`` (no symlink followed) except the subtrees ``skip``:
    path -> (type, mode, uid, size, mtime_ns); directories without size and mtime."""
    found: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) not in skip]
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            if path in skip:
                continue
            info = path.lstat()
            kind = stat.S_IFMT(info.st_mode)
            if stat.S_ISDIR(info.st_mode):
                found[str(path)] = (kind, info.st_mode, info.st_uid)
            else:
                found[str(path)] = (kind, info.st_mode, info.st_uid, info.st_size, info.st_mtime_ns)
    return found


class Around:
    """The directories around a restore target, listed before; ``check`` compares after."""

    def __init__(self, setup: Setup, target: Path, *more: Path) -> None:
        self.setup = setup
        self.skip = (setup.cache, target)
        self.tops = (setup.tmp, *more)
        self.before = [_listing(top, self.skip) for top in self.tops]

    def check(self) -> None:
        after = [_listing(top, self.skip) for top in self.tops]
        assert after == self.before


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def _plant(
    s3: Any, bucket: str, key: str, data: bytes, metadata: dict[str, str] | None = None
) -> None:
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=data,
        StorageClass="DEEP_ARCHIVE",
        Metadata=metadata
        if metadata is not None
        else {"mtime": "1600000000.000000000", "sha256": hashlib.sha256(data).hexdigest()},
    )


@pytest.fixture(params=USERS)
def user(request: pytest.FixtureRequest, setup: Setup) -> Iterator[str]:
    """Run the test as root and as nobody (the tmp_path chain made traversable for it)."""
    if request.param == "nobody":
        skip_unless_other_users_can_run_the_command()
    chain = [setup.tmp, *[p for p in setup.tmp.parents if len(p.parts) > 2]]  # below /tmp
    modes = [(path, stat.S_IMODE(path.stat().st_mode)) for path in chain]
    yield request.param
    for path, mode in modes:
        path.chmod(mode)


def _traversable(setup: Setup) -> None:
    """o+x on the tmp_path chain for nobody, again before each run: another pytest
    session on the machine may have put its shared parents back meanwhile."""
    for path in [setup.tmp, *[p for p in setup.tmp.parents if len(p.parts) > 2]]:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o001 == 0:
            path.chmod(mode | 0o001)


def restore(setup: Setup, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``matricula-backup restore --cache ... ARGS`` as ``user`` (the cache handed over)."""
    if user == "root":
        return setup.run("restore", *args)
    _chown_tree(setup.cache, NOBODY)
    _traversable(setup)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["HOME"] = str(setup.cache)
    assert SETPRIV is not None
    return subprocess.run(
        [
            SETPRIV,
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            CLI,
            "restore",
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


def restore_twice(setup: Setup, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The first run asks S3 to restore (moto: done at once), the second downloads."""
    restore(setup, user, *args)
    return restore(setup, user, *args)


def _chown_tree(top: Path, uid: int) -> None:
    os.chown(top, uid, uid)
    for dirpath, dirs, files in os.walk(top):
        for name in [*dirs, *files]:
            os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)


def _backed_up_folder(setup: Setup, files: dict[str, bytes]) -> Path:
    folder = setup.images / "Archiv"
    for rel, data in files.items():
        setup.file(f"Archiv/{rel}", data, mtime=1_600_000_000)
    setup.write_config(backup__folders=[str(folder)])
    assert setup.run().returncode == 0
    return folder


def _target_for(setup: Setup, user: str, to: bool) -> tuple[Path, Path, list[str]]:
    """(the restore root, where the folder's files land, the --to arguments)."""
    folder = setup.images / "Archiv"
    if to:
        root = setup.tmp / "restored"
        root.mkdir()
        if user == "nobody":
            os.chown(root, NOBODY, NOBODY)
        return root, root / _key(folder), ["--to", str(root)]
    if user == "nobody":
        _chown_tree(folder, NOBODY)
    return folder, folder, []


# --- 1. keys are untrusted -------------------------------------------------------------------

GOOD = {"a.tif": b"good a", "sub/b.tif": b"good b"}


def _bad_keys(prefix: str, marker: str) -> list[str]:
    """Keys below the folder's prefix that must never be written (``marker`` names the
    files an escape would create, so the test can look for them)."""
    return [
        f"{prefix}../{marker}-1",  # images/..., next to the folder
        f"{prefix}sub/../../{marker}-2",
        f"{prefix}../../../{marker}-3",  # above the test's directory
        f"{prefix}./{marker}-4",
        f"{prefix}sub/./{marker}-5",
        f"{prefix}sub//{marker}-6",
        f"{prefix}/{marker}-7",  # a leading '/' below the folder
        f"{prefix}{marker}-8/",  # a trailing '/'
        f"{prefix}sub/..",
        f"{prefix}tab\there-{marker}",
        f"{prefix}del\x7f-{marker}",
        f"{prefix}c1\x85-{marker}",
    ]


@pytest.mark.parametrize("to", [False, True], ids=["in-place", "to"])
def test_planted_keys_are_reported_one_by_one_and_never_written(
    setup: Setup, s3: Any, user: str, to: bool
) -> None:
    folder = _backed_up_folder(setup, GOOD)
    bucket = setup.bucket(folder)
    marker = f"escaped-{uuid.uuid4().hex[:8]}"
    bad = _bad_keys(_key(folder) + "/", marker)
    for key in bad:
        _plant(s3, bucket, key, b"planted")
    shutil.rmtree(folder)
    folder.mkdir()
    root, landing, to_args = _target_for(setup, user, to)
    around = Around(setup, root)

    result = restore_twice(setup, user, *to_args)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "downloaded and verified: 2 files" in result.stdout, result.stderr
    assert "Traceback" not in result.stderr
    errors = _errors(result.stderr)
    assert len(errors) == len(bad), errors
    for key in bad:
        shown = key.replace("\t", "\\x09").replace("\x7f", "\\x7f").replace("\x85", "\\x85")
        assert sum(f"s3://{bucket}/{shown}: not restored" in line for line in errors) == 1, key
    assert not any(c in result.stderr for c in "\t\x7f\x85")  # escaped, never raw
    assert _files(landing) == GOOD
    assert not list(root.rglob(f"*{marker}*"))
    around.check()
    for directory in (setup.tmp, *setup.tmp.parents):
        assert not [p for p in directory.iterdir() if marker in p.name], directory
    rows = setup.db("SELECT count(*) FROM restores WHERE error LIKE 'not restored:%'")
    assert rows == [(len(bad),)]


# --- 2. no symlink is followed ---------------------------------------------------------------


def test_a_symlinked_parent_directory_is_reported_and_not_followed(setup: Setup, user: str) -> None:
    folder = _backed_up_folder(setup, {"top.tif": b"top", "sub/deeper/a.tif": b"a"})
    elsewhere = setup.tmp / "elsewhere"
    elsewhere.mkdir()
    if user == "nobody":
        os.chown(elsewhere, NOBODY, NOBODY)
    shutil.rmtree(folder)
    folder.mkdir()
    (folder / "sub").symlink_to(elsewhere)
    root, landing, _ = _target_for(setup, user, False)
    around = Around(setup, root)

    result = restore_twice(setup, user)

    assert result.returncode == 1
    assert _errors(result.stderr) == [
        f"error: restore: {folder}/sub/deeper/a.tif: not restored: {folder}/sub is a "
        "symlink where a directory is expected; not followed, nothing written below it"
    ]
    assert (folder / "top.tif").read_bytes() == b"top"
    assert list(elsewhere.iterdir()) == []
    assert (folder / "sub").is_symlink()
    around.check()


def test_a_symlink_inside_to_is_not_followed(setup: Setup, user: str) -> None:
    folder = _backed_up_folder(setup, GOOD)
    elsewhere = setup.tmp / "elsewhere"
    elsewhere.mkdir()
    root, _landing, to_args = _target_for(setup, user, True)
    first = _key(folder).split("/")[0]
    (root / first).symlink_to(elsewhere)  # where TO/<first part of the folder> goes
    if user == "nobody":
        os.chown(elsewhere, NOBODY, NOBODY)
    around = Around(setup, root)

    result = restore_twice(setup, user, *to_args)

    assert result.returncode == 1
    assert len(_errors(result.stderr)) == 2
    assert all("is a symlink where a directory is expected" in e for e in _errors(result.stderr))
    assert list(elsewhere.iterdir()) == []
    around.check()


def test_a_symlink_at_the_final_name_is_left_alone_or_replaced_itself(
    setup: Setup, user: str
) -> None:
    folder = _backed_up_folder(setup, GOOD)
    victim = setup.tmp / "victim.txt"
    victim.write_bytes(b"must stay")
    victim.chmod(0o666)  # nobody could write it through the link
    root, _, _ = _target_for(setup, user, False)
    (folder / "a.tif").unlink()
    (folder / "a.tif").symlink_to(victim)
    around = Around(setup, root)

    kept = restore_twice(setup, user)

    assert kept.returncode == 1
    assert _errors(kept.stderr) == [
        f"error: restore: {folder}/a.tif: a symlink is in the place of the file; left alone "
        "(--overwrite replaces the link or file itself, never what it points to)"
    ]
    assert (folder / "a.tif").is_symlink()

    replaced = restore_twice(setup, user, "--overwrite")

    assert replaced.returncode == 0, replaced.stderr
    assert not (folder / "a.tif").is_symlink()
    assert (folder / "a.tif").read_bytes() == b"good a"
    assert victim.read_bytes() == b"must stay"
    around.check()


def test_a_symlink_at_a_temporary_name_is_not_used(setup: Setup, user: str) -> None:
    """The old predictable name (.NAME.matricula-restore) is not used any more, and a
    new temporary name is random and created with O_EXCL | O_NOFOLLOW: a planted
    link at the old name, or a guessed one, is never written through."""
    folder = _backed_up_folder(setup, GOOD)
    victim = setup.tmp / "victim.txt"
    victim.write_bytes(b"must stay")
    victim.chmod(0o666)
    root, _, _ = _target_for(setup, user, False)
    (folder / "a.tif").unlink()
    planted = [folder / ".a.tif.matricula-restore", folder / f".{'0' * 16}.matricula-restore"]
    for link in planted:
        link.symlink_to(victim)
    around = Around(setup, root)

    result = restore_twice(setup, user)

    assert result.returncode == 0, result.stderr
    assert (folder / "a.tif").read_bytes() == b"good a"
    assert victim.read_bytes() == b"must stay"
    assert planted[0].is_symlink()  # not a name the tool uses: left alone
    # Shaped like a temporary name and older than the run: swept as a leftover of a
    # killed restore (unlink removes the link, not what it points to).
    assert not planted[1].is_symlink()
    around.check()


# --- 3. permissions and owners come back -----------------------------------------------------

MODES = {"r644.tif": 0o644, "r640.tif": 0o640, "x755.tif": 0o755, "p600.tif": 0o600}


def _varied_folder(setup: Setup) -> Path:
    folder = setup.images / "Archiv"
    for rel, mode in MODES.items():
        setup.file(f"Archiv/sub/{rel}", rel.encode(), mtime=1_600_000_000).chmod(mode)
    owned = setup.file("Archiv/owned.tif", b"owned", mtime=1_600_000_000)
    os.chown(owned, 1234, 2345)
    owned.chmod(0o640)
    special = setup.file("Archiv/setuid.tif", b"setuid", mtime=1_600_000_000)
    special.chmod(0o4755)
    setup.write_config(backup__folders=[str(folder)])
    assert setup.run().returncode == 0
    return folder


def _modes(root: Path) -> dict[str, tuple[int, int, int]]:
    return {
        str(p.relative_to(root)): (stat.S_IMODE(p.stat().st_mode), p.stat().st_uid, p.stat().st_gid)
        for p in root.rglob("*")
    }


def test_uploads_record_mode_uid_and_gid_as_rclone_does(setup: Setup, s3: Any) -> None:
    folder = _varied_folder(setup)
    bucket = setup.bucket(folder)
    head = s3.head_object(Bucket=bucket, Key=_key(folder / "owned.tif"))["Metadata"]
    assert (head["mode"], head["uid"], head["gid"]) == ("0100640", "1234", "2345")
    assert head["mtime"] == "1600000000.000000000"
    head = s3.head_object(Bucket=bucket, Key=_key(folder / "setuid.tif"))["Metadata"]
    assert head["mode"] == "0104755"


def test_modes_and_owners_come_back_as_root(setup: Setup) -> None:
    folder = _varied_folder(setup)
    original = _modes(folder)
    shutil.rmtree(folder)
    umask = os.umask(0o022)
    try:
        result = restore_twice(setup, "root")
    finally:
        os.umask(umask)

    assert result.returncode == 0, result.stderr
    restored = _modes(folder)
    assert restored["owned.tif"] == (0o640, 1234, 2345)
    for rel, mode in MODES.items():
        assert restored[f"sub/{rel}"] == (mode, 0, 0) == original[f"sub/{rel}"]
    assert restored["setuid.tif"] == (0o755, 0, 0)  # no setuid bit from a bucket by default
    assert restored["sub"] == (0o755, 0, 0)  # a directory the restore made: the usual mode

    target = setup.tmp / "special"
    with_bits = restore_twice(setup, "root", "--to", str(target), "--keep-special-bits")
    assert with_bits.returncode == 0, with_bits.stderr
    assert _modes(target / _key(folder))["setuid.tif"] == (0o4755, 0, 0)

    target = setup.tmp / "no-owner"
    no_owner = restore_twice(setup, "root", "--to", str(target), "--no-owner")
    assert no_owner.returncode == 0, no_owner.stderr
    assert _modes(target / _key(folder))["owned.tif"] == (0o640, 0, 0)


def test_modes_come_back_as_an_unprivileged_user_owners_do_not(setup: Setup, user: str) -> None:
    if user == "root":
        pytest.skip("the root case is test_modes_and_owners_come_back_as_root")
    folder = _varied_folder(setup)
    root, landing, to_args = _target_for(setup, user, True)
    around = Around(setup, root)

    result = restore_twice(setup, user, *to_args)

    assert result.returncode == 0, result.stderr
    restored = _modes(landing)
    for rel, mode in MODES.items():
        assert restored[f"sub/{rel}"] == (mode, NOBODY, NOBODY)
    assert restored["owned.tif"] == (0o640, NOBODY, NOBODY)
    assert restored["setuid.tif"] == (0o755, NOBODY, NOBODY)
    assert (folder / "owned.tif").stat().st_uid == 1234  # the original is untouched
    around.check()


def test_old_or_garbage_metadata_gives_the_umask_default(setup: Setup, s3: Any) -> None:
    """Objects uploaded before mode/uid/gid were recorded (only mtime and sha256), and
    garbage, restore like a file the restoring user creates: 0666 & ~umask."""
    folder = _backed_up_folder(setup, {"keep.tif": b"k"})
    bucket = setup.bucket(folder)
    prefix = _key(folder) + "/"
    digest = hashlib.sha256(b"old").hexdigest()
    cases = {
        "old.tif": {"mtime": "1600000000.5", "sha256": digest},
        "symlink-type.tif": {"sha256": digest, "mode": "0120777"},
        "not-octal.tif": {"sha256": digest, "mode": "0100648; chmod"},
        "huge-uid.tif": {"sha256": digest, "mode": "0104644", "uid": "99999999999", "gid": "-1"},
    }
    for name, metadata in cases.items():
        _plant(s3, bucket, prefix + "legacy/" + name, b"old", metadata)
    shutil.rmtree(folder)
    umask = os.umask(0o027)
    try:
        result = restore_twice(setup, "root")
    finally:
        os.umask(umask)

    assert result.returncode == 0, result.stderr
    restored = _modes(folder)
    for name in ("old.tif", "symlink-type.tif", "not-octal.tif"):
        assert restored[f"legacy/{name}"] == (0o640, 0, 0), name
    assert restored["legacy/huge-uid.tif"] == (0o644, 0, 0)  # mode kept, setuid and ids not
    assert restored["legacy"] == (0o750, 0, 0)
    assert (folder / "legacy/old.tif").stat().st_mtime_ns == 1_600_000_000_500_000_000


# --- issue 15: the service user restoring in place -------------------------------------------


def test_a_service_user_without_write_access_gets_a_clear_problem(setup: Setup, user: str) -> None:
    if user == "root":
        pytest.skip("root can write everywhere")
    folder = _backed_up_folder(setup, GOOD)
    (folder / "a.tif").unlink()
    (folder / "sub/b.tif").unlink()  # root-owned directories, 0755: nobody cannot write
    around = Around(setup, folder)

    result = restore_twice(setup, user)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "PermissionError" not in result.stderr
    errors = _errors(result.stderr)
    assert len(errors) == 2
    for error in errors:
        assert "as user nobody: permission denied; run the restore as root" in error
        assert "or restore under a directory of your own with --to DIR" in error
    assert f"cannot write {folder}/sub" in "\n".join(errors)
    assert sorted(p.name for p in folder.rglob("*")) == ["sub"]
    around.check()


def test_bytes_that_differ_from_the_recorded_sha256_are_not_put_in_place(
    setup: Setup, s3: Any
) -> None:
    """A small object (fetched through the CRT) and one above 8 MiB (botocore) whose
    bytes do not match their sha256 metadata: reported, no file, no temporary file."""
    folder = _backed_up_folder(setup, GOOD)
    bucket = setup.bucket(folder)
    prefix = _key(folder) + "/"
    wrong = {"sha256": hashlib.sha256(b"other").hexdigest(), "mtime": "1600000000.0"}
    _plant(s3, bucket, prefix + "small.tif", b"tampered", wrong)
    _plant(s3, bucket, prefix + "large.tif", b"L" * (9 * 1024 * 1024), wrong)
    shutil.rmtree(folder)
    around = Around(setup, folder)

    result = restore_twice(setup, "root")

    assert result.returncode == 1
    errors = _errors(result.stderr)
    assert len(errors) == 2
    assert all("ChecksumMismatch: SHA-256" in e and "recorded at upload" in e for e in errors)
    assert _files(folder) == GOOD
    assert [p.name for p in folder.rglob("*.matricula-restore")] == []
    around.check()


def test_the_control_character_check_is_unicode_s_cc_and_cs_exactly() -> None:
    # split_key checks with a regular expression (per-character unicodedata lookups
    # were a tenth of the restore's main-thread time): the same set, every code point.
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        expected = unicodedata.category(char) in ("Cc", "Cs")
        assert bool(localfs._CONTROL.search(char)) == expected, hex(code)
        if expected:
            with pytest.raises(localfs.UnsafeKey, match="control character"):
                localfs.split_key(f"d/a{char}b")
