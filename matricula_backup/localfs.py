"""Writing restored files safely: keys and metadata from a bucket are untrusted input.

Whoever held the AWS keys could have written any key and any metadata into a
bucket, and a restore often runs as root. So (DESIGN.md, invariant 9):

- a key's path below its folder is checked before anything is created: no
  empty, ``.`` or ``..`` segment, no leading or trailing ``/``, no control
  character (``UnsafeKey``);
- below the target root every directory is opened (or created) one component
  at a time with ``O_NOFOLLOW | O_DIRECTORY`` relative to its parent's file
  descriptor: a symlink where a directory is expected stops the file
  (``UnsafePath``) and nothing is written below it; a restore keeps the
  descriptors of the directories it writes into (``Directories``), so the
  files of one folder share one walk;
- the bytes go to a temporary file with an unpredictable name, created with
  ``O_CREAT | O_EXCL | O_NOFOLLOW`` in the target directory; mode, owner and
  mtime are set on its descriptor, and once it is durable (one ``syncfs`` for
  a batch of files) ``rename`` relative to the directory's descriptor replaces
  the directory entry itself, never what a symlink there points to;
- the mode, uid and gid from the metadata (rclone's names and formats) are
  parsed defensively: only permission bits, setuid/setgid/sticky only when
  asked for, owners only when running as root.

The target root itself (the backup folder, or ``--to``) comes from the
administrator and is opened normally.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import secrets
import stat
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

TEMP_SUFFIX = ".matricula-restore"
_TEMP_NAME = re.compile(r"\.[0-9a-f]{16}" + re.escape(TEMP_SUFFIX))
_STARTED = time.time()
_swept: set[tuple[int, int]] = set()
_swept_lock = threading.Lock()
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to chown
# Unicode's categories Cc (C0, DEL, C1) and Cs (surrogates: undecodable bytes of a
# name read with surrogateescape), exactly: tests/test_restore_safety.py checks
# this against unicodedata for every code point.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class UnsafeKey(Exception):
    """A key whose path cannot be written below the target: reported, never written."""


class UnsafePath(Exception):
    """Something in the target tree that a restore must not follow (a symlink, ...)."""


def current_umask() -> int:
    """The process's umask (there is no call that only reads it)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def escape(text: str) -> str:
    """``text`` with control and format characters as escapes, safe to print or log."""
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def split_key(rel: str) -> list[str]:
    """The segments of a key's path below its folder; raise UnsafeKey if it is not safe."""
    if not rel:
        raise UnsafeKey("the key names the folder itself, not a file")
    if _CONTROL.search(rel):
        raise UnsafeKey("the key contains a control character")
    if rel.startswith("/"):
        raise UnsafeKey("the path below the folder starts with '/'")
    if rel.endswith("/"):
        raise UnsafeKey("the key ends with '/' (a folder marker, not a file)")
    parts = rel.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            shown = "an empty ('//')" if not part else f"a '{part}'"
            raise UnsafeKey(f"the key has {shown} segment")
        if len(part.encode("utf-8", "surrogateescape")) > 255:
            raise UnsafeKey("a segment of the key is longer than 255 bytes")
    return parts


# --- metadata --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attributes:
    """What a restored file gets: permission bits, and the owner if it is to be set."""

    mode: int  # permission bits (and setuid/setgid/sticky only if allowed)
    uid: int | None
    gid: int | None
    from_metadata: bool  # False: no usable mode in the metadata (the umask default)


def attributes(
    metadata: dict[str, str], umask: int, keep_special_bits: bool, set_owner: bool
) -> Attributes:
    """Mode and owner from rclone-style metadata (``mode`` octal, ``uid``/``gid`` decimal).

    Garbage is ignored: a mode that is not octal or not a regular file's gives
    the restoring user's default (0666 & ~umask), like a file made by ``cp``.
    """
    mode = _parse_mode(metadata.get("mode"))
    uid = _parse_id(metadata.get("uid")) if set_owner else None
    gid = _parse_id(metadata.get("gid")) if set_owner else None
    if mode is None:
        return Attributes(0o666 & ~umask, uid, gid, False)
    allowed = 0o7777 if keep_special_bits else 0o777
    return Attributes(mode & allowed, uid, gid, True)


