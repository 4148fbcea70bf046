"""The plain records the stages pass on: config -> backup folders -> scan -> queues ->
S3 -> report. They hold data only and import nothing of the stages, so that a stage
can take another's output without reaching its code (the scan imports no config, the
s3 package nothing of the queues: pyproject.toml [tool.importlinter]).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from matricula_backup.escape import printable


@dataclass(frozen=True)
class RunOptions:
    """What the command line asked of a backup run."""

    dry_run: bool = False
    reset: bool = False
    allow_mass_delete: bool = False
    allow_mass_change: bool = False
    only: tuple[Path, ...] = ()  # --folder: back up just these backup folders


@dataclass(frozen=True)
class BackupFolder:
    """One folder that is backed up on its own, with where it came from in config.json."""

    path: Path
    source: str  # e.g. "backup.folders[0]" or "backup.roots[1]"

    @property
    def key_prefix(self) -> str:
        """Object keys of this folder start with this: the absolute path without its '/'."""
        return str(self.path).lstrip("/") + "/"


@dataclass(frozen=True)
class Problem:
    """One thing that went wrong with one file or folder. The run goes on."""

    folder: str
    operation: str  # config, scan, bucket, upload, delete, notify
    message: str
    path: str | None = None  # the file or directory concerned, if any

    def __str__(self) -> str:
        """One line, whatever the file name holds (escape.py)."""
        where = self.path or self.folder
        return f"{self.operation}: {printable(where)}: {printable(self.message)}"


@dataclass(frozen=True)
class UploadItem:
    path: str
    size: int
    mtime_ns: int
    reason: str  # new, changed size, changed mtime, retry
    in_bucket_sha256: bytes | None  # of the bucket's latest version, if recorded
    changed: bool = False  # was backed up, size or mtime differ now (mass change guard)
    # The row was adopted from a bucket listing (no mtime or SHA-256 of its own) and
    # the file has the object's size: HEAD the latest version before uploading.
    check_bucket: bool = False


@dataclass(frozen=True)
class Uploaded:
    """S3 confirmed an upload of exactly these bytes, or (``sent`` false) the bucket's
    latest version already holds exactly these bytes."""

    path: str
    size: int
    mtime_ns: int
    version_id: str | None
    sha256: bytes
    sent: bool = True
    retain_until: int | None = None  # Object Lock retention set on the upload, unix seconds


@dataclass(frozen=True)
class ListedObject:
    """The latest version of an object, as listed from the bucket."""

    path: str  # relative to the backup folder
    size: int
    last_modified: int  # unix seconds
    version_id: str | None
