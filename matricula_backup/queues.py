"""The work queues of one backup folder, as SQL set differences.

Inputs: the folder's files table (what S3 confirmed) and ``temp.scan`` (what is
on disk now). Outputs, as temporary tables:

- ``upload_queue``: files on disk with no confirmed upload of this exact size
  and mtime (new, changed, or failed before);
- ``delete_queue``: rows of files no longer on disk, except below anything the
  scan could not read. ``in_bucket`` says whether S3 may hold a version of it:
  a confirmed upload, or an attempt whose answer never came (a kill, a lost
  response) once the bucket exists. Only rows that cannot be in the bucket are
  simply forgotten.

The worker drains the queues in batches and records each result here. No S3
and no threads in this module: only SQL.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from matricula_backup.db.schema import BACKED_UP, FAILED, PENDING
from matricula_backup.model import ListedObject as ListedObject
from matricula_backup.model import Uploaded as Uploaded
from matricula_backup.model import UploadItem as UploadItem


@dataclass(frozen=True)
class QueueSizes:
    uploads: int
    upload_bytes: int
    deletes: int  # objects to delete from the bucket
    delete_bytes: int
    forget: int  # rows of vanished files that never reached the bucket
    new: int  # uploads that are new files (the rest are changed or retried)
    changed: int = 0  # of them: backed-up files whose size or mtime changed
    # Of the uploads: backed-up files whose mtime alone changed. Their bytes are
    # compared with the SHA-256 of the upload before anything is sent, so they are
    # checks, not announced uploads (most were only touched).
    checks: int = 0
    check_bytes: int = 0


class Compare:
    """The scan's rows compared with the files table, batch by batch, while the walk
    goes on: new, changed and unconfirmed files collect in ``temp.upload_found``.

    Call it with ``n`` when ``temp.scan`` holds rowids 1 to ``n`` (``scan_folder``'s
    ``on_rows``); ``build_queues`` compares what is left. Only valid while the files
    table does not change (not across ``adopt_listing``).
    """

    def __init__(self, conn: Connection, table: str) -> None:
        self.conn = conn
        self.table = table
        self.done = -1  # the table is made at the first call (after the scan's tables)

    def select(self) -> str:
        table = self.table
        return f"""
            SELECT s.path, s.size, s.mtime_ns, f.path IS NULL AS is_new,
               CASE WHEN f.path IS NULL THEN 'new'
                    WHEN f.size != s.size THEN 'changed size'
                    WHEN f.mtime_ns != s.mtime_ns THEN 'changed mtime'
                    ELSE 'retry after ' || f.state END AS reason,
               -- Only a confirmed row says what the bucket's latest version holds: after
               -- a change, an unconfirmed upload of other bytes may have landed.
               CASE WHEN f.state = '{BACKED_UP}' THEN f.sha256 END AS in_bucket_sha256,
               -- Backed up, and size or mtime differ now: what the mass change guard counts
               -- (not a row adopted from a listing whose size matches: its mtime is unknown,
               -- and the bucket is asked before anything is sent).
               coalesce(f.state = '{BACKED_UP}' AND NOT (f.sha256 IS NULL
                   AND f.uploaded_at IS NOT NULL AND f.size = s.size), 0) AS is_changed,
               -- Adopted from a listing (uploaded_at without a sha256: the listing has
               -- no metadata) and of the object's size: the bucket may hold these bytes.
               coalesce(f.sha256 IS NULL AND f.uploaded_at IS NOT NULL AND f.size = s.size, 0)
                   AS check_bucket
        FROM temp.scan AS s LEFT JOIN "{table}" AS f ON f.path = s.path
        WHERE s.rowid > ? AND s.rowid <= ? AND (f.path IS NULL OR f.state != '{BACKED_UP}'
           OR f.size != s.size OR f.mtime_ns != s.mtime_ns)
          -- A file held by scrub (its bytes failed fixity) is not uploaded over the good copy.
          AND NOT EXISTS (SELECT 1 FROM fixity_holds AS h WHERE h.path = s.path AND h.folder =
                          (SELECT path FROM folders WHERE table_name = '{table}'))"""

    def __call__(self, upto: int) -> None:
        if self.done < 0:
            self.conn.exec_driver_sql("DROP TABLE IF EXISTS temp.upload_found")
            self.conn.exec_driver_sql(
                f"CREATE TEMP TABLE upload_found AS {self.select()} LIMIT 0", (0, 0)
            )
            self.done = 0
        if upto > self.done:
            self.conn.exec_driver_sql(
                f"INSERT INTO temp.upload_found {self.select()}", (self.done, upto)
            )
            self.done = upto


def build_queues(
    conn: Connection,
    table: str,
    bucket_exists: bool,
    compare: Compare | None = None,
    ordered: bool = True,
) -> QueueSizes:
    """Compute ``upload_queue`` and ``delete_queue`` from the scan and the files table.

    ``bucket_exists``: the folder's bucket was set up, so an upload may have
    reached it without being confirmed; such files get deleted too when they vanish.
    ``compare``: what was compared during the scan (see ``Compare``).
    ``ordered``: ``upload_queue`` in path order (uploads, and the files table's
    rows written in key order); a dry run only counts it, in walk order (a first
    scan of a million files: one sort of a million paths less).
    """
    conn.exec_driver_sql("DROP TABLE IF EXISTS temp.upload_queue")
    conn.exec_driver_sql("DROP TABLE IF EXISTS temp.delete_queue")
    scanned = int(
        conn.exec_driver_sql("SELECT coalesce(max(rowid), 0) FROM temp.scan").scalar_one()
    )
    if compare is None:  # all at once (a first scan: most rows are new), sorted on the way
        select = Compare(conn, table).select()
        order = "ORDER BY s.path" if ordered else "ORDER BY s.rowid"
        with _sort_cache(conn):
            conn.exec_driver_sql(
                f"CREATE TEMP TABLE upload_queue AS {select} {order}", (0, scanned)
            )
    else:
        compare(scanned)
        order = "ORDER BY path" if ordered else "ORDER BY rowid"
        conn.exec_driver_sql(
            f"CREATE TEMP TABLE upload_queue AS SELECT * FROM temp.upload_found {order}"
        )
    up = conn.exec_driver_sql(
        "SELECT count(*), coalesce(sum(size), 0), coalesce(sum(is_new), 0), "
        "coalesce(sum(is_changed), 0), "
        # Checks: compared with a SHA-256 before anything is sent (only touched, or
        # adopted from a listing with the object's size).
        "coalesce(sum(check_bucket OR (reason = 'changed mtime' "
        "AND in_bucket_sha256 IS NOT NULL)), 0), "
        "coalesce(sum(size * (check_bucket OR (reason = 'changed mtime' "
        "AND in_bucket_sha256 IS NOT NULL))), 0) "
        "FROM temp.upload_queue"
    ).one()
    _build_delete_queue(conn, table, bucket_exists, int(up[2]))
    down = conn.exec_driver_sql(
        "SELECT coalesce(sum(in_bucket), 0), coalesce(sum(size * in_bucket), 0), "
        "coalesce(sum(1 - in_bucket), 0) FROM temp.delete_queue"
    ).one()
    return QueueSizes(
        uploads=up[0],
        upload_bytes=up[1],
        new=up[2],
        changed=up[3],
        deletes=down[0],
        delete_bytes=down[1],
        forget=down[2],
        checks=up[4],
        check_bytes=up[5],
    )


# ``f.path`` lies below a directory the scan could not list: one seek for the range
# with the largest ``lo`` not above it (the ranges are disjoint: ``_unscanned_dirs``).
_IN_UNREADABLE_DIR = """EXISTS (
              SELECT 1 FROM (
                  SELECT hi FROM temp.unscanned_dirs AS d WHERE d.lo <= f.path
                  ORDER BY d.lo DESC LIMIT 1)
              WHERE hi IS NULL OR f.path < hi)"""


def _build_delete_queue(conn: Connection, table: str, bucket_exists: bool, new: int) -> None:
    """``delete_queue``: rows whose file the scan did not see, except below what it
    could not read.

    Scan paths are unique, so the rows seen by the scan are its rows minus the
    new ones: when that is every row, nothing vanished and the queue is empty
    without a lookup per row (the no-change path). When what could not be read
    holds exactly the rest (``_protected_rows``: a key join for files, a range
    per directory), the queue is empty too: a share with many permission
    problems costs a lookup per unreadable entry, not per row. Otherwise each
    unseen row is checked against ``unscanned`` in the same two ways, both
    linear: exact paths (files whose status could not be read) by a key lookup,
    and directories by one range seek on ``unscanned_dirs``.
    """
    conn.exec_driver_sql(
        "CREATE TEMP TABLE delete_queue (path TEXT NOT NULL, size INTEGER NOT NULL, "
        "in_bucket INTEGER NOT NULL)"
    )
    scanned = conn.exec_driver_sql("SELECT count(*) FROM temp.scan").scalar_one()
    rows = conn.exec_driver_sql(f'SELECT count(*) FROM "{table}"').scalar_one()
    unseen = rows - (scanned - new)
    if unseen <= 0:
        return
    _unscanned_dirs(conn)
    if unseen == _protected_rows(conn, table):
        return
    index_scan(conn)
    conn.exec_driver_sql(
        f"""INSERT INTO temp.delete_queue (path, size, in_bucket)
        SELECT f.path, f.size,
               f.uploaded_at IS NOT NULL OR (f.state != '{BACKED_UP}' AND {int(bucket_exists)})
        FROM "{table}" AS f
        WHERE NOT EXISTS (SELECT 1 FROM temp.scan AS s WHERE s.path = f.path)
          AND NOT EXISTS (SELECT 1 FROM temp.unscanned AS u WHERE u.path = f.path)
          AND NOT {_IN_UNREADABLE_DIR}
        ORDER BY f.path"""
    )


@contextlib.contextmanager
def _sort_cache(conn: Connection) -> Iterator[None]:
    """A small page cache while SQLite sorts a million rows: its sorter may take the
    whole cache (64 MiB) on top of it; this keeps a run's memory where it was."""
    cache_size = int(conn.exec_driver_sql("PRAGMA cache_size").scalar_one())
    conn.exec_driver_sql("PRAGMA cache_size=-8192")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"PRAGMA cache_size={cache_size}")