def _parse_mode(value: str | None) -> int | None:
    if not value or len(value) > 12 or not all(c in "01234567" for c in value):
        return None
    mode = int(value, 8)
    # rclone writes the type bits too; a bare permission value is accepted as well.
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        return None
    return stat.S_IMODE(mode)


def _parse_id(value: str | None) -> int | None:
    if not value or len(value) > 10 or not value.isascii() or not value.isdigit():
        return None
    number = int(value)
    return number if number <= _MAX_ID else None


# --- the target tree -------------------------------------------------------------------------


def _open_root(root: str, dir_mode: int, create: bool) -> int | None:
    """A descriptor of the target root (trusted: may itself be a symlink); None if missing."""
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        if not create:
            return None
    missing = []
    path = os.path.abspath(root)
    while not os.path.isdir(path) and path != os.path.dirname(path):
        missing.append(path)
        path = os.path.dirname(path)
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        os.chmod(path, dir_mode)  # the usual mode, not the tool's umask 077
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _open_dir(parent: int, name: str, shown: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except PermissionError as exc:
        raise PermissionError(exc.errno, exc.strerror, shown) from None
    except OSError as exc:
        _explain(exc, parent, name, shown)
        raise


def _explain(exc: OSError, parent: int, name: str, shown: str) -> None:
    """Turn 'a symlink (or a file) is where a directory must be' into UnsafePath."""
    try:
        found = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except OSError:
        return
    if stat.S_ISLNK(found.st_mode):
        raise UnsafePath(
            f"{shown} is a symlink where a directory is expected; not followed, "
            "nothing written below it"
        ) from None
    if not stat.S_ISDIR(found.st_mode):
        raise UnsafePath(
            f"{shown} is not a directory (a file of that name is in the way)"
        ) from None


def _walk(root: str, dirs: list[str], dir_mode: int, create: bool) -> tuple[int | None, str]:
    """(a descriptor of ``root/dirs...``, owned by the caller, or None if it does not
    exist; its path). A PermissionError names the directory that could not be written."""
    shown = root.rstrip("/") or "/"
    fd = _open_root(root, dir_mode, create)
    try:
        for name in dirs:
            if fd is None:
                break
            shown = f"{shown}/{name}"
            try:
                child = _open_dir(fd, name, shown)
            except FileNotFoundError:
                if not create:
                    os.close(fd)
                    fd = None
                    break
                made = True
                try:
                    os.mkdir(name, 0o700, dir_fd=fd)
                except FileExistsError:  # another worker made it just now
                    made = False
                except PermissionError as exc:
                    parent = shown.rsplit("/", 1)[0]
                    raise PermissionError(exc.errno, exc.strerror, parent) from None
                child = _open_dir(fd, name, shown)
                if made:  # the usual mode for a new directory, not the tool's umask 077
                    os.fchmod(child, dir_mode)
            os.close(fd)
            fd = child
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    return fd, shown


@functools.lru_cache(maxsize=64)
def _base(root: str) -> str:
    return os.path.normpath(os.path.abspath(root))


def inside(root: str, parts: list[str]) -> str:
    """The path of the file, checked to lie below ``root`` (after normalisation)."""
    base = _base(root)
    path = os.path.normpath(os.path.join(base, *parts))
    if not path.startswith(base.rstrip("/") + "/"):
        raise UnsafeKey(f"{escape(path)} would lie outside {escape(base)}")
    return path


class Output:
    """The temporary file being written; ``finish`` hands it over as ``Written``."""

    def __init__(self, opened: _Opened, name: str) -> None:
        self._opened = opened
        self._name = name
        self._temp = ""
        self.finished = False
        for _ in range(5):
            temp = f".{secrets.token_hex(8)}{TEMP_SUFFIX}"
            try:
                self._fd = os.open(
                    temp,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                    dir_fd=opened.fd,
                )
            except FileExistsError:
                continue
            self._temp = temp
            return
        raise FileExistsError(f"could not create a temporary file beside {escape(name)}")

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def finish(self, attrs: Attributes, mtime_ns: int | None) -> Written:
        """Owner, mode and mtime on the complete file, still under its temporary name:
        ``Directories.put_in_place`` makes it durable and renames it."""
        if attrs.uid is not None or attrs.gid is not None:
            # Before the mode: chown clears setuid/setgid.
            os.fchown(
                self._fd,
                -1 if attrs.uid is None else attrs.uid,
                -1 if attrs.gid is None else attrs.gid,
            )
        os.fchmod(self._fd, attrs.mode)
        if mtime_ns is not None:
            os.utime(self._fd, ns=(mtime_ns, mtime_ns))
        self.finished = True
        return Written(self._opened, self._temp, self._name)

    def close(self) -> None:
        os.close(self._fd)
        if self._temp and not self.finished:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._temp, dir_fd=self._opened.fd)


