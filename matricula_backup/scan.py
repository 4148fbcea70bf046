"""Walk one backup folder into the temporary table ``scan`` (no S3 here).

The walk uses ``os.scandir`` and ``lstat`` data only: symlinks are not followed,
and FIFOs, sockets and devices are skipped. Rows go to SQLite in large batches
of plain tuples, so memory stays flat however large the tree.

What could not be read is written to the temporary table ``unscanned``: a
directory (as ``prefix/``, or ``''`` for the folder itself) or a single file.
Nothing below an entry of ``unscanned`` counts as deleted (only a complete scan
deletes).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection

from matricula_backup.access import denied, read_hint
from matricula_backup.exclude import Excludes
from matricula_backup.folders import BackupFolder
from matricula_backup.report import Problem

logger = logging.getLogger(__name__)

BATCH_ROWS = 20_000
MAX_KEY_BYTES = 1024


@dataclass
class ScanResult:
    files: int = 0
    bytes: int = 0
    skipped_special: int = 0  # symlinks, FIFOs, sockets, devices
    excluded: int = 0  # files and folders matched by backup.exclude


def create_scan_tables(conn: Connection) -> None:
    conn.exec_driver_sql("DROP TABLE IF EXISTS temp.scan")
    conn.exec_driver_sql("DROP TABLE IF EXISTS temp.unscanned")
    conn.exec_driver_sql(
        "CREATE TEMP TABLE scan (path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
        "mtime_ns INTEGER NOT NULL) WITHOUT ROWID"
    )
    conn.exec_driver_sql("CREATE TEMP TABLE unscanned (path TEXT NOT NULL)")


def scan_folder(
    conn: Connection,
    folder: BackupFolder,
    on_problem: Callable[[Problem], None],
    excludes: Excludes | None = None,
) -> ScanResult:
    """Fill ``temp.scan`` with every regular file below ``folder``; report what is unreadable."""
    create_scan_tables(conn)
    result = ScanResult()
    source = str(folder.path)
    key_prefix_bytes = len(folder.key_prefix.encode())
    batch: list[tuple[str, int, int]] = []
    stack: list[tuple[str, str]] = [(source, "")]

    def unreadable(rel: str, abs_path: str, message: str) -> None:
        conn.exec_driver_sql("INSERT INTO temp.unscanned (path) VALUES (?)", (rel,))
        on_problem(Problem(source, "scan", message, abs_path))

    while stack:
        directory, rel_dir = stack.pop()
        try:
            with os.scandir(directory) as iterator:
                entries = list(iterator)
        except OSError as exc:
            unreadable(
                rel_dir,
                directory,
                f"cannot list this directory: {_reason(exc)}; "
                "nothing below it is deleted from the bucket this run",
            )
            continue
        for entry in entries:
            rel = rel_dir + entry.name
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                on_problem(
                    Problem(
                        source,
                        "scan",
                        "name is not valid UTF-8, so it cannot be an S3 key; "
                        "rename it to back it up",
                        _printable(entry.path),
                    )
                )
                continue
            if excludes and excludes.excluded(entry.name, rel):
                result.excluded += 1
                logger.debug("excluded by backup.exclude: %s", entry.path)
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, rel + "/"))
                    continue
                if not entry.is_file(follow_symlinks=False):
                    result.skipped_special += 1
                    logger.debug("skipped (not a regular file): %s", entry.path)
                    continue
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while we looked: it is simply not there
            except OSError as exc:
                unreadable(rel, entry.path, f"cannot read file status: {_reason(exc)}")
                continue
            if key_prefix_bytes + len(rel.encode()) > MAX_KEY_BYTES:
                on_problem(
                    Problem(
                        source,
                        "scan",
                        f"path is longer than the {MAX_KEY_BYTES} bytes an "
                        "S3 key may have; shorten it to back it up",
                        entry.path,
                    )
                )
                continue
            batch.append((rel, stat.st_size, stat.st_mtime_ns))
            result.files += 1
            result.bytes += stat.st_size
            if len(batch) >= BATCH_ROWS:
                _insert(conn, batch)
                batch = []
    _insert(conn, batch)
    return result


def _insert(conn: Connection, rows: list[tuple[str, int, int]]) -> None:
    if rows:
        conn.exec_driver_sql("INSERT INTO temp.scan (path, size, mtime_ns) VALUES (?, ?, ?)", rows)


def _reason(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    return f"{reason} ({read_hint()})" if denied(exc) else reason


def _printable(path: str) -> str:
    """A path whose bytes are not UTF-8, shown with \\x escapes (safe for logs and SQLite)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
