"""status: what state.db says about each backup folder, without a scan or any S3 request."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection

from matricula_backup.db.engine import DB_NAME, open_state_db_for_dry_run
from matricula_backup.db.schema import BACKED_UP
from matricula_backup.report import human_bytes


@dataclass
class RunInfo:
    id: int
    started_at: int
    finished_at: int | None
    outcome: str
    duration_seconds: int | None
    files_uploaded: int
    errors: int


@dataclass
class FolderStatus:
    folder: str
    bucket: str
    table: str
    files_backed_up: int = 0
    bytes_backed_up: int = 0
    pending_uploads: int = 0  # new or changed files not yet confirmed by S3
    pending_upload_bytes: int = 0
    failed_uploads: int = 0
    failed_deletes: int = 0  # deletions that failed and are retried next run
    last_upload_at: int | None = None


@dataclass
class Status:
    database: str
    folders: list[FolderStatus] = field(default_factory=list)
    last_run: RunInfo | None = None
    last_successful_run: RunInfo | None = None


def read_status(cache_dir: Path) -> Status:
    status = Status(database=str(cache_dir / DB_NAME))
    if not (cache_dir / DB_NAME).exists():
        return status
    engine = open_state_db_for_dry_run(cache_dir)
    try:
        with engine.connect() as conn:
            folders = conn.exec_driver_sql(
                "SELECT path, bucket, table_name FROM folders ORDER BY path"
            ).all()
            tables = {
                row[0]
                for row in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'")
            }
            for path, bucket, table in folders:
                entry = FolderStatus(path, bucket, table)
                status.folders.append(entry)
                if table not in tables:
                    continue
                row = conn.exec_driver_sql(
                    f"""SELECT
                        count(*) FILTER (WHERE state = '{BACKED_UP}'),
                        coalesce(sum(size) FILTER (WHERE state = '{BACKED_UP}'), 0),
                        count(*) FILTER (WHERE state != '{BACKED_UP}'),
                        coalesce(sum(size) FILTER (WHERE state != '{BACKED_UP}'), 0),
                        count(*) FILTER (WHERE state = 'failed'),
                        count(*) FILTER (WHERE state = '{BACKED_UP}' AND error IS NOT NULL),
                        max(uploaded_at)
                    FROM "{table}" """
                ).one()
                (
                    entry.files_backed_up,
                    entry.bytes_backed_up,
                    entry.pending_uploads,
                    entry.pending_upload_bytes,
                    entry.failed_uploads,
                    entry.failed_deletes,
                    entry.last_upload_at,
                ) = row
            status.last_run = _run(conn, "")
            status.last_successful_run = _run(conn, "WHERE outcome = 'ok'")
    finally:
        engine.dispose()
    return status


def recorded_buckets(cache_dir: Path) -> dict[str, str]:
    """folder path -> its recorded bucket, from state.db if there is one (read-only)."""
    if not (cache_dir / DB_NAME).exists():
        return {}
    engine = open_state_db_for_dry_run(cache_dir)
    try:
        with engine.connect() as conn:
            return {
                row[0]: row[1] for row in conn.exec_driver_sql("SELECT path, bucket FROM folders")
            }
    finally:
        engine.dispose()


def _run(conn: Connection, where: str) -> RunInfo | None:
    row = conn.exec_driver_sql(
        f"SELECT id, started_at, finished_at, outcome, files_uploaded, errors FROM runs {where} "
        "ORDER BY id DESC LIMIT 1"
    ).first()
    if row is None:
        return None
    duration = row[2] - row[1] if row[2] is not None else None
    return RunInfo(row[0], row[1], row[2], row[3], duration, row[4], row[5])


def status_lines(status: Status) -> list[str]:
    if not status.folders and status.last_run is None:
        return [f"{status.database}: no backup has run yet"]
    lines = []
    for entry in status.folders:
        lines.append(
            f"{entry.folder} -> s3://{entry.bucket}: {entry.files_backed_up} files "
            f"({human_bytes(entry.bytes_backed_up)}) backed up; {entry.pending_uploads} to upload "
            f"({human_bytes(entry.pending_upload_bytes)}), {entry.failed_uploads} failed uploads, "
            f"{entry.failed_deletes} failed deletes; last upload {_when(entry.last_upload_at)}"
        )
    for label, run in (
        ("last run", status.last_run),
        ("last successful run", status.last_successful_run),
    ):
        if run is None:
            lines.append(f"{label}: none")
        else:
            took = f", took {run.duration_seconds} s" if run.duration_seconds is not None else ""
            lines.append(
                f"{label}: #{run.id} started {_when(run.started_at)}{took}, {run.outcome}, "
                f"{run.files_uploaded} files uploaded, {run.errors} errors"
            )
    return lines


@dataclass
class FolderRun:
    folder: str
    bucket: str
    files_seen: int
    files_uploaded: int
    bytes_uploaded: int
    files_deleted: int
    files_same_content: int
    errors: int
    s3_requests: int
    seconds: int | None


@dataclass
class HistoryRun:
    id: int
    started_at: int
    finished_at: int | None
    hostname: str
    mode: str
    outcome: str
    files_uploaded: int
    bytes_uploaded: int
    files_deleted: int
    errors: int
    s3_requests: int
    folders: list[FolderRun] = field(default_factory=list)


def read_history(cache_dir: Path, limit: int) -> list[HistoryRun]:
    """The last ``limit`` real runs, newest first, each with its per-folder counts."""
    if not (cache_dir / DB_NAME).exists():
        return []
    engine = open_state_db_for_dry_run(cache_dir)
    try:
        with engine.connect() as conn:
            runs = [
                HistoryRun(*row)
                for row in conn.exec_driver_sql(
                    "SELECT id, started_at, finished_at, hostname, mode, outcome, files_uploaded, "
                    "bytes_uploaded, files_deleted, errors, s3_requests FROM runs "
                    "ORDER BY id DESC LIMIT ?",
                    (limit,),
                ).all()
            ]
            for run in runs:
                run.folders = [
                    FolderRun(*row)
                    for row in conn.exec_driver_sql(
                        "SELECT folder, bucket, files_seen, files_uploaded, bytes_uploaded, "
                        "files_deleted, files_same_content, errors, s3_requests, "
                        "finished_at - started_at FROM run_folders WHERE run_id = ? "
                        "ORDER BY folder",
                        (run.id,),
                    ).all()
                ]
    finally:
        engine.dispose()
    return runs


def history_lines(runs: list[HistoryRun]) -> list[str]:
    if not runs:
        return ["no backup has run yet"]
    lines = []
    for run in runs:
        took = f"{run.finished_at - run.started_at} s" if run.finished_at else "still running?"
        lines.append(
            f"#{run.id} {_when(run.started_at)} {run.mode} {run.outcome} ({took}): "
            f"{run.files_uploaded} files ({human_bytes(run.bytes_uploaded)}) uploaded, "
            f"{run.files_deleted} deleted, {run.errors} errors, {run.s3_requests} S3 requests"
        )
        for entry in run.folders:
            lines.append(
                f"    {entry.folder}: {entry.files_seen} files, {entry.files_uploaded} uploaded "
                f"({human_bytes(entry.bytes_uploaded)}), {entry.files_deleted} deleted, "
                f"{entry.files_same_content} unchanged (only touched), {entry.errors} errors, "
                f"{entry.s3_requests} requests"
            )
    return lines


def _when(seconds: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds)) if seconds else "never"
