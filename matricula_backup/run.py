"""One backup run, stage by stage.

    config -> backup folders -> scan into SQLite -> queues -> S3 worker -> report

Each stage reads what the previous one wrote. The database is the only
hand-over between scan and worker, which is what makes a run resumable: the
next run scans again and finds in the files tables what S3 already confirmed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine

from matricula_backup import online, queues, s3, worker
from matricula_backup.config import Settings
from matricula_backup.db import records
from matricula_backup.db.engine import open_state_db, open_state_db_for_dry_run
from matricula_backup.errors import ConfigError, FolderError, S3Unreachable
from matricula_backup.exclude import Excludes
from matricula_backup.folders import BackupFolder, backup_folders
from matricula_backup.progress import NoProgress, RunProgress
from matricula_backup.report import FolderReport, Problem, RunReport, folder_line
from matricula_backup.scan import scan_folder

logger = logging.getLogger(__name__)

# Below this many deletions in one folder the share is not checked (a folder of
# 3 files may lose one without anybody being asked).
MASS_DELETE_MIN_FILES = 10


class _LazyStore:
    """The S3 client is built only when a folder has work: no work, no request."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store: s3.Store | None = None
        self.warned: set[str] = set()

    def get(self) -> s3.Store:
        if self.store is None:
            self.store = s3.connect(self.settings)
        return self.store

    @property
    def requests(self) -> int:
        return self.store.counter.total if self.store else 0


@dataclass(frozen=True)
class RunOptions:
    """What the command line asked for."""

    dry_run: bool = False
    reset: bool = False
    allow_mass_delete: bool = False
    only: tuple[Path, ...] = ()  # --folder: back up just these backup folders


def run_backup(
    settings: Settings, options: RunOptions, progress: RunProgress | None = None
) -> RunReport:
    """Back up every folder; problems are collected in the report, never raised per file."""
    dry_run = options.dry_run
    report = RunReport(dry_run=dry_run, reset=options.reset)
    store = _LazyStore(settings)
    progress = progress or NoProgress()
    try:
        folders, problems = backup_folders(settings)
        if options.only:
            folders = _only(folders, options.only)
            problems = []  # about the other folders
        for problem in problems:
            report.add_problem(problem)
        engine: Engine = (
            open_state_db_for_dry_run(settings.cache_dir)
            if dry_run
            else open_state_db(settings.cache_dir)
        )
        try:
            with engine.connect() as conn:
                _run_folders(conn, settings, folders, store, report, options, progress)
        finally:
            engine.dispose()
    finally:
        progress.close()  # also when config or database stopped the run
    if store.store is not None:
        report.requests_by_operation = dict(store.store.counter.by_operation)
        logger.info("S3 requests by operation: %s", report.requests_by_operation)
    return report


def _run_folders(
    conn: Connection,
    settings: Settings,
    folders: list[BackupFolder],
    store: _LazyStore,
    report: RunReport,
    options: RunOptions,
    progress: RunProgress,
) -> None:
    """Every folder in turn, inside a ``runs`` row (real runs) that records the outcome."""
    run_id = None
    if not options.dry_run:
        run_id = records.start_run(conn, "reset" if options.reset else "backup", report.hostname)
        if options.reset:
            dropped = records.drop_files_tables(
                conn, [str(folder.path) for folder in folders] if options.only else None
            )
            logger.info("--reset: dropped %d files tables; rebuilding them", len(dropped))
    outcome = "failed"
    try:
        for folder in folders:
            _backup_folder(conn, settings, folder, store, report, options, progress)
        outcome = "errors" if report.error_count else "ok"
    except KeyboardInterrupt:
        report.interrupted = True
        outcome = "interrupted"
        raise
    finally:
        report.s3_requests = store.requests
        if run_id is not None:
            conn.rollback()
            records.record_problems(conn, run_id, report)
            records.finish_run(conn, run_id, report, outcome)


