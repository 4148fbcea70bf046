"""The fixity log and held files: what every check of a file's bytes writes.

One table, ``fixity_events``, holds each check: at upload (S3 verified the
SHA-256 of the bytes we read: copy ``both``), by ``scrub`` (the image server's
copy re-read: ``local``), by ``verify --deep`` (the bucket's recorded SHA-256:
``bucket``) and by ``drill`` (a restored copy read back: ``bucket``). An
auditor asks it "when was this file last proven intact, on which copy?".

A file whose bytes no longer match the SHA-256 of its upload while its size and
mtime are unchanged is *held* (``fixity_holds``): the upload queue leaves it
out (queues.py), so no run puts the damaged bytes over the good version. The
hold ends when the good bytes are back (``release_restored``, checked by every
run and scrub) or when the administrator says the new bytes are right
(``accept``). No S3 here, and nothing printed.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection

from matricula_backup.db.schema import PENDING
from matricula_backup.model import Uploaded
from matricula_backup.throttle import Throttle

logger = logging.getLogger(__name__)

READ_CHUNK = 1024 * 1024

# Kinds of check and the copy each proves.
UPLOAD, SCRUB, CLOUD, DRILL = "upload", "scrub", "cloud check", "drill"


@dataclass(frozen=True)
class Event:
    folder: str
    path: str
    kind: str
    copy: str  # local | bucket | both
    result: str  # ok | failed | accepted | restored
    version_id: str | None = None
    detail: str | None = None


def record_events(conn: Connection, events: Iterable[Event], at: int | None = None) -> None:
    """Append events to the log (in the caller's transaction)."""
    now = int(time.time()) if at is None else at
    rows = [
        (now, e.folder, e.path, e.kind, e.copy, e.result, e.version_id, e.detail) for e in events
    ]
    if rows:
        conn.exec_driver_sql(
            "INSERT INTO fixity_events (at, folder, path, kind, copy, result, version_id, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


def record_uploads(conn: Connection, folder: str, done: list[Uploaded]) -> None:
    """One event per upload S3 confirmed: it checked the SHA-256 of the bytes we read."""
    record_events(
        conn,
        (
            Event(folder, d.path, UPLOAD, "both", "ok", d.version_id, f"sha256 {d.sha256.hex()}")
            for d in done
            if d.sent
        ),
    )


def sha256_of(path: Path, throttle: Throttle | None = None) -> bytes:
    """The SHA-256 of a file, read at most at the throttle's rate."""
    digest = hashlib.sha256()
    # As the upload opens a file (s3/upload.py): no symlink followed, and a FIFO put in
    # the file's place neither blocks the open nor is read.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb", buffering=0) as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        while chunk := handle.read(READ_CHUNK):
            if throttle is not None:
                throttle.consume(len(chunk))
            digest.update(chunk)
    return digest.digest()


# --- held files -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hold:
    folder: str
    path: str
    good_sha256: bytes
    good_version_id: str | None
    size: int
    mtime_ns: int
    verified_at: int | None
    found_at: int
    found_sha256: bytes


def hold(conn: Connection, held: Hold) -> None:
    conn.exec_driver_sql(
        """INSERT INTO fixity_holds (folder, path, good_sha256, good_version_id, size, mtime_ns,
            verified_at, found_at, found_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (folder, path) DO UPDATE SET found_sha256 = excluded.found_sha256""",
        (
            held.folder,
            held.path,
            held.good_sha256,
            held.good_version_id,
            held.size,
            held.mtime_ns,
            held.verified_at,
            held.found_at,
            held.found_sha256,
        ),
    )


def holds(conn: Connection, folder: str | None = None) -> list[Hold]:
    where, params = ("WHERE folder = ?", (folder,)) if folder is not None else ("", ())
    rows = conn.exec_driver_sql(
        "SELECT folder, path, good_sha256, good_version_id, size, mtime_ns, verified_at, "
        f"found_at, found_sha256 FROM fixity_holds {where} ORDER BY folder, path",
        params,
    ).all()
    return [Hold(*row) for row in rows]


def release_restored(conn: Connection, folder: str) -> list[str]:
    """Release the holds of ``folder`` whose file holds the good bytes again; commits.

    Held files are few: each is read in full, every run and every scrub, so a
    restored good copy ends its hold without anybody having to say so.
    """
    released = []
    for held in holds(conn, folder):
        try:
            digest = sha256_of(Path(folder) / held.path)
        except OSError as exc:
            logger.info("held file not readable (%s): %s", exc, held.path)
            continue
        if digest != held.good_sha256:
            continue
        conn.exec_driver_sql(
            "DELETE FROM fixity_holds WHERE folder = ? AND path = ?", (folder, held.path)
        )
        _forget_check(conn, folder, held.path)
        record_events(
            conn,
            [
                Event(
                    folder,
                    held.path,
                    SCRUB,
                    "local",
                    "restored",
                    held.good_version_id,
                    "the good bytes are back; the file is no longer held",
                )
            ],
        )
        logger.warning("%s: the good bytes are back; no longer held", Path(folder) / held.path)
        released.append(held.path)
    conn.commit()
    return released


def accept(conn: Connection, folder: str, table: str | None, path: str) -> Hold | None:
    """The administrator says the held file's new bytes are right: the next run uploads
    them (once). Returns the hold that ended, or None if the file was not held."""
    found = [h for h in holds(conn, folder) if h.path == path]
    if not found:
        return None
    conn.exec_driver_sql("DELETE FROM fixity_holds WHERE folder = ? AND path = ?", (folder, path))
    if table is not None:
        # Same size and mtime as the row: without this the queue would not pick it up.
        conn.exec_driver_sql(f"UPDATE \"{table}\" SET state = '{PENDING}' WHERE path = ?", (path,))
    _forget_check(conn, folder, path)
    record_events(
        conn,
        [
            Event(
                folder,
                path,
                SCRUB,
                "local",
                "accepted",
                found[0].good_version_id,
                f"new bytes sha256 {found[0].found_sha256.hex()} accepted by the administrator; "
                "uploaded by the next run",
            )
        ],
    )
    conn.commit()
    return found[0]


def _forget_check(conn: Connection, folder: str, path: str) -> None:
    conn.exec_driver_sql("DELETE FROM scrub_checks WHERE folder = ? AND path = ?", (folder, path))


def stat_key(path: Path) -> tuple[int, int] | None:
    try:
        info = os.lstat(path)  # the scan does not follow symlinks either
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns
