"""scrub: re-read the image server's files and compare them with the SHA-256 of their upload.

    files tables (what S3 confirmed) + scrub_checks -> the due share, oldest check first
        -> read each file at preservation.scrub_rate -> same SHA-256? logged : held

Only files whose size and mtime are those of their confirmed upload are read:
a file with another size or mtime is a change, and the backup run deals with
it. A file is due when no scrub has read it since its upload, or when its
last check is older than ``preservation.scrub_days``. A mismatch is a fixity
failure: the file is held (fixity.py) and reported with the command that
brings the good copy back. No S3 request, nothing printed.
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from matricula_backup import fixity
from matricula_backup.access import denied, read_hint
from matricula_backup.config import Settings
from matricula_backup.db.engine import open_state_db
from matricula_backup.db.schema import BACKED_UP
from matricula_backup.errors import ConfigError
from matricula_backup.throttle import Throttle

logger = logging.getLogger(__name__)

DAY = 86400
PAGE = 500
COMMIT_EVERY_SECONDS = 1.0
RESTORE_DIR = "fixity-restore"  # below the cache directory: where the good copy is restored to


@dataclass(frozen=True)
class Failure:
    """A file whose bytes differ from those of its upload (size and mtime unchanged)."""

    folder: str
    path: str  # relative to the folder
    bucket: str
    version_id: str | None  # the good copy in the bucket
    verified_at: int | None  # when its bytes were last proven good (upload or scrub)
    good_sha256: str
    found_sha256: str
    restore_command: str

    @property
    def full_path(self) -> str:
        return os.path.join(self.folder, self.path)

    def message(self) -> str:
        when = (
            time.strftime("%Y-%m-%d %H:%M", time.localtime(self.verified_at))
            if self.verified_at
            else "never"
        )
        version = self.version_id or "(not recorded)"
        return (
            f"fixity failure: {self.full_path}: its bytes changed although size and mtime did "
            f"not (SHA-256 {self.found_sha256}, uploaded as {self.good_sha256}); last verified "
            f"{when}; the good copy is version {version} in s3://{self.bucket}. The file is held: "
            "no run uploads it until the good copy is back or `scrub --accept` says the new "
            f"bytes are right. Restore the good copy: {self.restore_command}"
        )


@dataclass
class ScrubReport:
    due: int = 0  # files due when the scrub started
    checked: int = 0
    bytes_read: int = 0
    skipped: int = 0  # changed or gone since their upload: the backup run's business
    left: int = 0  # due but not read (time budget)
    failures: list[Failure] = field(default_factory=list)
    released: list[str] = field(default_factory=list)  # held files found good again
    held: int = 0  # files still held after this scrub
    seconds: float = 0.0
    unreadable: list[str] = field(default_factory=list)  # messages


def restore_commands(cache_dir: Path, full_path: str) -> str:
    """The commands that bring the latest (good) version back over the damaged file.

    ``restore`` keeps a local file of the same size and mtime as it is, so the
    good copy goes to a directory of its own first and is then copied over.
    """
    target = cache_dir / RESTORE_DIR
    restored = str(target) + full_path
    return (
        f"matricula-backup restore --cache {shlex.quote(str(cache_dir))} --tier standard "
        f"--to {shlex.quote(str(target))} {shlex.quote(full_path)} (again until it says "
        f"downloaded: S3 needs up to 12 hours), then cp -p {shlex.quote(restored)} "
        f"{shlex.quote(full_path)}"
    )


def run_scrub(settings: Settings, max_minutes: float | None) -> ScrubReport:
    engine = open_state_db(settings.cache_dir)
    try:
        with engine.connect() as conn:
            return scrub(conn, settings, max_minutes)
    finally:
        engine.dispose()


def scrub(conn: Connection, settings: Settings, max_minutes: float | None) -> ScrubReport:
    """Read the due share of every folder's files, oldest check first."""
    started = time.monotonic()
    deadline = started + max_minutes * 60 if max_minutes is not None else None
    report = ScrubReport()
    folders = _folders(conn)
    for folder in folders:
        report.released += [
            os.path.join(folder.path, p) for p in fixity.release_restored(conn, folder.path)
        ]
    report.due = _build_due(conn, folders, settings.preservation.scrub_days)
    throttle = Throttle(settings.preservation.scrub_rate)
    last_commit = time.monotonic()
    last_rowid = 0
    done = False
    while not done:
        rows = conn.exec_driver_sql(
            "SELECT rowid, folder, path, size, mtime_ns, sha256, version_id, verified_at, "
            "bucket, tbl FROM temp.scrub_due WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (last_rowid, PAGE),
        ).all()
        if not rows:
            break
        for row in rows:
            if deadline is not None and time.monotonic() >= deadline:
                done = True
                break
            last_rowid = row[0]
            _check_one(conn, settings, row[1:], throttle, report)
            if time.monotonic() - last_commit > COMMIT_EVERY_SECONDS:
                conn.commit()
                last_commit = time.monotonic()
    conn.commit()
    report.left = int(
        conn.exec_driver_sql(
            "SELECT count(*) FROM temp.scrub_due WHERE rowid > ?", (last_rowid,)
        ).scalar_one()
    )
    conn.exec_driver_sql("DROP TABLE IF EXISTS temp.scrub_due")
    report.held = int(conn.exec_driver_sql("SELECT count(*) FROM fixity_holds").scalar_one())
    report.seconds = time.monotonic() - started
    return report


@dataclass(frozen=True)
class _Folder:
    path: str
    bucket: str
    table: str


def _folders(conn: Connection) -> list[_Folder]:
    tables = {
        row[0] for row in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'")
    }
    return [
        _Folder(*row)
        for row in conn.exec_driver_sql(
            "SELECT path, bucket, table_name FROM folders ORDER BY path"
        )
        if row[2] in tables
    ]


def _build_due(conn: Connection, folders: list[_Folder], scrub_days: int) -> int:
    """``temp.scrub_due``: the due files of every folder, in the order they are read."""
    conn.exec_driver_sql("DROP TABLE IF EXISTS temp.scrub_due")
    conn.exec_driver_sql(
        "CREATE TEMP TABLE scrub_due (folder TEXT, path TEXT, size INTEGER, mtime_ns INTEGER, "
        "sha256 BLOB, version_id TEXT, verified_at INTEGER, bucket TEXT, tbl TEXT, "
        "last_check INTEGER, uploaded_at INTEGER)"
    )
    cutoff = int(time.time()) - scrub_days * DAY
    for folder in folders:
        conn.exec_driver_sql(
            f"""INSERT INTO temp.scrub_due
            SELECT ?1, f.path, f.size, f.mtime_ns, f.sha256, f.version_id,
                   max(f.uploaded_at, coalesce(c.checked_at, 0)), ?2, ?3,
                   CASE WHEN c.checked_at >= f.uploaded_at THEN c.checked_at ELSE 0 END,
                   f.uploaded_at
            FROM "{folder.table}" AS f
            LEFT JOIN scrub_checks AS c ON c.folder = ?1 AND c.path = f.path
            WHERE f.state = '{BACKED_UP}' AND f.sha256 IS NOT NULL AND f.uploaded_at IS NOT NULL
              AND (c.checked_at IS NULL OR c.checked_at < f.uploaded_at OR c.checked_at < ?4)
              AND NOT EXISTS (SELECT 1 FROM fixity_holds AS h
                              WHERE h.folder = ?1 AND h.path = f.path)""",
            (folder.path, folder.bucket, folder.table, cutoff),
        )
    # Oldest check first (never checked since the upload: oldest upload first); the
    # rowid order of the copy is the reading order.
    conn.exec_driver_sql(
        "CREATE TEMP TABLE scrub_order AS SELECT * FROM temp.scrub_due "
        "ORDER BY last_check, uploaded_at, folder, path"
    )
    conn.exec_driver_sql("DROP TABLE temp.scrub_due")
    conn.exec_driver_sql("ALTER TABLE temp.scrub_order RENAME TO scrub_due")
    return int(conn.exec_driver_sql("SELECT count(*) FROM temp.scrub_due").scalar_one())


