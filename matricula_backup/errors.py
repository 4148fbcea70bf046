"""The error tree and exit codes.

    BackupError                 anything this tool raises on purpose
    ├── FatalError              the run could not start or had to stop (exit 2)
    │   ├── ConfigError         config.json missing, unreadable or invalid
    │   ├── DatabaseError       state.db cannot be opened, created or upgraded
    │   ├── CacheNotWritable    the cache directory cannot be written
    │   ├── LockHeld            another run holds the lock in the cache directory
    │   └── S3Unreachable       a dry run got no trustworthy answer from S3
    └── FolderError             one backup folder cannot be backed up (the run goes on)

Per-file problems are not exceptions that travel: they are recorded as
``Problem`` rows (see ``run.py``) and counted, so one bad file never stops the rest.
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
