"""Rows of the fixed tables: the folder -> bucket record, runs and their problems."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from sqlalchemy import Connection, delete, func, insert, select, text, update

from matricula_backup.db.schema import files_table_ddl, folders, problems, run_folders, runs
from matricula_backup.errors import FolderError
from matricula_backup.folders import BackupFolder, bucket_name, table_name
from matricula_backup.report import Problem, RunReport

logger = logging.getLogger(__name__)

KEEP_PROBLEMS_OF_RUNS = 100


@dataclass(frozen=True)
class FolderRecord:
    """A backup folder as the database knows it. ``id`` is None before the first real run."""

    id: int | None
    folder: BackupFolder
    bucket: str
    table: str
    bucket_ready: bool
    table_exists: bool
    listed: bool  # the files table was filled from the bucket's listing
    object_lock: bool = False  # the bucket was last seen with Object Lock on

    @property
    def needs_listing(self) -> bool:
        return not (self.table_exists and self.listed)


def lookup_folder(conn: Connection, folder: BackupFolder, prefix: str) -> FolderRecord:
    """The recorded bucket of a folder, or the one it would get (writes nothing)."""
    row = conn.execute(select(folders).where(folders.c.path == str(folder.path))).first()
    if row is None:
        bucket = bucket_name(folder.path, prefix)
        return FolderRecord(None, folder, bucket, table_name(bucket), False, False, False)
    derived = bucket_name(folder.path, prefix)
    if derived != row.bucket and row.bucket_ready_at is None:
        # Nothing was ever uploaded to the recorded name (e.g. it was taken by
        # another account): a changed backup.bucket_prefix applies.
        logger.warning(
            "%s: no bucket was set up yet; using %s instead of %s", folder.path, derived, row.bucket
        )
        return FolderRecord(
            row.id,
            folder,
            derived,
            row.table_name,
            False,
            _table_exists(conn, row.table_name),
            row.listed_at is not None,
            row.object_lock_at is not None,
        )
    if derived != row.bucket:
        logger.warning(
            "%s: keeps its recorded bucket %s (the current backup.bucket_prefix would give %s)",
            folder.path,
            row.bucket,
            derived,
        )
    return FolderRecord(
        row.id,
        folder,
        row.bucket,
        row.table_name,
        row.bucket_ready_at is not None,
        _table_exists(conn, row.table_name),
        row.listed_at is not None,
        row.object_lock_at is not None,
    )


def register_folder(conn: Connection, record: FolderRecord) -> FolderRecord:
    """Record the folder's bucket (once, for good) and make sure its files table exists."""
    if record.id is None:
        taken = conn.execute(
            select(folders.c.path).where(folders.c.bucket == record.bucket)
        ).scalar()
        if taken is not None:
            raise FolderError(
                f"bucket name {record.bucket} is already recorded for {taken}; "
                "rename one of the folders or set backup.bucket_prefix"
            )
        new_id = conn.execute(
            insert(folders).values(
                path=str(record.folder.path),
                bucket=record.bucket,
                table_name=record.table,
                created_at=int(time.time()),
            )
        ).inserted_primary_key
        assert new_id is not None
        record = FolderRecord(
            new_id[0], record.folder, record.bucket, record.table, False, False, False
        )
        logger.info(
            "%s: recorded bucket %s, table %s", record.folder.path, record.bucket, record.table
        )
    else:
        conn.execute(
            update(folders)
            .where(folders.c.id == record.id, folders.c.bucket_ready_at.is_(None))
            .values(bucket=record.bucket)
        )
    if not record.table_exists:
        for statement in files_table_ddl(record.table):
            conn.execute(text(statement))
        conn.execute(update(folders).where(folders.c.id == record.id).values(listed_at=None))
        record = replace(record, table_exists=True, listed=False)
    conn.commit()
    return record


def mark_listed(conn: Connection, record: FolderRecord) -> None:
    """The files table now holds what the bucket listing showed."""
    conn.execute(
        update(folders).where(folders.c.id == record.id).values(listed_at=int(time.time()))
    )
    conn.commit()


def create_empty_temp_table(conn: Connection, record: FolderRecord) -> None:
    """Dry run of a folder never backed up: compare against an empty table."""
    for statement in files_table_ddl(record.table, temporary=True):
        conn.execute(text(statement))


def mark_bucket_ready(conn: Connection, record: FolderRecord) -> None:
    conn.execute(
        update(folders).where(folders.c.id == record.id).values(bucket_ready_at=int(time.time()))
    )
    conn.commit()


def mark_object_lock(conn: Connection, bucket: str, locked: bool) -> None:
    """Record whether the bucket has Object Lock on, as S3 just said."""
    conn.execute(
        update(folders)
        .where(folders.c.bucket == bucket)
        .values(object_lock_at=int(time.time()) if locked else None)
    )
    conn.commit()


@dataclass(frozen=True)
class DeadRun:
    id: int
    started_at: int
    hostname: str


