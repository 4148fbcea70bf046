"""Tables of ``state.db`` (SQLAlchemy Core).

Fixed tables (created and upgraded by the alembic migrations in ``migrations/``):

- ``folders``: one row per backup folder: its path, its bucket (derived once,
  then always read from here) and the name of its files table.
- ``runs``: one row per real run (dry runs write nothing): when, outcome, counts.
- ``problems``: every error met by a run, with its folder, file and message.
- ``run_folders``: what each run did per backup folder (``history``).
- ``restores``: every object version a restore asked S3 for, and where it went.

One files table per backup folder, named ``files_<bucket with _ for ->``. Its
rows are the files of that folder as last scanned and as last confirmed by S3.
These tables are created at run time from ``files_table()``; a migration that
changes their shape must loop over ``folders.table_name``.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

folders = Table(
    "folders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("path", Text, nullable=False, unique=True),
    Column("bucket", Text, nullable=False, unique=True),
    Column("table_name", Text, nullable=False, unique=True),
    Column("created_at", Integer, nullable=False),  # unix seconds
    # When this tool created (or adopted) the bucket and applied its settings.
    Column("bucket_ready_at", Integer),
    # When the files table was filled from the bucket's listing (a new table:
    # first run, --reset, lost state.db). NULL: the next run lists the bucket
    # before it uploads anything, so a run killed half-way resumes correctly.
    Column("listed_at", Integer),
    # When a run or verify last found the bucket's Object Lock on; NULL: off or not
    # known. Versions in such a bucket that carry no recorded retention get one.
    Column("object_lock_at", Integer),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("started_at", Integer, nullable=False),
    Column("finished_at", Integer),
    Column("hostname", Text, nullable=False),
    Column("mode", Text, nullable=False),  # backup | reset
    # running | ok | errors | failed | interrupted | killed (a later run found it
    # still running: its process died without finishing it)
    Column("outcome", Text, nullable=False),
    Column("files_uploaded", Integer, nullable=False, server_default=text("0")),
    Column("bytes_uploaded", Integer, nullable=False, server_default=text("0")),
    Column("files_deleted", Integer, nullable=False, server_default=text("0")),
    Column("errors", Integer, nullable=False, server_default=text("0")),
    Column("s3_requests", Integer, nullable=False, server_default=text("0")),
)

problems = Table(
    "problems",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("folder", Text, nullable=False),
    # config | scan | bucket | upload | delete | change (mass change guard) | notify
    Column("operation", Text, nullable=False),
    Column("path", Text),
    Column("message", Text, nullable=False),
    Index("ix_problems_run_id", "run_id"),
)

run_folders = Table(
    "run_folders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("folder", Text, nullable=False),
    Column("bucket", Text, nullable=False),
    Column("started_at", Integer),
    Column("finished_at", Integer),
    Column("files_seen", Integer, nullable=False, server_default=text("0")),
    Column("bytes_seen", Integer, nullable=False, server_default=text("0")),
    Column("files_uploaded", Integer, nullable=False, server_default=text("0")),
    Column("bytes_uploaded", Integer, nullable=False, server_default=text("0")),
    Column("files_deleted", Integer, nullable=False, server_default=text("0")),
    Column("files_same_content", Integer, nullable=False, server_default=text("0")),
    Column("files_excluded", Integer, nullable=False, server_default=text("0")),
    Column("errors", Integer, nullable=False, server_default=text("0")),
    Column("s3_requests", Integer, nullable=False, server_default=text("0")),
    # New versions of files that had one (not new files): with files_deleted, the
    # rolling 7-day count of the mass change guard.
    Column("files_changed", Integer, nullable=False, server_default=text("0")),
    Index("ix_run_folders_run_id", "run_id"),
)

restores = Table(
    "restores",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("bucket", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("version_id", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("tier", Text),  # Standard | Bulk, of the RestoreObject request
    Column("requested_at", Integer),  # S3 accepted the RestoreObject request
    Column("downloaded_at", Integer),  # written to target and verified
    Column("target", Text),  # where it was written
    Column("error", Text),  # the last error for this object, NULL once done
    UniqueConstraint("bucket", "key", "version_id", name="uq_restores_object"),
)

# States of a file row.
PENDING = "pending"  # new or changed on disk, not yet confirmed by S3
BACKED_UP = "backed_up"  # S3 confirmed an upload of exactly this size and mtime
FAILED = "failed"  # the last upload attempt failed; retried next run


FILES_TABLE_PREFIX = "files_"


def is_files_table(name: str) -> bool:
    """A per-folder files table (made from ``files_table_ddl``, not in ``metadata``)."""
    return name.startswith(FILES_TABLE_PREFIX)


def files_table_ddl(name: str, temporary: bool = False) -> list[str]:
    """CREATE statements of one backup folder's files table.

    Kept as plain SQL: it is the schema people read in the README, and the hot
    paths (scan, queues) are plain SQL over it too. A dry run of a folder that
    has no table yet uses an empty temporary one of the same name.
    """
    temp = "TEMP " if temporary else ""
    return [
        f"""CREATE {temp}TABLE IF NOT EXISTS "{name}" (
    path        TEXT PRIMARY KEY,   -- relative to the backup folder, '/'-separated
    size        INTEGER NOT NULL,   -- bytes: as uploaded if backed_up, else as last scanned
    mtime_ns    INTEGER NOT NULL,   -- modification time, ns since 1970 (same rule as size)
    state       TEXT NOT NULL,      -- pending | backed_up | failed
    version_id  TEXT,               -- S3 version id of the last confirmed upload
    sha256      BLOB,               -- SHA-256 of the bytes of that upload (32 bytes)
    uploaded_at INTEGER,            -- when S3 confirmed it, unix seconds
    error       TEXT,               -- last upload/delete error; NULL once resolved
    retain_until INTEGER            -- Object Lock of that version: locked until, unix seconds
) WITHOUT ROWID""",
        f"""CREATE INDEX IF NOT EXISTS "ix_{name}_retain_until"
    ON "{name}" (retain_until) WHERE retain_until IS NOT NULL""",
    ]


# --- fixity (fixity.py, scrub.py, drill.py) ---------------------------------------------------

# Every check of a file's bytes: an auditor's "when was this file last proven
# intact, on which copy?" is one query over this table (README, Proving the archive).
fixity_events = Table(
    "fixity_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", Integer, nullable=False),  # unix seconds
    Column("folder", Text, nullable=False),  # the backup folder
    Column("path", Text, nullable=False),  # relative to the folder
    Column("kind", Text, nullable=False),  # upload | scrub | cloud check | drill
    Column("copy", Text, nullable=False),  # local | bucket | both (upload: S3 checked our bytes)
    Column("result", Text, nullable=False),  # ok | failed | accepted | restored
    Column("version_id", Text),  # the bucket's version the check was about
    Column("detail", Text),
    Index("ix_fixity_events_file", "folder", "path", "at"),
    Index("ix_fixity_events_kind", "folder", "kind", "at"),  # status: the last of each kind
)

# When scrub last read each file (the due share: never since its upload, or
# longer ago than preservation.scrub_days).
scrub_checks = Table(
    "scrub_checks",
    metadata,
    Column("folder", Text, primary_key=True),
    Column("path", Text, primary_key=True),
    Column("checked_at", Integer, nullable=False),
    sqlite_with_rowid=False,
)

# Files whose bytes no longer match the SHA-256 of their upload: no run uploads
# them until the good copy is back or ``scrub --accept`` says the new bytes are right.
# Kept apart from the files tables so that --reset and a lost run keep them.
fixity_holds = Table(
    "fixity_holds",
    metadata,
    Column("folder", Text, primary_key=True),
    Column("path", Text, primary_key=True),
    Column("good_sha256", LargeBinary, nullable=False),
    Column("good_version_id", Text),
    Column("size", Integer, nullable=False),
    Column("mtime_ns", Integer, nullable=False),
    Column("verified_at", Integer),  # last time the bytes were proven good
    Column("found_at", Integer, nullable=False),
    Column("found_sha256", LargeBinary, nullable=False),
)

drills = Table(
    "drills",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("started_at", Integer, nullable=False),
    Column("finished_at", Integer),
    Column("tier", Text, nullable=False),  # Bulk | Standard
    Column("outcome", Text, nullable=False),  # running | passed | failed
)

drill_objects = Table(
    "drill_objects",
    metadata,
    Column("drill_id", Integer, ForeignKey("drills.id", ondelete="CASCADE"), primary_key=True),
    Column("folder", Text, primary_key=True),
    Column("path", Text, primary_key=True),
    Column("bucket", Text, nullable=False),
    Column("version_id", Text, nullable=False),  # recorded in state.db when picked
    Column("size", Integer, nullable=False),
    Column("sha256", LargeBinary),
    Column("mtime_ns", Integer, nullable=False),
    Column("requested_at", Integer),
    Column("checked_at", Integer),
    Column("result", Text),  # ok | failed
    Column("detail", Text),
)


__all__ = [
    "BACKED_UP",
    "FAILED",
    "drill_objects",
    "drills",
    "fixity_events",
    "fixity_holds",
    "scrub_checks",
    "PENDING",
    "files_table_ddl",
    "is_files_table",
    "folders",
    "metadata",
    "problems",
    "restores",
    "run_folders",
    "runs",
]