def index_scan(conn: Connection) -> None:
    """Indexes for the queries that look paths up in the scan's tables.

    ``temp.scan`` is written without a key (the cheapest insert): the no-change
    path never needs one, as it looks scan rows up in the files table's key.
    """
    with _sort_cache(conn):
        conn.exec_driver_sql("CREATE UNIQUE INDEX IF NOT EXISTS temp.ix_scan_path ON scan (path)")
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS temp.ix_unscanned_path ON unscanned (path)")


def _unscanned_dirs(conn: Connection) -> None:
    """``unscanned_dirs``: the unreadable directories as disjoint ranges of paths.

    Below a directory ``p/`` lie exactly the paths ``p/ <= path < p0`` ('0' follows
    '/'); ``''`` (the folder itself) covers everything (``hi`` NULL). Directories
    inside another unreadable one are left out, so the ranges do not overlap and the
    one with the largest ``lo`` not above a path is the only one that may hold it:
    one index seek per row, however many directories could not be read.
    """
    conn.exec_driver_sql("DROP TABLE IF EXISTS temp.unscanned_dirs")
    conn.exec_driver_sql(
        "CREATE TEMP TABLE unscanned_dirs (lo TEXT PRIMARY KEY, hi TEXT) WITHOUT ROWID"
    )
    prefixes = conn.exec_driver_sql(
        "SELECT DISTINCT path FROM temp.unscanned WHERE path = '' OR path LIKE '%/' ORDER BY path"
    ).scalars()
    ranges: list[tuple[str, str | None]] = []
    for prefix in prefixes:
        if ranges and (ranges[-1][1] is None or prefix < ranges[-1][1]):
            continue  # below the previous one (sorted: a parent comes first)
        ranges.append((prefix, prefix[:-1] + "0" if prefix else None))
    if ranges:
        conn.exec_driver_sql("INSERT INTO temp.unscanned_dirs (lo, hi) VALUES (?, ?)", ranges)