def close_dead_runs(conn: Connection) -> list[DeadRun]:
    """Mark runs still ``running`` as ``killed``; call it only while holding the lock.

    Every real run holds the exclusive lock of the cache directory from before
    its ``runs`` row is written until after it is finished, and the kernel
    drops the lock when a process dies. So a ``running`` row seen by the lock's
    holder before it starts its own belongs to a process that is gone (kill -9,
    the OOM killer, a power cut): no pid needs to be compared.
    """
    dead = [
        DeadRun(row.id, row.started_at, row.hostname)
        for row in conn.execute(
            select(runs.c.id, runs.c.started_at, runs.c.hostname)
            .where(runs.c.outcome == "running")
            .order_by(runs.c.id)
        )
    ]
    if dead:
        conn.execute(
            update(runs).where(runs.c.id.in_([run.id for run in dead])).values(outcome="killed")
        )
    conn.commit()
    return dead


def start_run(conn: Connection, mode: str, hostname: str) -> int:
    run_id = conn.execute(
        insert(runs).values(
            started_at=int(time.time()), hostname=hostname, mode=mode, outcome="running"
        )
    ).inserted_primary_key
    conn.commit()
    assert run_id is not None
    return int(run_id[0])


def record_problems(conn: Connection, run_id: int, report: RunReport) -> None:
    found = list(report.problems)
    if report.unlisted_problems:
        found.append(
            Problem(
                "(whole run)",
                "run",
                f"{report.unlisted_problems} more problems are not "
                "listed here; see the log and the error column of the files tables",
            )
        )
    if found:
        conn.execute(
            insert(problems),
            [
                {
                    "run_id": run_id,
                    "folder": problem.folder,
                    "operation": problem.operation,
                    "path": problem.path,
                    "message": problem.message,
                }
                for problem in found
            ],
        )
    conn.commit()


def finish_run(conn: Connection, run_id: int, report: RunReport, outcome: str) -> None:
    total = report.totals()
    conn.execute(
        update(runs)
        .where(runs.c.id == run_id)
        .values(
            finished_at=int(time.time()),
            outcome=outcome,
            files_uploaded=total.uploaded,
            bytes_uploaded=total.bytes_uploaded,
            files_deleted=total.deleted,
            errors=report.error_count,
            s3_requests=report.s3_requests,
        )
    )
    if report.folders:
        conn.execute(
            insert(run_folders),
            [
                {
                    "run_id": run_id,
                    "folder": entry.folder,
                    "bucket": entry.bucket,
                    "started_at": entry.started_at or None,
                    "finished_at": entry.finished_at or None,
                    "files_seen": entry.files_seen,
                    "bytes_seen": entry.bytes_seen,
                    "files_uploaded": entry.uploaded,
                    "bytes_uploaded": entry.bytes_uploaded,
                    "files_deleted": entry.deleted,
                    "files_same_content": entry.same_content,
                    "files_excluded": entry.excluded,
                    "errors": entry.errors,
                    "s3_requests": entry.s3_requests,
                    "files_changed": entry.changed_uploaded,
                }
                for entry in report.folders
            ],
        )
    # Years of nightly runs: keep the problems of the last runs only.
    oldest_kept = conn.execute(
        select(func.min(runs.c.id)).where(
            runs.c.id.in_(select(runs.c.id).order_by(runs.c.id.desc()).limit(KEEP_PROBLEMS_OF_RUNS))
        )
    ).scalar()
    if oldest_kept is not None:
        conn.execute(delete(problems).where(problems.c.run_id < oldest_kept))
    conn.commit()


def changes_since(conn: Connection, folder: str, since: int) -> tuple[int, int]:
    """Files of ``folder`` changed (new versions) and deleted by the runs started since then."""
    row = conn.execute(
        select(
            func.coalesce(func.sum(run_folders.c.files_changed), 0),
            func.coalesce(func.sum(run_folders.c.files_deleted), 0),
        )
        .select_from(run_folders.join(runs, runs.c.id == run_folders.c.run_id))
        .where(run_folders.c.folder == folder, runs.c.started_at >= since)
    ).one()
    return int(row[0]), int(row[1])


def drop_files_tables(conn: Connection, paths: list[str] | None = None) -> list[str]:
    """--reset: drop the files tables (of ``paths``, or all); the bucket records stay."""
    query = select(folders.c.table_name)
    if paths is not None:
        query = query.where(folders.c.path.in_(paths))
    names = [row.table_name for row in conn.execute(query)]
    for name in names:
        conn.execute(text(f'DROP TABLE IF EXISTS "{name}"'))
    conn.execute(update(folders).where(folders.c.table_name.in_(names)).values(listed_at=None))
    conn.commit()
    return names


def _table_exists(conn: Connection, name: str) -> bool:
    found = conn.execute(
        text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name"),
        {"name": name},
    ).first()
    return found is not None
