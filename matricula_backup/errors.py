"""The error tree and exit codes.

    BackupError                 anything this tool raises on purpose
    ├── FatalError              the run could not start or had to stop (exit 2)
    │   ├── ConfigError         config.json missing, unreadable or invalid
    │   ├── DatabaseError       state.db cannot be opened, created or upgraded
    │   ├── CacheNotWritable    the cache directory cannot be written
    │   ├── LockHeld            another run holds the lock in the cache directory
    │   └── S3Unreachable       a dry run got no trustworthy answer from S3
    ├── FolderError             one backup folder cannot be backed up (the run goes on)
    └── TransferError           one file or object could not be moved (the others go on)
        ├── FileChanged         a file changed while it was read for an upload
        ├── Stopped             the run is stopping: a multipart upload was aborted
        ├── RequestFailed       S3 refused or never answered a request sent through the CRT
        └── ChecksumMismatch    S3's checksum or a download's bytes differ from ours

Per-file problems are not exceptions that travel: they are recorded as
``Problem`` rows (see ``run.py``) and counted, so one bad file never stops the rest.
A ``TransferError`` is raised by ``s3`` for one file or object and caught by the
caller that handles that file (the worker, restore, drill), which records it.
Only ``cli.py`` turns these into exit codes.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_WITH_ERRORS = 1
EXIT_COULD_NOT_RUN = 2
EXIT_INTERRUPTED = 130  # SIGINT or SIGTERM: stopped early, progress recorded


class BackupError(Exception):
    """Base of every error this tool raises on purpose."""


class FatalError(BackupError):
    """The run could not start, or could not go on: exit code 2."""

    exit_code = EXIT_COULD_NOT_RUN


class ConfigError(FatalError):
    """config.json is missing, unreadable or invalid. The message names the field."""


class DatabaseError(FatalError):
    """The state database cannot be opened, created or upgraded."""


class CacheNotWritable(FatalError):
    """The cache directory (lock, log, state.db) cannot be written by this user."""


class LockHeld(FatalError):
    """Another matricula-backup run holds the lock of this cache directory."""

    since: float | None = None  # when the holder took it (unix seconds), if known


class S3Unreachable(FatalError):
    """A dry run could not reach S3 (no connection, keys refused): no plan to show."""


class FolderError(BackupError):
    """One backup folder cannot be backed up this run; the other folders go on."""


class TransferError(BackupError):
    """One file or object could not be uploaded or downloaded; the caller records a
    Problem for it and goes on with the others."""


class FileChanged(TransferError):
    """Raised by an upload when the file changed while it was read (size, mtime,
    ctime, inode). Nothing is recorded as backed up: the file stays queued and is
    tried again next run."""


class Stopped(TransferError):
    """Raised by a multipart upload aborted between two parts because the run is
    stopping (SIGINT/SIGTERM). The caller logs it; the file stays queued."""


class RequestFailed(TransferError):
    """Raised for a request sent without botocore (``s3/crt.py``) that S3 refused or
    never answered. Carries the ``operation`` and S3's error ``code``, as botocore's
    ClientError does; the caller treats it like one (``s3.describe``)."""

    def __init__(self, operation: str, code: str, message: str) -> None:
        super().__init__(f"{operation} failed: " + " ".join(filter(None, (code, message))))
        self.operation = operation
        self.code = code


class ChecksumMismatch(TransferError):
    """Raised when S3 reports a different checksum than the one of the bytes we sent,
    or when a download's size or SHA-256 differ from the object's. The upload is
    recorded as failed (tried again next run); the download's file is not kept."""