def _protected_rows(conn: Connection, table: str) -> int:
    """Rows of ``table`` that lie in what the scan could not read (``unscanned``).

    None of them is in ``temp.scan``: the walk reports each entry once, as a row
    or as unreadable, and a directory it cannot open or list before it reports
    anything below it. So when the unseen rows number exactly these, none of the
    unseen rows vanished. Files lying inside an unreadable directory's range are
    counted once, with the range.
    """
    # Two queries, so that each range is one seek of the key from lo to hi (with
    # ``hi IS NULL OR ...`` SQLite would read every row from lo to the end).
    below_dirs = conn.exec_driver_sql(
        f"""SELECT coalesce(sum((SELECT count(*) FROM "{table}" AS f
                                 WHERE f.path >= d.lo AND f.path < d.hi)), 0)
        FROM temp.unscanned_dirs AS d WHERE d.hi IS NOT NULL"""
    ).scalar_one()
    below_folder = conn.exec_driver_sql(
        f"""SELECT coalesce(sum((SELECT count(*) FROM "{table}" AS f WHERE f.path >= d.lo)), 0)
        FROM temp.unscanned_dirs AS d WHERE d.hi IS NULL"""
    ).scalar_one()
    files = conn.exec_driver_sql(
        f"""SELECT count(*)
        FROM (SELECT DISTINCT path FROM temp.unscanned WHERE path != '' AND path NOT LIKE '%/')
             AS u CROSS JOIN "{table}" AS f ON f.path = u.path
        WHERE NOT {_IN_UNREADABLE_DIR}"""
    ).scalar_one()
    return int(below_dirs) + int(below_folder) + int(files)


