"""Drain one folder's queues against S3 and record every confirmed result.

Uploads run in a bounded pool of threads sharing the run's S3 clients (one
boto3 client, and the CRT client for small files: s3/client.py, s3/crt.py); at most
``2 x workers`` files are in flight, so memory does not grow with the queue,
and at most ``workers`` requests, the parts of large files included (s3/parts.py).
Only this (main) thread touches the database: results are written in small
transactions, so a crash loses at most the uploads in flight; Ctrl-C and
SIGTERM are acted on between files (interrupt.py), never between an upload S3
confirmed and its record. Deletes go in DeleteObjects batches of up to 1,000
keys after the uploads.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from sqlalchemy import Connection

from matricula_backup import fixity, interrupt, queues
from matricula_backup.access import denied, read_hint
from matricula_backup.config import ObjectLock
from matricula_backup.db.records import FolderRecord
from matricula_backup.errors import ChecksumMismatch, FileChanged, Stopped
from matricula_backup.model import Uploaded, UploadItem
from matricula_backup.progress import RunProgress
from matricula_backup.report import FolderReport, Problem, RunReport
from matricula_backup.s3 import client, objects, upload

logger = logging.getLogger(__name__)

# Confirmed uploads are committed in small batches: a kill -9 loses at most
# these plus the uploads in flight (WAL commits are cheap: no fsync each).
COMMIT_EVERY_RESULTS = 16
COMMIT_EVERY_SECONDS = 1.0
DELETE_BATCH = 1000


class _Recorder:
    """Collects upload results and writes them in small transactions."""

    def __init__(self, conn: Connection, table: str, folder: str = "") -> None:
        self.conn = conn
        self.table = table
        self.folder = folder  # for the fixity log
        self.done: list[Uploaded] = []
        self.failed: list[tuple[str, str]] = []
        self.last_commit = time.monotonic()

    def add(self, done: Uploaded | None = None, failed: tuple[str, str] | None = None) -> None:
        if done is not None:
            self.done.append(done)
        if failed is not None:
            self.failed.append(failed)
        pending = len(self.done) + len(self.failed)
        if pending >= COMMIT_EVERY_RESULTS or (
            time.monotonic() - self.last_commit > COMMIT_EVERY_SECONDS
        ):
            self.flush()

    def flush(self) -> None:
        queues.record_uploaded(self.conn, self.table, self.done)
        fixity.record_uploads(self.conn, self.folder, self.done)
        queues.record_failed(self.conn, self.table, self.failed)
        self.conn.commit()
        self.done, self.failed = [], []
        self.last_commit = time.monotonic()


def upload_all(
    conn: Connection,
    store: client.Store,
    record: FolderRecord,
    workers: int,
    report: FolderReport,
    run: RunReport,
    progress: RunProgress,
    lock: ObjectLock | None = None,
) -> None:
    """Upload everything in ``upload_queue`` of this folder (locked if ``lock``)."""
    folder = record.folder
    recorder = _Recorder(conn, record.table, str(folder.path))
    in_flight: dict[Future[Uploaded], UploadItem] = {}
    stopping = threading.Event()

    def _settle(future: Future[Uploaded], item: UploadItem) -> None:
        path = os.path.join(folder.path, item.path)
        try:
            done = future.result()
        except FileNotFoundError:
            logger.info("vanished before upload (deleted from the bucket next run): %s", path)
            return
        except Stopped as exc:
            logger.info("%s", exc)
            return
        except FileChanged as exc:
            message = f"not uploaded: {exc}; it is tried again next run"
            run.add_problem(Problem(str(folder.path), "upload", message, path), report)
            recorder.add(failed=(item.path, message))
            return
        except Exception as exc:  # one bad file never stops the others
            if isinstance(exc, OSError):
                message = f"cannot read: {exc.strerror or exc}"
                if denied(exc):
                    message += f" ({read_hint()})"
            elif isinstance(exc, (*client.S3_ERRORS, ChecksumMismatch)):
                message = client.describe(exc)
            else:  # a bug: keep its traceback in the log
                logger.exception("unexpected error while uploading %s", path)
                message = f"unexpected error {type(exc).__name__}: {exc}"
            message += "; it is tried again next run"
            run.add_problem(Problem(str(folder.path), "upload", message, path), report)
            recorder.add(failed=(item.path, message))
            return
        if done.sent:
            report.uploaded += 1
            report.bytes_uploaded += done.size
            if item.changed:
                report.changed_uploaded += 1
            logger.debug("uploaded %s (%d bytes, version %s)", path, done.size, done.version_id)
        elif item.check_bucket:
            report.already_in_bucket += 1
            logger.debug("not uploaded, the bucket's latest version holds its bytes: %s", path)
        else:
            report.same_content += 1
            logger.debug("not uploaded, same bytes as in the bucket (touched only): %s", path)
        recorder.add(done=done)

    def settle(future: Future[Uploaded], item: UploadItem) -> None:
        errors_before = report.errors
        _settle(future, item)
        progress.advance(item.size, error=report.errors > errors_before)

    # Finished uploads come out of a queue in the order they finish: no scan
    # of every future in flight for each file (concurrent.futures.wait did).
    finished: queue.SimpleQueue[Future[Uploaded]] = queue.SimpleQueue()

    def settle_finished(block_until_below: int) -> None:
        while len(in_flight) >= block_until_below and in_flight:
            future = finished.get()
            settle(future, in_flight.pop(future))

    def should_stop() -> bool:  # polled by multipart uploads between parts
        return stopping.is_set() or interrupt.requested()

    # A signal only sets a flag in here (see interrupt.py): the loop stops at a
    # point where every submitted upload is in ``in_flight`` and gets recorded.
    with interrupt.deferred(), ThreadPoolExecutor(workers, "upload") as pool:
        try:
            for batch in queues.upload_batches(conn, large_from=store.multipart_threshold):
                for item in batch:
                    settle_finished(block_until_below=2 * workers)
                    interrupt.check()
                    path = os.path.join(folder.path, item.path)
                    logger.debug("upload (%s): %s", item.reason, path)
                    key = folder.key_prefix + item.path
                    if item.check_bucket:
                        future = pool.submit(
                            upload.upload_unless_in_bucket,
                            store,
                            record.bucket,
                            key,
                            path,
                            item.path,
                            should_stop,
                            lock,
                        )
                    else:
                        future = pool.submit(
                            upload.upload,
                            store,
                            record.bucket,
                            key,
                            path,
                            item.path,
                            should_stop,
                            item.in_bucket_sha256,
                            lock,
                        )
                    in_flight[future] = item
                    future.add_done_callback(finished.put)
            settle_finished(block_until_below=1)
        except BaseException:
            stopping.set()
            if in_flight:
                logger.info("stopping: waiting for %d uploads in flight", len(in_flight))
            raise
        finally:
            # Interrupted or not: start nothing new, let the uploads already
            # running finish, and record what S3 confirmed before leaving (an
            # unrecorded upload would be paid for again next run).
            for future in in_flight:
                future.cancel()
            for future, item in in_flight.items():
                if not future.cancelled():
                    settle(future, item)
            recorder.flush()


def delete_all(
    conn: Connection,
    store: client.Store,
    record: FolderRecord,
    report: FolderReport,
    run: RunReport,
) -> None:
    """Delete from the bucket what is in ``delete_queue`` (delete markers)."""
    with interrupt.deferred():
        for paths in queues.delete_batches(conn, DELETE_BATCH):
            interrupt.check()
            _delete_batch(conn, store, record, paths, report, run)


def _delete_batch(
    conn: Connection,
    store: client.Store,
    record: FolderRecord,
    paths: list[str],
    report: FolderReport,
    run: RunReport,
) -> None:
    """One DeleteObjects request; what S3 confirmed is committed before the next."""
    folder = record.folder
    keys = {folder.key_prefix + path: path for path in paths}
    try:
        errors = objects.delete(store, record.bucket, list(keys))
    except client.S3_ERRORS as exc:
        errors = {key: client.describe(exc) for key in keys}
    failed = [(keys[key], message) for key, message in errors.items() if key in keys]
    deleted = [path for key, path in keys.items() if key not in errors]
    queues.record_deleted(conn, record.table, deleted)
    queues.record_delete_failed(conn, record.table, failed)
    conn.commit()
    report.deleted += len(deleted)
    for path, message in failed:
        run.add_problem(
            Problem(
                str(folder.path),
                "delete",
                f"{message}; tried again next run",
                os.path.join(folder.path, path),
            ),
            report,
        )
    for path in deleted:
        logger.debug("deleted from bucket (file gone): %s", os.path.join(folder.path, path))


def extend_retention(
    conn: Connection,
    store: client.Store,
    record: FolderRecord,
    lock: ObjectLock,
    before: int,
    workers: int,
    report: FolderReport,
    run: RunReport,
) -> None:
    """Lock again, for ``lock.days`` from now, the current versions whose lock ends before
    ``before``: a file that never changes stays protected for as long as it is backed up.
    Versions with no retention recorded are locked too (the bucket has Object Lock on).

    One PutObjectRetention per version (S3 has no batch form short of S3 Batch
    Operations), sent by ``workers`` threads a batch of rows at a time; each
    batch is recorded before the next. A failure is reported and tried next run.
    """
    folder = record.folder
    with interrupt.deferred(), ThreadPoolExecutor(workers, "retention") as pool:
        for batch in queues.retention_due_batches(conn, record.table, before, True, DELETE_BATCH):
            interrupt.check()
            retention = upload.Retention.from_now(lock)

            def extend(row: tuple[str, str], retention: upload.Retention = retention) -> str | None:
                try:
                    upload.extend_retention(
                        store, record.bucket, folder.key_prefix + row[0], row[1], retention
                    )
                except client.S3_ERRORS as exc:
                    return client.describe(exc)
                return None

            results = list(pool.map(extend, batch))
            done = [
                (path, retention.epoch)
                for (path, _), error in zip(batch, results, strict=True)
                if not error
            ]
            queues.record_retention(conn, record.table, done)
            conn.commit()
            report.extended += len(done)
            for (path, _), error in zip(batch, results, strict=True):
                if error:
                    run.add_problem(
                        Problem(
                            str(folder.path),
                            "retention",
                            f"Object Lock not extended: {error}; tried again next run",
                            os.path.join(folder.path, path),
                        ),
                        report,
                    )
