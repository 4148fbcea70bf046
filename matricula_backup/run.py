"""One backup run, stage by stage.

    config -> backup folders -> scan into SQLite -> queues -> S3 worker -> report

Each stage reads what the previous one wrote. The database is the only
hand-over between scan and worker, which is what makes a run resumable: the
next run scans again and finds in the files tables what S3 already confirmed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from sqlalchemy import Connection, Engine

from matricula_backup import fixity, forget, online, queues, scrub, worker
from matricula_backup.config import Settings
from matricula_backup.db import records
from matricula_backup.db.engine import open_state_db, open_state_db_for_dry_run
from matricula_backup.errors import ConfigError, FolderError, S3Unreachable
from matricula_backup.exclude import Excludes
from matricula_backup.folders import BackupFolder, backup_folders
from matricula_backup.model import RunOptions as RunOptions
from matricula_backup.output import folder_line, scrub_lines
from matricula_backup.progress import NoProgress, RunProgress
from matricula_backup.report import FolderReport, Problem, RunReport
from matricula_backup.s3 import buckets, client, objects
from matricula_backup.scan import Walk, scan_folder

logger = logging.getLogger(__name__)

# Below this many deletions in one folder the share is not checked (a folder of
# 3 files may lose one without anybody being asked).
MASS_DELETE_MIN_FILES = 10
DAY = 86400
# The same for changed files (mass change guard), and the window of the slow count.
MASS_CHANGE_MIN_FILES = 10
CHANGE_WINDOW_SECONDS = 7 * 24 * 3600
CHANGED_SHOWN = 5  # changed files named in the refusal


class _LazyStore:
    """The S3 client is built only when a folder has work: no work, no request."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store: client.Store | None = None
        self.warned: set[tuple[str, str]] = set()

    def get(self) -> client.Store:
        if self.store is None:
            self.store = client.connect(self.settings)
        return self.store

    @property
    def requests(self) -> int:
        return self.store.counter.total if self.store else 0


def run_backup(
    settings: Settings,
    options: RunOptions,
    progress: RunProgress | None = None,
    early: Walk | None = None,
) -> RunReport:
    """Back up every folder; problems are collected in the report, never raised per file.

    ``early``: the walk of the first folder, started before this module was loaded
    (``headstart.py``); its folder's scan takes it over, and it is ended if unused.
    """
    try:
        return _run_backup(settings, options, progress, early)
    finally:
        if early is not None:
            early.close()