def in_bucket_count(conn: Connection, table: str) -> int:
    """Files of which S3 holds a confirmed version."""
    return int(
        conn.exec_driver_sql(
            f'SELECT count(*) FROM "{table}" WHERE uploaded_at IS NOT NULL'
        ).scalar_one()
    )


def changed_sample(conn: Connection, limit: int) -> list[str]:
    """The first changed files of ``upload_queue`` in path order (relative to the folder;
    the same in a dry run, whose queue is in walk order)."""
    rows = conn.exec_driver_sql(
        "SELECT path FROM temp.upload_queue WHERE is_changed ORDER BY path LIMIT ?", (limit,)
    ).all()
    return [row[0] for row in rows]


def hold_changed(conn: Connection) -> tuple[int, int]:
    """Take the changed files out of ``upload_queue`` (the mass change guard refused them).

    Their rows keep the size and mtime of the last confirmed upload, so the next
    run sees them changed again. Returns what is left to upload: (files, bytes).
    """
    conn.exec_driver_sql("DELETE FROM temp.upload_queue WHERE is_changed")
    left = conn.exec_driver_sql(
        "SELECT count(*), coalesce(sum(size), 0) FROM temp.upload_queue"
    ).one()
    return int(left[0]), int(left[1])


def apply_scan(conn: Connection, table: str) -> None:
    """Mark new and changed files pending and forget vanished never-uploaded ones."""
    conn.exec_driver_sql(
        f"""INSERT INTO "{table}" (path, size, mtime_ns, state)
        SELECT path, size, mtime_ns, '{PENDING}' FROM temp.upload_queue WHERE true
        ON CONFLICT (path) DO UPDATE SET
            state = CASE WHEN size = excluded.size AND mtime_ns = excluded.mtime_ns
                         AND state != '{BACKED_UP}' THEN state ELSE '{PENDING}' END,
            size = excluded.size,
            mtime_ns = excluded.mtime_ns"""
    )
    conn.exec_driver_sql(
        f"""DELETE FROM "{table}" WHERE path IN
        (SELECT path FROM temp.delete_queue WHERE NOT in_bucket)"""
    )
    conn.commit()


