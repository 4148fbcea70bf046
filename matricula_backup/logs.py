"""Logging: a rotated log file in the cache directory, warnings on stderr.

Several commands may write the same log at once (a backup and a restore, a
dry run next to the nightly run): ``SharedLogFile`` appends each line with
one ``write`` under an ``flock`` on the cache directory itself, reopens the
file when another process has rotated it, and rotates only under that lock,
so no line is lost, doubled or cut into another
(``logging.handlers.RotatingFileHandler`` does not support several processes).
The directory, not a lock file: any user who may use the cache directory can
open it, whoever ran the first command there.

Every line is escaped (``escape.printable``: a file name cannot forge a log
line) and redacted (``escape.redact``: a webhook's ``sig=`` never lands here).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
from pathlib import Path
from types import TracebackType
from typing import TypeAlias

from matricula_backup.escape import printable, redact

LOG_NAME = "matricula-backup.log"
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 5  # 60 MB at most, whatever the number of nightly runs
# Rotation size in bytes instead of LOG_MAX_BYTES (README, "The log").
LOG_MAX_BYTES_ENV = "MATRICULA_BACKUP_LOG_MAX_BYTES"

_ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None]


class EscapingFormatter(logging.Formatter):
    """One record, one line: the message escaped and redacted, a traceback indented.

    Continuation lines of a traceback start with spaces, so nothing inside a
    record can look like the start of another one.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = redact(printable(record.message))
        return super().formatMessage(record)

    def formatException(self, ei: _ExcInfo | tuple[None, None, None]) -> str:  # noqa: N802
        text = super().formatException(ei)
        return "\n".join("    " + redact(printable(line)) for line in text.splitlines())

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return "\n".join("    " + printable(line) for line in stack_info.splitlines())


class SharedLogFile(logging.Handler):
    """Append to ``path``, rotating at ``max_bytes`` into ``path.1`` ... ``path.N``.

    Safe across processes: each record is one ``write`` (O_APPEND) made while
    holding an exclusive ``flock`` on the directory of ``path``, after checking
    that ``path`` is still the file this process has open.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        super().__init__()
        self.path = path
        self.max_bytes = max_bytes
        self.backups = max(backups, 1)
        self.lock_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        # Some network file systems refuse flock on a directory: then lines are still
        # appended whole (O_APPEND), only rotation is not coordinated.
        self.locking = True
        try:
            self.fd = self._open()
        except OSError:
            os.close(self.lock_fd)
            raise

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            self._lock(fcntl.LOCK_EX)
            try:
                size = self._current_size()
                if self.max_bytes and size and size + len(data) > self.max_bytes:
                    self._rotate()
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view) :]
            finally:
                self._lock(fcntl.LOCK_UN)
        except Exception:
            self.handleError(record)

    def _lock(self, operation: int) -> None:
        if self.locking:
            try:
                fcntl.flock(self.lock_fd, operation)
            except OSError:
                self.locking = False

    def _current_size(self) -> int:
        """Size of the log at ``path``; reopened first if another process rotated it."""
        mine = os.fstat(self.fd)
        try:
            there = os.stat(self.path)
        except FileNotFoundError:
            there = None
        if there is None or (there.st_ino, there.st_dev) != (mine.st_ino, mine.st_dev):
            os.close(self.fd)
            self.fd = self._open()
            return os.fstat(self.fd).st_size
        return there.st_size

    def _rotate(self) -> None:
        for number in range(self.backups - 1, 0, -1):
            older = Path(f"{self.path}.{number}")
            if older.exists():
                os.replace(older, f"{self.path}.{number + 1}")
        os.replace(self.path, f"{self.path}.1")
        os.close(self.fd)
        self.fd = self._open()

    def close(self) -> None:
        for fd in (self.fd, self.lock_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        super().close()


def log_max_bytes() -> tuple[int, str | None]:
    """LOG_MAX_BYTES, or MATRICULA_BACKUP_LOG_MAX_BYTES (0: never rotate); and why not."""
    value = os.environ.get(LOG_MAX_BYTES_ENV, "").strip()
    if not value:
        return LOG_MAX_BYTES, None
    if not (value.isascii() and value.isdigit()):
        return LOG_MAX_BYTES, (
            f"{LOG_MAX_BYTES_ENV}={value!r} is not a size in bytes; rotating at "
            f"{LOG_MAX_BYTES} bytes"
        )
    return int(value), None


def setup_logging(cache_dir: Path | None, verbose: bool = False) -> Path | None:
    """Log to ``cache_dir/matricula-backup.log`` (rotated) and to stderr."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stderr)
    # Per-file problems go to the log file; the terminal (and cron's mail) gets
    # the summary from cli.py, and errors that stop the run.
    console.setLevel(logging.INFO if verbose else logging.ERROR)
    console.setFormatter(EscapingFormatter("%(levelname)s: %(message)s"))
    root.addHandler(console)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if cache_dir is None or not cache_dir.is_dir():
        return None
    path = cache_dir / LOG_NAME
    max_bytes, bad_setting = log_max_bytes()
    try:
        handler = SharedLogFile(path, max_bytes, LOG_BACKUPS)
    except OSError as exc:
        logging.getLogger(__name__).warning("cannot write the log file %s: %s", path, exc)
        return None
    handler.setFormatter(
        EscapingFormatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    )
    root.addHandler(handler)
    if bad_setting:
        logging.getLogger(__name__).warning("%s", bad_setting)
    return path
