"""verify: does each bucket hold what state.db says it holds?

One listing per bucket (not a request per object) goes into SQLite; set
differences against the folder's files table give the findings:

- missing: backed up according to state.db, not (or no longer) in the bucket.
  Re-queued: the next backup run uploads it again.
- stray: in the bucket, unknown to state.db (``--reset`` adopts such objects
  and deletes those whose files are gone); and any object outside the
  folder's prefix (the listing covers the whole bucket).
- size / version / storage class: the bucket's latest version differs.
- bucket settings: versioning not enabled, lifecycle rules not ours or a rule
  that can destroy data, a bucket policy that lets others in, Object Lock
  missing or weaker than ``backup.object_lock`` (tamper.py).
- ``--deep``: the SHA-256 in each object's metadata (HEAD) against the one
  recorded at upload; rows adopted without a checksum get it from there.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from matricula_backup import fixity, tamper
from matricula_backup.config import ObjectLock, Settings
from matricula_backup.db import records
from matricula_backup.db.engine import open_state_db
from matricula_backup.db.schema import BACKED_UP, PENDING
from matricula_backup.s3 import buckets, client, objects, upload

logger = logging.getLogger(__name__)

HEAD_BATCH = 500


@dataclass(frozen=True)
class Finding:
    folder: str
    bucket: str
    kind: str  # missing, stray, size, version, storage_class, checksum, versioning, lifecycle
    detail: str
    path: str | None = None

    def __str__(self) -> str:
        where = f"{self.folder}/{self.path}" if self.path else f"s3://{self.bucket}"
        return f"{self.kind}: {where}: {self.detail}"


@dataclass
class FolderCheck:
    folder: str
    bucket: str
    rows: int = 0
    objects: int = 0
    checked_checksums: int = 0
    requeued: int = 0


@dataclass
class VerifyReport:
    folders: list[FolderCheck] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


def run_verify(settings: Settings, deep: bool) -> VerifyReport:
    report = VerifyReport()
    store = client.connect(settings)
    engine = open_state_db(settings.cache_dir)
    try:
        with engine.connect() as conn:
            folders = conn.exec_driver_sql(
                "SELECT path, bucket, table_name FROM folders WHERE bucket_ready_at IS NOT NULL "
                "ORDER BY path"
            ).all()
            for path, bucket, table in folders:
                check = FolderCheck(path, bucket)
                report.folders.append(check)
                try:
                    _verify_folder(
                        conn, store, check, table, deep, settings.workers, report, settings
                    )
                except client.S3_ERRORS as exc:
                    report.findings.append(Finding(path, bucket, "bucket", client.describe(exc)))
                    conn.rollback()
    finally:
        engine.dispose()
    return report


def _verify_folder(
    conn: Connection,
    store: client.Store,
    check: FolderCheck,
    table: str,
    deep: bool,
    workers: int,
    report: VerifyReport,
    settings: Settings,
) -> None:
    bucket, folder = check.bucket, check.folder
    lock = settings.object_lock
    found = report.findings.append
    prefix = folder.lstrip("/") + "/"
    versioning = buckets.versioning_status(store, bucket)
    if versioning is None:
        found(
            Finding(
                folder,
                bucket,
                "bucket",
                "the bucket does not exist; every file of this folder is queued for upload",
            )
        )
    else:
        if versioning != "Enabled":
            found(
                Finding(
                    folder,
                    bucket,
                    "versioning",
                    f"versioning is {versioning or 'off'}, "
                    "not Enabled (the next backup run with work enables it)",
                )
            )
        for kind, problem in _tampering(conn, store, bucket, lock):
            found(Finding(folder, bucket, kind, problem))

    conn.exec_driver_sql("DROP TABLE IF EXISTS temp.listed")
    conn.exec_driver_sql(
        "CREATE TEMP TABLE listed (path TEXT PRIMARY KEY, size INTEGER, storage_class TEXT, "
        "version_id TEXT) WITHOUT ROWID"
    )
    outside = 0
    if versioning is not None:
        # The whole bucket, not only the folder's prefix: an object written elsewhere
        # in it (by hand, by stolen keys) is a finding too, in the same one listing.
        for page in objects.list_versions(store, bucket, ""):
            latest = [v for v in page if v.is_latest and not v.is_marker]
            rows = [
                (v.key[len(prefix) :], v.size, v.storage_class, v.version_id)
                for v in latest
                if v.key.startswith(prefix)
            ]
            if rows:
                conn.exec_driver_sql("INSERT INTO temp.listed VALUES (?, ?, ?, ?)", rows)
            for v in latest:
                if not v.key.startswith(prefix):
                    outside += 1
                    found(
                        Finding(
                            folder,
                            bucket,
                            "stray",
                            f"object {_shown(v.key)} lies outside this folder's prefix "
                            f"{_shown(prefix)}: this tool never writes there (look at it; "
                            "a backup run neither uses nor deletes it)",
                        )
                    )
    check.rows = int(conn.exec_driver_sql(f'SELECT count(*) FROM "{table}"').scalar_one())
    check.objects = outside + int(
        conn.exec_driver_sql("SELECT count(*) FROM temp.listed").scalar_one()
    )

    for path, size, listed_size, listed_version, version, storage_class in conn.exec_driver_sql(
        f"""SELECT f.path, f.size, l.size, l.version_id, f.version_id, l.storage_class
        FROM "{table}" AS f LEFT JOIN temp.listed AS l ON l.path = f.path
        WHERE f.state = '{BACKED_UP}' AND f.uploaded_at IS NOT NULL
          AND (l.path IS NULL OR l.size != f.size OR l.storage_class != '{upload.STORAGE_CLASS}'
               OR (f.version_id IS NOT NULL AND l.version_id != f.version_id))"""
    ).all():
        if listed_size is None:
            found(
                Finding(
                    folder,
                    bucket,
                    "missing",
                    "recorded as backed up, not in the bucket; queued for upload",
                    path,
                )
            )
        elif listed_size != size:
            found(
                Finding(
                    folder,
                    bucket,
                    "size",
                    f"{listed_size} bytes in the bucket, {size} recorded; queued for upload",
                    path,
                )
            )
        elif version and listed_version != version:
            found(
                Finding(
                    folder,
                    bucket,
                    "version",
                    f"the latest version is {listed_version}, not {version} uploaded by this tool",
                    path,
                )
            )
        if storage_class != upload.STORAGE_CLASS and listed_size is not None:
            found(Finding(folder, bucket, "storage_class", f"stored as {storage_class}", path))
    # Re-queue what the bucket lacks or holds in another size: the next run uploads it.
    check.requeued = conn.exec_driver_sql(
        f"""UPDATE "{table}" SET state = '{PENDING}', uploaded_at = NULL, version_id = NULL,
            error = 'verify: not in the bucket as recorded'
        WHERE state = '{BACKED_UP}' AND uploaded_at IS NOT NULL AND path NOT IN (
            SELECT l.path FROM temp.listed AS l JOIN "{table}" AS f USING (path)
            WHERE l.size = f.size)"""
    ).rowcount
    conn.commit()
    for (path,) in conn.exec_driver_sql(
        f"""SELECT path FROM temp.listed AS l
        WHERE NOT EXISTS (SELECT 1 FROM "{table}" AS f WHERE f.path = l.path) ORDER BY path"""
    ).all():
        found(
            Finding(
                folder,
                bucket,
                "stray",
                "in the bucket, unknown to state.db (run a backup "
                "with --reset to adopt it, or delete it if its file is gone)",
                _shown(path),
            )
        )
    if deep:
        _check_checksums(conn, store, check, table, prefix, workers, found)


def _tampering(
    conn: Connection, store: client.Store, bucket: str, lock: ObjectLock | None
) -> list[tuple[str, str]]:
    """(kind, detail) of every bucket setting that lets history be destroyed (tamper.py).

    Whether the bucket has Object Lock is recorded: once it has, the next run
    locks the versions that have no retention yet.
    """
    found = [("lifecycle", text) for text in buckets.check_lifecycle(store.client, bucket, False)]
    found += [("policy", text) for text in buckets.check_policy(store, bucket)]
    if lock is not None:
        configuration = buckets.object_lock_configuration(store, bucket)
        enabled = configuration is not None and configuration.get("ObjectLockEnabled") == "Enabled"
        records.mark_object_lock(conn, bucket, enabled)
        if not enabled:
            found.append(
                (
                    "object_lock",
                    "no Object Lock although backup.object_lock is set; to enable it: "
                    + buckets.enable_lock_command(bucket, lock),
                )
            )
        else:
            found += [("object_lock", text) for text in tamper.lock_problems(configuration, lock)]
    return found


def _check_checksums(
    conn: Connection,
    store: client.Store,
    check: FolderCheck,
    table: str,
    prefix: str,
    workers: int,
    found: Any,
) -> None:
    """HEAD every backed-up object version and compare its sha256 metadata."""
    last = ""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
        while True:
            rows = conn.exec_driver_sql(
                f"""SELECT path, version_id,
                       CASE WHEN sha256 IS NOT NULL THEN lower(hex(sha256)) END
                FROM "{table}"
                WHERE state = '{BACKED_UP}' AND version_id IS NOT NULL AND path > ?
                ORDER BY path LIMIT ?""",
                (last, HEAD_BATCH),
            ).all()
            if not rows:
                return
            last = rows[-1][0]
            states = list(
                pool.map(lambda row: _head(store, check.bucket, prefix + row[0], row[1]), rows)
            )
            events = []
            for (path, version, recorded), state in zip(rows, states, strict=True):
                check.checked_checksums += 1
                events.append(_event(check.folder, path, version, recorded, state))
                if isinstance(state, str):
                    found(Finding(check.folder, check.bucket, "checksum", state, path))
                elif state.sha256 is None:
                    found(
                        Finding(
                            check.folder,
                            check.bucket,
                            "checksum",
                            "the object has no sha256 metadata",
                            path,
                        )
                    )
                elif recorded is None:
                    conn.exec_driver_sql(
                        f'UPDATE "{table}" SET sha256 = ? WHERE path = ?',
                        (bytes.fromhex(state.sha256), path),
                    )
                elif recorded != state.sha256:
                    found(
                        Finding(
                            check.folder,
                            check.bucket,
                            "checksum",
                            f"metadata sha256 {state.sha256} differs from {recorded} "
                            "recorded at upload",
                            path,
                        )
                    )
            fixity.record_events(conn, events)
            conn.commit()


def _event(
    folder: str, path: str, version: str, recorded: str | None, state: objects.ObjectState | str
) -> fixity.Event:
    """The fixity log's line for one cloud check (the bucket's copy, by its metadata)."""
    if isinstance(state, str):
        return fixity.Event(folder, path, fixity.CLOUD, "bucket", "failed", version, state)
    if state.sha256 is None:
        detail, ok = "the object has no sha256 metadata", False
    elif recorded is None:
        detail, ok = f"sha256 {state.sha256} (recorded now: none was)", True
    else:
        ok = recorded == state.sha256
        detail = f"sha256 {state.sha256}" + ("" if ok else f", recorded {recorded}")
    result = "ok" if ok else "failed"
    return fixity.Event(folder, path, fixity.CLOUD, "bucket", result, version, detail)


def _head(store: client.Store, bucket: str, key: str, version_id: str) -> objects.ObjectState | str:
    try:
        return objects.head(store, bucket, key, version_id)
    except client.S3_ERRORS as exc:
        return client.describe(exc)


def _shown(key: str) -> str:
    """A key from the bucket as it may be printed: control characters and lone
    surrogates escaped (a key is whatever its writer chose)."""
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape", "backslashreplace").decode()
        for char in key
    )
