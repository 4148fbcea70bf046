"""drill: prove that a Deep Archive restore works, on a random sample, end to end.

    pick N current objects (spread over the folders) -> cost -> RestoreObject
      ... later invocations: readable? -> download to a scratch directory -> SHA-256
      against state.db and the local file -> scratch copy deleted -> one verdict

A drill spans invocations (a Bulk restore takes up to 48 hours): the drill and
each of its objects are rows of ``state.db`` (``drills``, ``drill_objects``),
committed object by object, so a killed invocation resumes where it stopped
and no restore is requested twice. Each object that is checked writes a
``drill`` event to the fixity log. Nothing printed here.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from matricula_backup import fixity
from matricula_backup.config import Settings
from matricula_backup.db.engine import open_state_db
from matricula_backup.db.schema import BACKED_UP
from matricula_backup.errors import ChecksumMismatch, FatalError
from matricula_backup.s3 import client, objects

logger = logging.getLogger(__name__)

SCRATCH_DIR = "drill-scratch"  # below the cache directory; emptied by every invocation
# The restored copies stay readable this long: a daily invocation reads them even if it
# misses a day; an expired one is requested again.
RESTORE_DAYS = 3


@dataclass(frozen=True)
class DrillObject:
    folder: str
    path: str
    bucket: str
    version_id: str
    size: int
    result: str | None  # None: not checked yet
    detail: str | None


@dataclass
class DrillReport:
    drill_id: int
    started_at: int
    tier: str
    new: bool  # this invocation started the drill
    objects: list[DrillObject] = field(default_factory=list)
    cost: float = 0.0
    requested: int = 0  # restores requested by this invocation
    waiting: int = 0  # requested, not readable yet
    finished: bool = False
    passed: bool = False
    errors: list[str] = field(default_factory=list)  # S3 errors: no verdict, tried again

    @property
    def failed(self) -> list[DrillObject]:
        return [o for o in self.objects if o.result == "failed"]

    @property
    def checked(self) -> int:
        return sum(1 for o in self.objects if o.result is not None)


class NothingToDrill(FatalError):
    """No folder has a confirmed upload yet."""


def start_or_resume(
    settings: Settings, sample: int, tier: str, every_days: int | None = None
) -> DrillReport | None:
    """The running drill, or a new one of ``sample`` random current objects (nothing sent).

    ``every_days`` (a daily timer): a new drill only if the last one started at least
    that many days ago; None when none is due.
    """
    engine = open_state_db(settings.cache_dir)
    try:
        with engine.connect() as conn:
            running = conn.exec_driver_sql(
                "SELECT id, started_at, tier FROM drills WHERE outcome = 'running' "
                "ORDER BY id LIMIT 1"
            ).first()
            last = conn.exec_driver_sql("SELECT max(started_at) FROM drills").scalar()
            if running is not None:
                report = DrillReport(running[0], running[1], running[2], new=False)
            elif every_days is not None and last and time.time() - last < every_days * 86400:
                return None
            else:
                report = _start(conn, sample, tier)
            report.objects = _objects(conn, report.drill_id)
            pending = [o for o in report.objects if o.result is None]
            size = sum(o.size for o in pending)
            prices = settings.prices
            report.cost = (
                prices.restore_cost(report.tier, len(pending), size)
                + prices.download_cost(len(pending), size)
                + prices.requests_cost(len(pending))  # one version listing per object
            )
            return report
    finally:
        engine.dispose()


def _start(conn: Connection, sample: int, tier: str) -> DrillReport:
    folders = conn.exec_driver_sql(
        "SELECT path, bucket, table_name FROM folders WHERE bucket_ready_at IS NOT NULL "
        "ORDER BY path"
    ).all()
    tables = {
        row[0] for row in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'")
    }
    per_folder: list[list[tuple[Any, ...]]] = []
    for path, bucket, table in folders:
        if table not in tables:
            continue
        rows = conn.exec_driver_sql(
            f"""SELECT ?, path, ?, version_id, size, sha256, mtime_ns FROM "{table}"
            WHERE state = '{BACKED_UP}' AND version_id IS NOT NULL AND uploaded_at IS NOT NULL
            ORDER BY random() LIMIT ?""",
            (path, bucket, sample),
        ).all()
        if rows:
            per_folder.append([tuple(row) for row in rows])
    picked: list[tuple[Any, ...]] = []
    while len(picked) < sample and any(per_folder):  # round robin: spread over the folders
        for candidates in per_folder:
            if candidates and len(picked) < sample:
                picked.append(candidates.pop(0))
    if not picked:
        raise NothingToDrill("no backed-up file to drill: run a backup first")
    now = int(time.time())
    drill_id = conn.exec_driver_sql(
        "INSERT INTO drills (started_at, tier, outcome) VALUES (?, ?, 'running')", (now, tier)
    ).lastrowid
    assert drill_id is not None
    conn.exec_driver_sql(
        "INSERT INTO drill_objects (drill_id, folder, path, bucket, version_id, size, sha256, "
        "mtime_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(drill_id, *row) for row in picked],
    )
    conn.commit()
    logger.info("drill #%d started: %d objects, %s tier", drill_id, len(picked), tier)
    return DrillReport(drill_id, now, tier, new=True)


def _objects(conn: Connection, drill_id: int) -> list[DrillObject]:
    rows = conn.exec_driver_sql(
        "SELECT folder, path, bucket, version_id, size, result, detail FROM drill_objects "
        "WHERE drill_id = ? ORDER BY folder, path",
        (drill_id,),
    ).all()
    return [DrillObject(*row) for row in rows]


def advance(settings: Settings, report: DrillReport) -> DrillReport:
    """Request what is not requested, check what became readable, finish when all are."""
    store = client.connect(settings)
    scratch = settings.cache_dir / SCRATCH_DIR
    shutil.rmtree(scratch, ignore_errors=True)  # left by a killed invocation
    engine = open_state_db(settings.cache_dir)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT folder, path, bucket, version_id, size, sha256, mtime_ns, requested_at "
                "FROM drill_objects WHERE drill_id = ? AND result IS NULL ORDER BY folder, path",
                (report.drill_id,),
            ).all()
            for row in rows:
                _step(conn, store, scratch, report, *row)
                conn.commit()
            report.objects = _objects(conn, report.drill_id)
            if all(o.result is not None for o in report.objects):
                report.finished = True
                report.passed = not report.failed
                conn.exec_driver_sql(
                    "UPDATE drills SET outcome = ?, finished_at = ? WHERE id = ?",
                    ("passed" if report.passed else "failed", int(time.time()), report.drill_id),
                )
                conn.commit()
    finally:
        engine.dispose()
        shutil.rmtree(scratch, ignore_errors=True)
    return report


def _step(
    conn: Connection,
    store: client.Store,
    scratch: Path,
    report: DrillReport,
    folder: str,
    path: str,
    bucket: str,
    version_id: str,
    size: int,
    sha256: bytes | None,
    mtime_ns: int,
    requested_at: int | None,
) -> None:
    key = folder.lstrip("/") + "/" + path
    try:
        if requested_at is None:
            latest = _latest(store, bucket, key)
            if latest != version_id:
                now = "a delete marker or nothing" if latest is None else f"version {latest}"
                _done(
                    conn,
                    report,
                    folder,
                    path,
                    version_id,
                    False,
                    f"the bucket's latest version of s3://{bucket}/{key} is {now}, not version "
                    f"{version_id} that state.db recorded at upload: it was replaced or deleted "
                    "outside this tool",
                )
                return
        state = objects.head(store, bucket, key, version_id)
        if state.archived and state.restore != "done":
            if state.restore == "":  # not asked yet, or readable no more (expired)
                objects.request_restore(store, bucket, key, version_id, report.tier, RESTORE_DAYS)
                report.requested += 1
            report.waiting += 1
            if requested_at is None:
                conn.exec_driver_sql(
                    "UPDATE drill_objects SET requested_at = ? WHERE drill_id = ? AND folder = ? "
                    "AND path = ?",
                    (int(time.time()), report.drill_id, folder, path),
                )
            return
        ok, detail = _compare(
            store, scratch, folder, path, bucket, key, version_id, size, sha256, mtime_ns, state
        )
        _done(conn, report, folder, path, version_id, ok, detail)
    except client.S3_ERRORS as exc:
        # Not a verdict on the bytes: the next invocation tries again.
        message = f"s3://{bucket}/{key}: {client.describe(exc)}; tried again by the next drill"
        if client.error_code(exc) in ("AccessDenied", "403"):
            message += (
                " (the drill needs what the restore role allows: s3:RestoreObject and "
                "s3:GetObjectVersion; matricula-backup iam-policy --role restore prints it)"
            )
        logger.error("drill: %s", message)
        report.errors.append(message)


def _latest(store: client.Store, bucket: str, key: str) -> str | None:
    """The version id of the key's latest version (None: a delete marker or no object)."""
    for page in objects.list_versions(store, bucket, key):
        for version in page:
            if version.key == key and version.is_latest:
                return None if version.is_marker else version.version_id
    return None