def adopt_listing(conn: Connection, table: str, listing: Iterable[list[ListedObject]]) -> int:
    """After --reset (or a lost state.db): a row for each object the bucket holds.

    A listing proves nothing about the bytes (a size and a LastModified are
    easy to match with other bytes by anyone holding the keys), so a file on
    disk is never recorded as backed up from it: it is queued, and one whose
    size matches is compared with the SHA-256 S3 computed of the object before
    anything is sent (``check_bucket``, s3.upload_unless_in_bucket). Objects of
    files no longer on disk get a row too, so the delete queue removes them.
    Returns how many files on disk were recorded as backed up: none (the
    upload worker counts those it finds in the bucket).
    """
    for page in listing:
        if not page:
            continue
        index_scan(conn)  # at the first object: an empty bucket (a first run) needs none
        conn.exec_driver_sql(
            f"""INSERT INTO "{table}" (path, size, mtime_ns, state, version_id, uploaded_at)
            SELECT ?1, ?2, coalesce(s.mtime_ns, 0),
                   CASE WHEN s.path IS NULL THEN '{BACKED_UP}' ELSE '{PENDING}' END,
                   ?4, ?3
            FROM (SELECT 1) LEFT JOIN temp.scan AS s ON s.path = ?1
            WHERE true
            ON CONFLICT (path) DO NOTHING""",
            [(item.path, item.size, item.last_modified, item.version_id) for item in page],
        )
        conn.commit()
    return 0


def upload_batches(
    conn: Connection, batch_size: int = 1000, large_from: int = 0
) -> Iterator[list[UploadItem]]:
    """Stream ``upload_queue`` in path order, a batch at a time.

    ``large_from``: the files of at least this many bytes first (multipart
    uploads), so that their parts go out alongside the small files instead of
    trailing them at the end of the run.
    """
    large = int(large_from)
    conditions = [f"size >= {large} AND", f"size < {large} AND"] if large > 0 else [""]
    for condition in conditions:
        for rows in _pages(
            conn,
            "rowid, path, size, mtime_ns, reason, in_bucket_sha256, is_changed, check_bucket",
            "temp.upload_queue",
            condition,
            batch_size,
        ):
            yield [
                UploadItem(row[1], row[2], row[3], row[4], row[5], bool(row[6]), bool(row[7]))
                for row in rows
            ]


def delete_batches(conn: Connection, batch_size: int = 1000) -> Iterator[list[str]]:
    """Stream the paths to delete from the bucket, ``batch_size`` at a time."""
    for rows in _pages(conn, "rowid, path", "temp.delete_queue", "in_bucket AND", batch_size):
        yield [row[1] for row in rows]


def _pages(
    conn: Connection, columns: str, table: str, condition: str, batch_size: int
) -> Iterator[list[Any]]:
    """Keyset paging by rowid (first column): no cursor stays open while results are written."""
    last_rowid = 0
    while True:
        rows = conn.exec_driver_sql(
            f"SELECT {columns} FROM {table} WHERE {condition} rowid > ? ORDER BY rowid LIMIT ?",
            (last_rowid, batch_size),
        ).all()
        if not rows:
            return
        last_rowid = rows[-1][0]
        yield list(rows)


