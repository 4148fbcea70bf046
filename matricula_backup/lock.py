"""One run at a time per cache directory.

The first upload of a large archive can run for days while cron starts a new
run every night. The lock is an ``flock`` on ``DIR/lock``: the kernel releases
it when the process ends, however it ends, so a crash never leaves it stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from matricula_backup.errors import CacheNotWritable, LockHeld

LOCK_NAME = "lock"
_SINCE = re.compile(r" \[(\d+)\]")  # the start time in unix seconds, after the readable one
_HOLDER = re.compile(r"^pid (\d+) on (\S+),")


@contextlib.contextmanager
def exclusive_lock(cache_dir: Path, name: str = LOCK_NAME) -> Iterator[None]:
    path = cache_dir / name
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise CacheNotWritable(
            f"{path}: cannot create the lock file: {exc.strerror}; the cache directory "
            "must be writable by the user who runs the backup"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            since = _SINCE.search(holder)
            shown = _SINCE.sub("", holder) or "unknown"
            error = LockHeld(
                f"{path}: another matricula-backup run holds the lock "
                f"({shown}); this run exits without "
                "doing anything. It is normal while a long first upload is running; if no "
                "such process exists, check the host"
            )
            error.since = float(since.group(1)) if since else None
            raise error from None
        os.ftruncate(fd, 0)
        now = time.time()
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(now))
        line = f"pid {os.getpid()} on {socket.gethostname()}, since {started} [{int(now)}]\n"
        os.pwrite(fd, line.encode(), 0)
        yield
    finally:
        os.close(fd)


def holder_gone(cache_dir: Path, name: str = LOCK_NAME) -> bool:
    """Is the process that last took the lock gone? Read-only: the lock is not touched.

    True only when the lock file names a process of this host that no longer
    exists; False when it may still run, or when that cannot be told.
    """
    try:
        with open(cache_dir / name, "rb") as handle:
            line = handle.read(200).decode(errors="replace")
    except OSError:
        return False
    found = _HOLDER.match(line)
    if found is None or found.group(2) != socket.gethostname():
        return False
    try:
        os.kill(int(found.group(1)), 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):
        return False
    return False