def _check_one(
    conn: Connection,
    settings: Settings,
    row: Sequence[Any],
    throttle: Throttle,
    report: ScrubReport,
) -> None:
    folder, path, size, mtime_ns, recorded, version_id, verified_at, bucket, _table = row
    full = Path(folder) / path
    before = fixity.stat_key(full)
    if before != (size, mtime_ns):
        report.skipped += 1  # changed or gone: the next backup run decides
        return
    try:
        digest = fixity.sha256_of(full, throttle)
    except OSError as exc:
        hint = f" ({read_hint()})" if denied(exc) else ""
        report.unreadable.append(f"{full}: cannot read: {exc.strerror or exc}{hint}; not scrubbed")
        return
    report.bytes_read += size
    if fixity.stat_key(full) != before:
        report.skipped += 1  # written to while it was read
        return
    report.checked += 1
    now = int(time.time())
    vid = version_id if isinstance(version_id, str) else None
    if digest == recorded:
        conn.exec_driver_sql(
            "INSERT INTO scrub_checks (folder, path, checked_at) VALUES (?, ?, ?) "
            "ON CONFLICT (folder, path) DO UPDATE SET checked_at = excluded.checked_at",
            (folder, path, now),
        )
        fixity.record_events(
            conn,
            [
                fixity.Event(
                    folder, path, fixity.SCRUB, "local", "ok", vid, f"sha256 {digest.hex()}"
                )
            ],
            now,
        )
        return
    when = verified_at if isinstance(verified_at, int) else None
    fixity.hold(
        conn,
        fixity.Hold(folder, path, recorded, vid, size, mtime_ns, when, now, digest),
    )
    failure = Failure(
        folder,
        path,
        str(bucket),
        vid,
        when,
        recorded.hex(),
        digest.hex(),
        restore_commands(settings.cache_dir, str(full)),
    )
    fixity.record_events(
        conn,
        [
            fixity.Event(
                folder,
                path,
                fixity.SCRUB,
                "local",
                "failed",
                vid,
                f"sha256 {digest.hex()}, uploaded as {recorded.hex()}; held",
            )
        ],
        now,
    )
    conn.commit()
    logger.error("%s", failure.message())
    report.failures.append(failure)


def accept(settings: Settings, target: Path) -> tuple[str, fixity.Hold]:
    """``scrub --accept PATH``: the held file's new bytes are right. Raises ConfigError
    (exit 2, the message says why) when PATH is not a held file."""
    full = os.path.normpath(target.absolute())
    engine = open_state_db(settings.cache_dir)
    try:
        with engine.connect() as conn:
            for folder in _folders(conn):
                prefix = folder.path.rstrip("/") + "/"
                if full.startswith(prefix):
                    ended = fixity.accept(conn, folder.path, folder.table, full[len(prefix) :])
                    if ended is not None:
                        return full, ended
            held = [os.path.join(h.folder, h.path) for h in fixity.holds(conn)]
    finally:
        engine.dispose()
    listed = "; held now: " + ", ".join(held[:10]) if held else "; no file is held"
    raise ConfigError(f"--accept {full}: not a held file{listed}")


def card_items(report: ScrubReport) -> list[tuple[str, list[tuple[str, str]], str | None]]:
    """What the Teams card says of each failure: path, last verified, good version, command."""
    items: list[tuple[str, list[tuple[str, str]], str | None]] = []
    for failure in report.failures:
        when = (
            time.strftime("%Y-%m-%d %H:%M", time.localtime(failure.verified_at))
            if failure.verified_at
            else "never"
        )
        facts = [
            ("Last verified", when),
            ("Good copy", f"s3://{failure.bucket}, version {failure.version_id or '?'}"),
            ("SHA-256 now", failure.found_sha256),
            ("SHA-256 at upload", failure.good_sha256),
        ]
        items.append((failure.full_path, facts, failure.restore_command))
    return items