def record_uploaded(conn: Connection, table: str, done: list[Uploaded]) -> None:
    now = int(time.time())
    sent = [
        (d.size, d.mtime_ns, d.version_id, d.sha256, now, d.retain_until, d.path)
        for d in done
        if d.sent
    ]
    if sent:
        conn.exec_driver_sql(
            f"""UPDATE "{table}" SET size = ?, mtime_ns = ?, state = '{BACKED_UP}',
            version_id = ?, sha256 = ?, uploaded_at = ?, retain_until = ?, error = NULL
            WHERE path = ?""",
            sent,
        )
    # Same bytes as the bucket's latest version: the new mtime is recorded, and for a
    # row adopted from a listing the SHA-256 (and version) the bucket holds.
    same = [(d.size, d.mtime_ns, d.sha256, d.version_id, d.path) for d in done if not d.sent]
    if same:
        conn.exec_driver_sql(
            f"""UPDATE "{table}" SET size = ?, mtime_ns = ?, state = '{BACKED_UP}',
            sha256 = ?, version_id = coalesce(?, version_id), error = NULL WHERE path = ?""",
            same,
        )


def record_failed(conn: Connection, table: str, failed: list[tuple[str, str]]) -> None:
    """(path, message) of uploads that did not succeed; retried next run."""
    if failed:
        conn.exec_driver_sql(
            f"UPDATE \"{table}\" SET state = '{FAILED}', error = ? WHERE path = ?",
            [(message, path) for path, message in failed],
        )


def record_deleted(conn: Connection, table: str, paths: list[str]) -> None:
    if paths:
        conn.exec_driver_sql(f'DELETE FROM "{table}" WHERE path = ?', [(p,) for p in paths])


def record_delete_failed(conn: Connection, table: str, failed: list[tuple[str, str]]) -> None:
    if failed:
        conn.exec_driver_sql(
            f'UPDATE "{table}" SET error = ? WHERE path = ?',
            [(message, path) for path, message in failed],
        )


# --- Object Lock retention -----------------------------------------------------------------


def _due(unprotected: bool) -> str:
    """Current versions whose retention ends before ?; with ``unprotected``, also those
    with none recorded (uploaded before the bucket had Object Lock, or adopted by
    --reset from a listing, which does not say)."""
    none = " OR retain_until IS NULL" if unprotected else ""
    return f"(retain_until < ?{none}) AND version_id IS NOT NULL AND uploaded_at IS NOT NULL"


def retention_due_count(conn: Connection, table: str, before: int, unprotected: bool) -> int:
    """How many current versions need their Object Lock retention set or extended."""
    return int(
        conn.exec_driver_sql(
            f'SELECT count(*) FROM "{table}" WHERE {_due(unprotected)}', (before,)
        ).scalar_one()
    )


def retention_due_batches(
    conn: Connection, table: str, before: int, unprotected: bool, batch_size: int = 1000
) -> Iterator[list[tuple[str, str]]]:
    """(path, version_id) of those versions, ``batch_size`` at a time, in path order.

    Keyset paging by path: a batch whose extension failed is not selected again
    in the same run (it stays due and is tried next run).
    """
    last = ""
    while True:
        rows = conn.exec_driver_sql(
            f"""SELECT path, version_id FROM "{table}" WHERE {_due(unprotected)} AND path > ?
            ORDER BY path LIMIT ?""",
            (before, last, batch_size),
        ).all()
        if not rows:
            return
        last = rows[-1][0]
        yield [(row[0], row[1]) for row in rows]


def record_retention(conn: Connection, table: str, extended: list[tuple[str, int]]) -> None:
    """(path, retain_until) of versions whose retention S3 confirmed."""
    if extended:
        conn.exec_driver_sql(
            f'UPDATE "{table}" SET retain_until = ? WHERE path = ?',
            [(until, path) for path, until in extended],
        )