def _compare(
    store: client.Store,
    scratch: Path,
    folder: str,
    path: str,
    bucket: str,
    key: str,
    version_id: str,
    size: int,
    sha256: bytes | None,
    mtime_ns: int,
    state: objects.ObjectState,
) -> tuple[bool, str]:
    """Download the version to the scratch directory and compare its bytes."""
    scratch.mkdir(mode=0o700, exist_ok=True)
    copy = scratch / "object"
    digest = hashlib.sha256()
    try:
        fetched = objects.download(store, bucket, key, version_id, state, size)
        with open(copy, "wb") as output:
            for chunk in fetched.chunks():
                digest.update(chunk)
                output.write(chunk)
    except ChecksumMismatch as exc:
        return False, f"the restored bytes are wrong: {exc}"
    finally:
        copy.unlink(missing_ok=True)
    got = digest.digest()
    if sha256 is not None and got != sha256:
        return False, (
            f"the restored bytes have SHA-256 {got.hex()}, state.db recorded "
            f"{sha256.hex()} at upload"
        )
    local = Path(folder) / path
    if fixity.stat_key(local) == (size, mtime_ns):
        try:
            if fixity.sha256_of(local) != got:
                return False, (
                    f"the restored bytes differ from the local file {local}, whose size and mtime "
                    "are those of the upload (run matricula-backup scrub)"
                )
        except OSError as exc:
            logger.info("drill: local file not read (%s): %s", exc, local)
        return True, f"sha256 {got.hex()}, identical to state.db and to the local file"
    return True, f"sha256 {got.hex()}, identical to state.db (the local file changed since)"


def _done(
    conn: Connection,
    report: DrillReport,
    folder: str,
    path: str,
    version_id: str,
    ok: bool,
    detail: str,
) -> None:
    result = "ok" if ok else "failed"
    conn.exec_driver_sql(
        "UPDATE drill_objects SET checked_at = ?, result = ?, detail = ? WHERE drill_id = ? "
        "AND folder = ? AND path = ?",
        (int(time.time()), result, detail, report.drill_id, folder, path),
    )
    fixity.record_events(
        conn, [fixity.Event(folder, path, fixity.DRILL, "bucket", result, version_id, detail)]
    )
    (logger.info if ok else logger.error)("drill: %s/%s: %s", folder, path, detail)


def card_items(report: DrillReport) -> list[tuple[str, list[tuple[str, str]], str | None]]:
    return [
        (f"{o.folder}/{o.path}", [("Bucket", f"s3://{o.bucket}"), ("Why", o.detail or "")], None)
        for o in report.failed
    ]