@dataclass(frozen=True)
class Written:
    """A complete file under its temporary name; holds its directory open until
    ``Directories.put_in_place``."""

    opened: _Opened
    temp: str
    name: str


def _sweep(directory: int) -> None:
    """Remove temporary files an earlier, killed restore left here (once per directory).

    Only one restore runs at a time (restore.lock): a temporary file older than
    this process is nobody's. Older by its ctime, which nothing can set: its
    mtime is the backup's (set before the rename), so a file another thread of
    this run is writing here would look old by its mtime. ``unlink`` removes the
    entry, never a link's target.
    """
    info = os.fstat(directory)
    with _swept_lock:
        if (info.st_dev, info.st_ino) in _swept:
            return
        _swept.add((info.st_dev, info.st_ino))
    for name in os.listdir(directory):
        if _TEMP_NAME.fullmatch(name):
            with contextlib.suppress(OSError):
                if os.stat(name, dir_fd=directory, follow_symlinks=False).st_ctime < _STARTED:
                    os.unlink(name, dir_fd=directory)


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    """libc's syncfs (Linux), or None."""
    try:
        import ctypes

        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int

    def call(fd: int) -> int:
        return 0 if function(fd) == 0 else ctypes.get_errno()

    return call


def _sync_filesystem(fd: int) -> None:
    """Everything written to the filesystem of ``fd`` on disk (OSError if it could not be)."""
    syncfs = _syncfs()
    if syncfs is None:
        os.sync()  # no syncfs here: every filesystem
        return
    error = syncfs(fd)
    if error:
        raise OSError(error, f"syncfs: {os.strerror(error)}")


class _Opened:
    """A directory descriptor held by ``Directories``: closed once unused and evicted."""

    __slots__ = ("fd", "shown", "device", "users", "cached", "swept")

    def __init__(self, fd: int, shown: str) -> None:
        self.fd = fd
        self.shown = shown
        self.device = os.fstat(fd).st_dev  # one syncfs per filesystem (put_in_place)
        self.users = 0
        self.cached = True
        self.swept = False


