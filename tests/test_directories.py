"""The directory descriptors a restore keeps open (localfs.Directories).

A restore opens each directory it writes into once, without following
symlinks, and keeps the descriptor for the folder's other files. What must
hold: every file lands where its path says, below the root; descriptors are
bounded and all closed at the end; a directory removed meanwhile is made
again; a symlink put in a directory's place later is never followed.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from matricula_backup import localfs

ATTRS = localfs.Attributes(0o644, None, None, True)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _write(directories: localfs.Directories, root: Path, rel: str, data: bytes) -> None:
    with directories.create(str(root), rel.split("/"), 0o755) as output:
        output.write(data)
        written = output.finish(ATTRS, None)
    assert directories.put_in_place([written]) == [None]


def test_files_of_many_folders_land_in_place_with_a_bounded_number_of_descriptors(
    tmp_path: Path,
) -> None:
    before = _open_fds()
    directories = localfs.Directories(limit=4)
    expected = {}
    for folder in range(10):
        for number in range(3):
            rel = f"Band {folder}/sub/{number}.tif"
            expected[rel] = f"{folder}-{number}".encode()
            _write(directories, tmp_path, rel, expected[rel])
            assert _open_fds() <= before + 4
    assert directories.lstat(str(tmp_path), ["Band 3", "sub", "1.tif"]) is not None
    assert directories.lstat(str(tmp_path), ["Band 3", "sub", "none.tif"]) is None
    assert directories.lstat(str(tmp_path), ["Band 99", "sub", "1.tif"]) is None
    directories.close()
    assert _open_fds() == before
    found = {
        str(path.relative_to(tmp_path)): path.read_bytes()
        for path in tmp_path.rglob("*")
        if path.is_file()
    }
    assert found == expected
    assert {oct(path.stat().st_mode & 0o777) for path in tmp_path.rglob("*") if path.is_dir()} == {
        "0o755"
    }


def test_a_directory_removed_meanwhile_is_made_again(tmp_path: Path) -> None:
    directories = localfs.Directories()
    _write(directories, tmp_path, "Band 1/a.tif", b"a")
    (tmp_path / "Band 1" / "a.tif").unlink()
    (tmp_path / "Band 1").rmdir()

    assert directories.lstat(str(tmp_path), ["Band 1", "b.tif"]) is None
    _write(directories, tmp_path, "Band 1/b.tif", b"b")

    directories.close()
    assert (tmp_path / "Band 1" / "b.tif").read_bytes() == b"b"


def test_a_symlink_put_in_place_of_an_open_directory_is_never_followed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    directories = localfs.Directories()
    _write(directories, root, "Band 1/a.tif", b"a")
    # Someone moves the directory aside and puts a symlink to another place in its stead.
    (root / "Band 1").rename(root / "moved")
    (root / "Band 1").symlink_to(elsewhere)

    _write(directories, root, "Band 1/b.tif", b"b")

    assert list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in (root / "moved").iterdir()) == ["a.tif", "b.tif"]
    directories.close()
    # A new Directories walks again: the symlink is refused.
    fresh = localfs.Directories()
    try:
        _write(fresh, root, "Band 1/c.tif", b"c")
    except localfs.UnsafePath as exc:
        assert "symlink" in str(exc)
    else:
        raise AssertionError("a symlinked directory was followed")
    finally:
        fresh.close()
    assert list(elsewhere.iterdir()) == []


def test_many_threads_share_the_descriptors(tmp_path: Path) -> None:
    before = _open_fds()
    directories = localfs.Directories(limit=3)
    names = [f"Band {n % 20}/{n}.tif" for n in range(400)]
    failures: list[BaseException] = []

    def write(chunk: list[str]) -> None:
        try:
            for rel in chunk:
                _write(directories, tmp_path, rel, rel.encode())
                assert directories.lstat(str(tmp_path), rel.split("/")) is not None
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(names[n::8],)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    directories.close()

    assert failures == []
    assert _open_fds() == before
    assert {str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*.tif")} == set(names)
    for rel in names:
        assert (tmp_path / rel).read_bytes() == rel.encode()


def test_the_sweep_leaves_a_temporary_file_of_this_run_with_an_old_mtime(tmp_path: Path) -> None:
    """Another thread's file, given the backup's mtime before its rename, is not a
    leftover: the sweep goes by ctime (a race seen in a 20,000-file restore)."""
    directories = localfs.Directories()
    with directories.create(str(tmp_path), ["Band 1", "a.tif"], 0o755) as output:
        output.write(b"a")
        temp = [p for p in (tmp_path / "Band 1").iterdir() if p.name.endswith(localfs.TEMP_SUFFIX)]
        assert len(temp) == 1
        written = output.finish(ATTRS, 1_600_000_000 * 10**9)
        assert temp[0].stat().st_mtime == 1_600_000_000
        # As a second thread reaching the directory first by another path would:
        localfs._swept.clear()
        localfs._sweep(written.opened.fd)
        assert temp[0].exists()
    assert directories.put_in_place([written]) == [None]
    directories.close()
    assert (tmp_path / "Band 1" / "a.tif").read_bytes() == b"a"
    assert not temp[0].exists()


def test_files_are_put_in_place_only_when_durable_and_a_failed_rename_is_reported(
    tmp_path: Path,
) -> None:
    """Until put_in_place a finished file is a temporary file (a crash leaves no
    incomplete file under a final name); a rename that fails is that file's error."""
    before = _open_fds()
    directories = localfs.Directories(limit=1)
    batch = []
    for rel in ("Band 1/a.tif", "Band 2/b.tif", "Band 3/c.tif"):
        with directories.create(str(tmp_path), rel.split("/"), 0o755) as output:
            output.write(rel.encode())
            batch.append(output.finish(ATTRS, None))
    assert not list(tmp_path.rglob("*.tif"))  # nothing under a final name yet
    assert _open_fds() == before + 3  # each waiting file holds its directory
    (tmp_path / "Band 2" / "b.tif").mkdir()  # a rename onto a directory fails
    (tmp_path / "Band 2" / "b.tif" / "x").write_bytes(b"")

    outcomes = directories.put_in_place(batch)

    assert [type(error).__name__ if error else None for error in outcomes] == [
        None,
        "IsADirectoryError",
        None,
    ]
    assert (tmp_path / "Band 1" / "a.tif").read_bytes() == b"Band 1/a.tif"
    assert (tmp_path / "Band 3" / "c.tif").read_bytes() == b"Band 3/c.tif"
    assert not list(tmp_path.rglob("*" + localfs.TEMP_SUFFIX))  # the failed one removed
    directories.close()
    assert _open_fds() == before


def test_a_temporary_file_swapped_for_a_symlink_before_its_rename_writes_nothing_through_it(
    tmp_path: Path,
) -> None:
    """A local user who can write in the directory swaps the finished temporary file
    for a symlink to a file of someone else before put_in_place: the rename moves
    the link itself; the file it points to keeps its bytes and mode."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"must stay")
    victim.chmod(0o600)
    root = tmp_path / "root"
    directories = localfs.Directories()
    with directories.create(str(root), ["Band 1", "a.tif"], 0o755) as output:
        output.write(b"restored")
        written = output.finish(localfs.Attributes(0o4755, None, None, True), None)
    temp = root / "Band 1" / written.temp
    temp.unlink()
    temp.symlink_to(victim)

    assert directories.put_in_place([written]) == [None]
    directories.close()

    assert victim.read_bytes() == b"must stay"
    assert victim.stat().st_mode & 0o7777 == 0o600
    assert (root / "Band 1" / "a.tif").is_symlink()  # the entry itself was moved