def _backup_folder(
    conn: Connection,
    settings: Settings,
    folder: BackupFolder,
    store: _LazyStore,
    run: RunReport,
    options: RunOptions,
    progress: RunProgress,
) -> None:
    dry_run = options.dry_run
    record = records.lookup_folder(conn, folder, settings.bucket_prefix)
    report = FolderReport(
        folder=str(folder.path), bucket=record.bucket, started_at=int(time.time())
    )
    run.folders.append(report)
    requests_before = store.requests
    source = str(folder.path)
    if not folder.path.is_dir():
        run.add_problem(
            Problem(
                source,
                "scan",
                f"{folder.source}: folder missing (not mounted?): {source}; "
                "nothing is uploaded or deleted for it this run",
            ),
            report,
        )
        return
    try:
        # A table that is new this run (first run, --reset, lost state.db) starts
        # from what the bucket holds; a dry run uses an empty temporary table.
        fresh_table = options.reset or record.needs_listing
        if not dry_run:
            record = records.register_folder(conn, record)
        elif fresh_table:
            records.create_empty_temp_table(conn, record)

        progress.scanning(source)
        scanned = scan_folder(
            conn,
            folder,
            lambda problem: run.add_problem(problem, report),
            Excludes(settings.exclude),
        )
        report.excluded = scanned.excluded
        report.files_seen, report.bytes_seen = scanned.files, scanned.bytes
        if scanned.skipped_special:
            logger.info(
                "%s: skipped %d symlinks and special files", source, scanned.skipped_special
            )

        if fresh_table:
            adopted = queues.adopt_listing(
                conn, record.table, s3.list_latest(store.get(), record.bucket, folder.key_prefix)
            )
            report.already_in_bucket = adopted
            if not dry_run:
                records.mark_listed(conn, record)

        sizes = queues.build_queues(conn, record.table, record.bucket_ready)
        report.to_upload, report.bytes_to_upload = sizes.uploads, sizes.upload_bytes
        report.to_check, report.bytes_to_check = sizes.checks, sizes.check_bytes
        report.to_delete, report.bytes_to_delete = sizes.deletes, sizes.delete_bytes
        if sizes.deletes and not options.allow_mass_delete:
            refusal = _mass_delete_refusal(
                conn, settings, record.table, sizes.deletes, scanned.files
            )
            if refusal:
                run.add_problem(Problem(source, "delete", refusal), report)
                conn.exec_driver_sql("DELETE FROM temp.delete_queue WHERE in_bucket")
                report.to_delete = report.bytes_to_delete = 0
        logger.info(
            "%s: %d files on disk; %d to upload (%d new), %d to delete",
            source,
            scanned.files,
            sizes.uploads,
            sizes.new,
            report.to_delete,
        )
        if dry_run:
            return
        queues.apply_scan(conn, record.table)
        if report.to_upload == 0 and report.to_delete == 0:
            return
        for repaired in s3.prepare_bucket(
            store.get(), record.bucket, record.bucket_ready, store.warned
        ):
            run.add_problem(Problem(source, "bucket", repaired), report)
        if not record.bucket_ready:
            records.mark_bucket_ready(conn, record)
        progress.uploading(source, report.to_upload, report.bytes_to_upload)
        worker.upload_all(conn, store.get(), record, settings.workers, report, run, progress)
        worker.delete_all(conn, store.get(), record, report, run)
    except FolderError as exc:
        run.add_problem(Problem(source, "bucket", str(exc)), report)
        conn.rollback()
    except s3.S3_ERRORS as exc:
        if dry_run and online.unreachable(exc):
            # Every other folder would fail the same way: a plan without the
            # bucket's listing would be built on nothing.
            raise S3Unreachable(
                f"could not reach S3 at {online.endpoint_of(store.get())}: {s3.describe(exc)}; "
                "the dry run stops (it lists the buckets of folders it has not backed up "
                "yet). Check aws.endpoint_url, aws.region and the aws keys in config.json; "
                f"matricula-backup check-config --online --cache {settings.cache_dir} "
                "tests the connection"
            ) from None
        run.add_problem(
            Problem(source, "bucket", f"s3://{record.bucket}: {s3.describe(exc)}"), report
        )
        conn.rollback()
    except Exception as exc:  # a bug or a database error: the other folders still go on
        logger.exception("%s: unexpected error", source)
        run.add_problem(
            Problem(
                source,
                "run",
                f"unexpected error, traceback in the log: {type(exc).__name__}: {exc}",
            ),
            report,
        )
        conn.rollback()
    finally:
        report.finished_at = int(time.time())
        report.s3_requests = store.requests - requests_before
        logger.info("%s", folder_line(report, dry_run))


def _only(folders: list[BackupFolder], wanted: tuple[Path, ...]) -> list[BackupFolder]:
    known = {folder.path: folder for folder in folders}
    unknown = [str(path) for path in wanted if path not in known]
    if unknown:
        raise ConfigError(
            f"--folder {', '.join(unknown)}: not a backup folder of config.json "
            "(matricula-backup check-config lists them)"
        )
    return [known[path] for path in wanted]


def _mass_delete_refusal(
    conn: Connection, settings: Settings, table: str, deletes: int, files_on_disk: int
) -> str | None:
    """Why this many deletions look like an accident (an unmounted share), or None.

    Deleting from the bucket only hides files behind delete markers for 180
    days, but a folder that vanished from under us must not start that clock.
    """
    if files_on_disk == 0:
        return (
            f"folder is empty but {deletes} files of it are in the bucket; nothing is "
            "deleted. Check that it is mounted; if the files were removed on purpose, "
            "run once with --allow-mass-delete"
        )
    in_bucket = queues.in_bucket_count(conn, table)
    share = 100 * deletes / max(in_bucket, 1)
    if deletes > MASS_DELETE_MIN_FILES and share > settings.max_delete_percent:
        return (
            f"{deletes} of {in_bucket} files ({share:.0f}%) are gone from disk, more than "
            f"backup.max_delete_percent ({settings.max_delete_percent}%); nothing is deleted "
            "from the bucket. If they were removed on purpose, run once with "
            "--allow-mass-delete"
        )
    return None