class Directories:
    """The directories a restore writes into, each opened once for all its files.

    Opening a file's directory one component at a time, without following
    symlinks, costs two system calls per component; the files of one folder
    share its descriptor instead. Safe as before: a descriptor stays the
    directory that was checked when it was opened (a symlink put in its place
    later changes nothing). At most ``limit`` are kept; one in use is never
    closed. A directory removed meanwhile is opened (made) again. Thread-safe.
    """

    def __init__(self, limit: int = 64) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._open: OrderedDict[tuple[str, tuple[str, ...]], _Opened] = OrderedDict()

    def _acquire(
        self, root: str, dirs: tuple[str, ...], dir_mode: int, create: bool
    ) -> _Opened | None:
        key = (root, dirs)
        with self._lock:
            opened = self._open.get(key)
            if opened is not None:
                opened.users += 1
                self._open.move_to_end(key)
                return opened
        fd, shown = _walk(root, list(dirs), dir_mode, create)
        if fd is None:
            return None
        with self._lock:
            opened = self._open.get(key)
            if opened is not None:  # another thread opened it meanwhile
                os.close(fd)
            else:
                opened = self._open[key] = _Opened(fd, shown)
            opened.users += 1
            self._evict()
            return opened

    def _release(self, opened: _Opened, stale: bool = False) -> None:
        with self._lock:
            opened.users -= 1
            if stale and opened.cached:
                opened.cached = False
                for key, value in self._open.items():
                    if value is opened:
                        del self._open[key]
                        break
            if not opened.cached and not opened.users:
                os.close(opened.fd)
            self._evict()

    def _evict(self) -> None:
        """Close the least recently used unused descriptors above the limit (lock held)."""
        if len(self._open) <= self._limit:
            return
        for key in [key for key, value in self._open.items() if not value.users]:
            opened = self._open.pop(key)
            opened.cached = False
            os.close(opened.fd)
            if len(self._open) <= self._limit:
                return

    def close(self) -> None:
        with self._lock:
            for opened in self._open.values():
                opened.cached = False
                if not opened.users:
                    os.close(opened.fd)
            self._open.clear()

    def lstat(self, root: str, parts: list[str]) -> os.stat_result | None:
        """What is at the file's place now, without following any symlink; None if nothing."""
        opened = self._acquire(root, tuple(parts[:-1]), 0o755, create=False)
        if opened is None:
            return None
        try:
            return os.stat(parts[-1], dir_fd=opened.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        finally:
            self._release(opened)

    @contextlib.contextmanager
    def create(self, root: str, parts: list[str], dir_mode: int) -> Iterator[Output]:
        """A temporary file in the file's directory (made as needed); removed unless
        finished (then ``put_in_place`` renames it)."""
        opened, output = self._output(root, tuple(parts[:-1]), dir_mode, parts[-1])
        try:
            yield output
        finally:
            try:
                output.close()
            finally:
                if not output.finished:  # else its Written holds the directory
                    self._release(opened)

    def put_in_place(self, written: list[Written]) -> list[OSError | None]:
        """Make the files durable, then rename each into place; per file, None or why not.

        One ``syncfs`` per filesystem for all of them instead of an ``fsync`` per
        file (which held a download slot for ~1 ms each). In this order a crash
        cannot leave a file under its final name that is not complete: before
        the rename it is a temporary file, swept by the next restore.
        """
        failed: dict[int, OSError] = {}
        for device, fd in {w.opened.device: w.opened.fd for w in written}.items():
            try:
                _sync_filesystem(fd)
            except OSError as exc:
                failed[device] = exc
        outcomes: list[OSError | None] = []
        for entry in written:
            error = failed.get(entry.opened.device)
            if error is None:
                try:
                    fd = entry.opened.fd
                    os.rename(entry.temp, entry.name, src_dir_fd=fd, dst_dir_fd=fd)
                except OSError as exc:
                    error = exc
            if error is not None:
                with contextlib.suppress(OSError):
                    os.unlink(entry.temp, dir_fd=entry.opened.fd)
            self._release(entry.opened)
            outcomes.append(error)
        return outcomes

    def _output(
        self, root: str, dirs: tuple[str, ...], dir_mode: int, name: str
    ) -> tuple[_Opened, Output]:
        for attempt in (1, 2):
            opened = self._acquire(root, dirs, dir_mode, create=True)
            assert opened is not None  # create=True: made if missing
            try:
                if not opened.swept:
                    _sweep(opened.fd)
                    opened.swept = True
                return opened, Output(opened, name)
            except FileNotFoundError:
                removed = os.fstat(opened.fd).st_nlink == 0
                self._release(opened, stale=removed)
                if removed and attempt == 1:
                    continue  # removed since it was opened: open (make) it again
                raise
            except PermissionError as exc:
                self._release(opened)
                raise PermissionError(exc.errno, exc.strerror, opened.shown) from None
            except BaseException:
                self._release(opened)
                raise
        raise AssertionError("not reached: the second attempt returns or raises")