def _run_backup(
    settings: Settings, options: RunOptions, progress: RunProgress | None, early: Walk | None
) -> RunReport:
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
                _run_folders(conn, settings, folders, store, report, options, progress, early)
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
    early: Walk | None,
) -> None:
    """Every folder in turn, inside a ``runs`` row (real runs) that records the outcome."""
    run_id = None
    if not options.dry_run:
        for dead in records.close_dead_runs(conn):
            report.add_problem(dead_run_problem(dead))
        run_id = records.start_run(conn, "reset" if options.reset else "backup", report.hostname)
        if options.reset:
            dropped = records.drop_files_tables(
                conn, [str(folder.path) for folder in folders] if options.only else None
            )
            logger.info("--reset: dropped %d files tables; rebuilding them", len(dropped))
    outcome = "failed"
    try:
        for folder in folders:
            started = early if early is not None and early.path == folder.path else None
            _backup_folder(conn, settings, folder, store, report, options, progress, started)
        if not options.only:  # --folder: the other folders are not looked at
            for gone in forget.gone_folders(conn, settings, folders):
                report.add_problem(forget.gone_problem(gone, settings.cache_dir))
        if settings.preservation.scrub_nightly and not options.dry_run and not options.only:
            _nightly_scrub(conn, settings, report)
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
    started: Walk | None,
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
                "nothing is uploaded or deleted for it this run (bucket "
                f"{record.bucket}, last successful backup "
                f"{forget.when(forget.last_backup_at(conn, source))}). "
                + forget.missing_hint(folder.path, settings.cache_dir),
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
        # Compared with the files table batch by batch during the walk, unless the
        # bucket's listing is still to be adopted into it.
        compare = None if fresh_table else queues.Compare(conn, record.table)
        scanned = scan_folder(
            conn,
            folder,
            lambda problem: run.add_problem(problem, report),
            Excludes(settings.exclude),
            compare,
            started,
        )
        report.excluded = scanned.excluded
        report.files_seen, report.bytes_seen = scanned.files, scanned.bytes
        if scanned.skipped_special:
            logger.info(
                "%s: skipped %d symlinks and special files", source, scanned.skipped_special
            )

        if fresh_table:
            adopted = queues.adopt_listing(
                conn,
                record.table,
                objects.list_latest(store.get(), record.bucket, folder.key_prefix),
            )
            report.already_in_bucket = adopted
            if not dry_run:
                records.mark_listed(conn, record)

        if not dry_run:  # a held file whose good bytes are back is held no longer
            fixity.release_restored(conn, source)
        held = fixity.holds(conn, source)
        if held:  # left out of the upload queue: said every run, never in silence
            run.add_warning(
                f"{source}: {len(held)} files held after a fixity failure are not uploaded "
                f"(e.g. {held[0].path}): restore their good copy or run matricula-backup scrub "
                f"--cache {settings.cache_dir} --accept PATH"
            )
        sizes = queues.build_queues(
            conn, record.table, record.bucket_ready, compare, ordered=not dry_run
        )
        lock = settings.object_lock
        renew_before = int(time.time()) + (lock.renew_days * DAY if lock else 0)
        if lock:
            report.to_extend = queues.retention_due_count(
                conn, record.table, renew_before, record.object_lock
            )
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
        if sizes.changed and not options.allow_mass_change:
            refusal = _mass_change_refusal(conn, settings, record.table, sizes.changed)
            if refusal:
                run.add_problem(Problem(source, "change", refusal), report)
                report.changes_held = sizes.changed
                report.to_upload, report.bytes_to_upload = queues.hold_changed(conn)
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
        if report.to_upload == 0 and report.to_delete == 0 and report.to_extend == 0:
            return
        bucket = buckets.prepare_bucket(
            store.get(), record.bucket, record.bucket_ready, store.warned, lock
        )
        for problem in bucket.problems:
            run.add_problem(Problem(source, "bucket", problem), report)
        for warning in bucket.warnings:
            run.add_warning(warning)
        if not record.bucket_ready:
            records.mark_bucket_ready(conn, record)
        if lock and bucket.locked != record.object_lock:
            records.mark_object_lock(conn, record.bucket, bucket.locked)
        locked = lock if bucket.locked else None
        progress.uploading(source, report.to_upload, report.bytes_to_upload)
        worker.upload_all(
            conn, store.get(), record, settings.workers, report, run, progress, locked
        )
        worker.delete_all(conn, store.get(), record, report, run)
        if locked:
            # Counted again: the uploads locked their versions, and versions without a
            # retention are due now that the bucket is known to have Object Lock.
            report.to_extend = queues.retention_due_count(conn, record.table, renew_before, True)
            worker.extend_retention(
                conn, store.get(), record, locked, renew_before, settings.workers, report, run
            )
        if not (options.allow_mass_change or options.allow_mass_delete):
            slow = _slow_change_warning(conn, settings, record.table, source, report)
            if slow:
                run.add_problem(Problem(source, "change", slow), report)
    except FolderError as exc:
        run.add_problem(Problem(source, "bucket", str(exc)), report)
        conn.rollback()
    except client.S3_ERRORS as exc:
        if dry_run and online.unreachable(exc):
            # Every other folder would fail the same way: a plan without the
            # bucket's listing would be built on nothing.
            raise S3Unreachable(
                f"could not reach S3 at {online.endpoint_of(store.get())}: {client.describe(exc)}; "
                "the dry run stops (it lists the buckets of folders it has not backed up "
                "yet). Check aws.endpoint_url, aws.region and the aws keys in config.json; "
                f"matricula-backup check-config --online --cache {settings.cache_dir} "
                "tests the connection"
            ) from None
        run.add_problem(
            Problem(source, "bucket", f"s3://{record.bucket}: {client.describe(exc)}"), report
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


def _nightly_scrub(conn: Connection, settings: Settings, report: RunReport) -> None:
    """preservation.scrub_nightly: the due share after the backup, within its time budget."""
    scrubbed = scrub.scrub(conn, settings, settings.preservation.scrub_nightly_minutes)
    for line in scrub_lines(scrubbed):
        logger.info("%s", line)
    for failure in scrubbed.failures:
        report.add_problem(Problem(failure.folder, "fixity", failure.message(), failure.full_path))
    for message in scrubbed.unreadable:
        report.add_problem(Problem("(scrub)", "fixity", message))


def dead_run_problem(dead: records.DeadRun) -> Problem:
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(dead.started_at))
    return Problem(
        "(earlier run)",
        "run",
        f"run #{dead.id} (started {started} on {dead.hostname}) did not finish: its process "
        "was killed (kill -9, out of memory, power cut) and could not report; it is recorded "
        "as killed. What S3 confirmed before is kept and this run went on from there",
    )


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


