"""status: what state.db says about each backup folder, without a scan or any S3 request."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from matricula_backup.config import Preservation, Settings
from matricula_backup.db.engine import DB_NAME, database_error, open_state_db_for_dry_run
from matricula_backup.db.schema import BACKED_UP
from matricula_backup.errors import ConfigError
from matricula_backup.folders import backup_folders
from matricula_backup.forget import gone_folders, known_folders
from matricula_backup.lock import holder_gone


@dataclass
class RunInfo:
    id: int
    started_at: int
    finished_at: int | None
    outcome: str
    duration_seconds: int | None
    files_uploaded: int
    errors: int
    # A run still "running" whose process is gone (the lock file names a dead
    # pid): killed; the next run records it as killed.
    process_gone: bool = False


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
    # backed_up | missing (configured, directory not there) | gone (config.json no
    # longer produces it: `forget` closes it) | unknown (config.json unreadable)
    state: str = "unknown"
    last_backup_at: int | None = None  # end of its last run without errors
    # Fixity (scrub.py, drill.py, verify --deep): files read by a scrub within
    # preservation.scrub_days of all backed-up files, files held, the last drill
    # that restored objects of this folder and the last cloud check.
    scrubbed_recently: int = 0
    held: int = 0
    last_drill_id: int | None = None
    last_drill_at: int | None = None
    last_drill_outcome: str | None = None  # running | passed | failed
    last_drill_objects: int = 0  # of this folder
    last_drill_failed: int = 0
    last_deep_verify_at: int | None = None


@dataclass
class Status:
    database: str
    scrub_days: int = Preservation().scrub_days
    folders: list[FolderStatus] = field(default_factory=list)
    last_run: RunInfo | None = None
    last_successful_run: RunInfo | None = None
    last_killed_run: RunInfo | None = None  # found still running by a later run: it died


def read_status(cache_dir: Path, settings: Settings | None = None) -> Status:
    """What state.db says; with ``settings``, also which folders are missing or gone."""
    status = Status(database=str(cache_dir / DB_NAME))
    if settings is not None:
        status.scrub_days = settings.preservation.scrub_days
    if not (cache_dir / DB_NAME).exists():
        return status
    engine = open_state_db_for_dry_run(cache_dir)
    try:
        with engine.connect() as conn:
            states = _folder_states(conn, settings)
            folders = conn.exec_driver_sql(
                "SELECT path, bucket, table_name FROM folders ORDER BY path"
            ).all()
            tables = {
                row[0]
                for row in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'")
            }
            last_backups = {known.path: known.last_backup_at for known in known_folders(conn)}
            for path, bucket, table in folders:
                entry = FolderStatus(path, bucket, table)
                # Not produced, not gone: below a root that is not mounted this time.
                entry.state = "unknown" if states is None else states.get(path, "missing")
                entry.last_backup_at = last_backups.get(path)
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
                _fixity(conn, entry, settings)
            status.last_run = _run(conn, "")
            status.last_successful_run = _run(conn, "WHERE outcome = 'ok'")
            status.last_killed_run = _run(conn, "WHERE outcome = 'killed'")
            if status.last_run is not None and status.last_run.outcome == "running":
                status.last_run.process_gone = holder_gone(cache_dir)
    except (SQLAlchemyError, sqlite3.Error) as exc:
        raise database_error(cache_dir / DB_NAME, exc) from None
    finally:
        engine.dispose()
    return status


def _fixity(conn: Connection, entry: FolderStatus, settings: Settings | None) -> None:
    days = (settings.preservation if settings else Preservation()).scrub_days
    since = int(time.time()) - days * 86400
    entry.scrubbed_recently = conn.exec_driver_sql(
        f"""SELECT count(*) FROM "{entry.table}" AS f JOIN scrub_checks AS c
            ON c.folder = ? AND c.path = f.path
        WHERE f.state = '{BACKED_UP}' AND c.checked_at >= f.uploaded_at AND c.checked_at >= ?""",
        (entry.folder, since),
    ).scalar_one()
    entry.held = conn.exec_driver_sql(
        "SELECT count(*) FROM fixity_holds WHERE folder = ?", (entry.folder,)
    ).scalar_one()
    drill = conn.exec_driver_sql(
        """SELECT d.id, coalesce(d.finished_at, d.started_at), d.outcome, count(*),
               count(*) FILTER (WHERE o.result = 'failed')
        FROM drills AS d JOIN drill_objects AS o ON o.drill_id = d.id
        WHERE o.folder = ? GROUP BY d.id ORDER BY d.id DESC LIMIT 1""",
        (entry.folder,),
    ).first()
    if drill is not None:
        (
            entry.last_drill_id,
            entry.last_drill_at,
            entry.last_drill_outcome,
            entry.last_drill_objects,
            entry.last_drill_failed,
        ) = drill
    entry.last_deep_verify_at = conn.exec_driver_sql(
        "SELECT max(at) FROM fixity_events WHERE folder = ? AND kind = 'cloud check'",
        (entry.folder,),
    ).scalar()


def _folder_states(conn: Connection, settings: Settings | None) -> dict[str, str] | None:
    if settings is None:
        return None
    try:
        configured, _problems = backup_folders(settings)
    except ConfigError:
        return None
    states = {
        str(folder.path): "backed_up" if folder.path.is_dir() else "missing"
        for folder in configured
    }
    for gone in gone_folders(conn, settings, configured):
        states[gone.path] = "gone"
    return states


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
    except (SQLAlchemyError, sqlite3.Error) as exc:
        raise database_error(cache_dir / DB_NAME, exc) from None
    finally:
        engine.dispose()


def unlocked_buckets(cache_dir: Path) -> list[str]:
    """Buckets set up by this tool that no run or verify has seen with Object Lock on.

    Such buckets were set up before ``backup.object_lock`` was (or not looked at
    since); ``check-config`` says how to enable it on them. Read-only.
    """
    if not (cache_dir / DB_NAME).exists():
        return []
    engine = open_state_db_for_dry_run(cache_dir)
    try:
        with engine.connect() as conn:
            return [
                row[0]
                for row in conn.exec_driver_sql(
                    "SELECT bucket FROM folders WHERE bucket_ready_at IS NOT NULL "
                    "AND object_lock_at IS NULL ORDER BY path"
                )
            ]
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
    except (SQLAlchemyError, sqlite3.Error) as exc:
        raise database_error(cache_dir / DB_NAME, exc) from None
    finally:
        engine.dispose()
    return runs