def _mass_change_refusal(
    conn: Connection, settings: Settings, table: str, changed: int
) -> str | None:
    """Why this many changed files look like ransomware (files encrypted in place), or None.

    Decided from size and mtime, before any byte is read: the changed files of
    the refused folder are never read or sent. A file only touched (same bytes)
    counts too, since only reading it would tell; letting it through with
    --allow-mass-change costs nothing, as its bytes are not uploaded again.
    """
    in_bucket = queues.in_bucket_count(conn, table)
    share = 100 * changed / max(in_bucket, 1)
    if changed <= MASS_CHANGE_MIN_FILES or share <= settings.max_change_percent:
        return None
    sample = ", ".join(_shorten(path) for path in queues.changed_sample(conn, CHANGED_SHOWN))
    return (
        f"{changed} of {in_bucket} backed-up files ({share:.0f}%) changed since the last run, "
        f"more than backup.max_change_percent ({settings.max_change_percent}%); none of them "
        "is uploaded this run (new files are). This may be ransomware (files encrypted in "
        "place): open a few of them. If the changes are genuine, run once with "
        f"--allow-mass-change. Changed, e.g.: {sample}"
    )


def _slow_change_warning(
    conn: Connection, settings: Settings, table: str, source: str, report: FolderReport
) -> str | None:
    """The files changed, or deleted, in the last 7 days passed the guard's share this run.

    Changes are measured against ``backup.max_change_percent``, deletions against
    ``backup.max_delete_percent``, of the files in the bucket before this run's
    deletions. A single run cannot cross alone (its own guards hold it back), so
    a crossing is a slow change. Said once per crossing: only by the run that takes
    a total from at or below its share to above it, not every night it stays above.
    """
    if report.changed_uploaded == 0 and report.deleted == 0:
        return None
    in_bucket = queues.in_bucket_count(conn, table) + report.deleted
    changed, deleted = records.changes_since(conn, source, int(time.time()) - CHANGE_WINDOW_SECONDS)

    def crossed(before: int, this_run: int, limit: int) -> bool:
        def over(count: int) -> bool:
            return count > MASS_CHANGE_MIN_FILES and 100 * count / max(in_bucket, 1) > limit

        return over(before + this_run) and not over(before)

    found = []
    if crossed(changed, report.changed_uploaded, settings.max_change_percent):
        total = changed + report.changed_uploaded
        found.append(
            f"{total} of {in_bucket} files ({100 * total / max(in_bucket, 1):.0f}%) got new "
            f"versions in the last 7 days ({report.changed_uploaded} by this run), more than "
            f"backup.max_change_percent ({settings.max_change_percent}%)"
        )
    if crossed(deleted, report.deleted, settings.max_delete_percent):
        total = deleted + report.deleted
        found.append(
            f"{total} of {in_bucket} files ({100 * total / max(in_bucket, 1):.0f}%) were deleted "
            f"in the last 7 days ({report.deleted} by this run), more than "
            f"backup.max_delete_percent ({settings.max_delete_percent}%)"
        )
    if not found:
        return None
    return (
        "; ".join(found) + ". A slow attack (files encrypted or removed a few each night) "
        "looks like this: check the recently changed files (matricula-backup history shows "
        "the runs). Told once, when the 7-day total passes the share"
    )


def _shorten(path: str, limit: int = 60) -> str:
    return path if len(path) <= limit else path[: limit - 1] + "…"
