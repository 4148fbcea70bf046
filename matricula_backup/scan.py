"""Walk one backup folder into the temporary table ``scan`` (no S3 here).

The walk itself (``walk.py``: ``os.scandir`` and ``lstat`` data only, symlinks
not followed, FIFOs, sockets and devices skipped) runs in a process of its own
and hands over batches of plain tuples; this process writes each batch to
SQLite while the walk goes on, so the two use two cores, and memory stays flat
however large the tree (a batch or two in flight; the pipe holds the walk back
when SQLite is slower).

What could not be read is written to the temporary table ``unscanned``: a
directory (as ``prefix/``, or ``''`` for the folder itself) or a single file.
Nothing below an entry of ``unscanned`` counts as deleted (only a complete scan
deletes).
"""

from __future__ import annotations

import json
import logging
import marshal
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from operator import itemgetter
from typing import IO

from sqlalchemy import Connection

from matricula_backup import walk
from matricula_backup.access import denied, read_hint
from matricula_backup.exclude import Excludes
from matricula_backup.model import BackupFolder, Problem
from matricula_backup.prefetch import prefetched

logger = logging.getLogger(__name__)

BATCH_ROWS = walk.BATCH_ROWS
MAX_KEY_BYTES = walk.MAX_KEY_BYTES
# Batches read off the walk's pipe ahead of SQLite: about 1 MiB each (marshal).
FRAMES_AHEAD = 4


@dataclass
class ScanResult:
    files: int = 0
    bytes: int = 0
    skipped_special: int = 0  # symlinks, FIFOs, sockets, devices
    excluded: int = 0  # files and folders matched by backup.exclude


def create_scan_tables(conn: Connection) -> None:
    """``scan`` has no key: rows are appended in walk order (their rowids are 1, 2, ...),
    the cheapest insert. Queries that look paths up in it index it first
    (``queues.index_scan``); the no-change path looks scan rows up in the files table."""
    conn.exec_driver_sql("DROP TABLE IF EXISTS temp.scan")
    conn.exec_driver_sql("DROP TABLE IF EXISTS temp.unscanned")
    conn.exec_driver_sql(
        "CREATE TEMP TABLE scan (path TEXT NOT NULL, size INTEGER NOT NULL, "
        "mtime_ns INTEGER NOT NULL)"
    )
    conn.exec_driver_sql("CREATE TEMP TABLE unscanned (path TEXT NOT NULL)")


def scan_folder(
    conn: Connection,
    folder: BackupFolder,
    on_problem: Callable[[Problem], None],
    excludes: Excludes | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> ScanResult:
    """Fill ``temp.scan`` with every regular file below ``folder``; report what is unreadable.

    ``on_rows(n)``: called after each batch, when ``temp.scan`` holds rowids 1 to ``n``
    (the queues compare them with the files table while the walk goes on).
    """
    create_scan_tables(conn)
    result = ScanResult()
    source = str(folder.path)
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    size_of = itemgetter(1)
    try:
        for message in _walk(source, len(folder.key_prefix.encode()), excludes):
            kind = message[0]
            if kind == "rows":
                rows = message[1]
                cursor.executemany(
                    "INSERT INTO temp.scan (path, size, mtime_ns) VALUES (?, ?, ?)", rows
                )
                result.files += len(rows)
                result.bytes += sum(map(size_of, rows))
                if on_rows is not None:
                    on_rows(result.files)
            elif kind == "unreadable":
                _, rel, abs_path, errno, strerror, is_dir = message
                cursor.execute("INSERT INTO temp.unscanned (path) VALUES (?)", (rel,))
                reason = _reason(OSError(errno, strerror))
                text = (
                    f"cannot list this directory: {reason}; "
                    "nothing below it is deleted from the bucket this run"
                    if is_dir
                    else f"cannot read file status: {reason}"
                )
                on_problem(Problem(source, "scan", text, abs_path))
            elif kind == "bad name":
                on_problem(
                    Problem(
                        source,
                        "scan",
                        "name is not valid UTF-8, so it cannot be an S3 key; "
                        "rename it to back it up",
                        message[1],
                    )
                )
            elif kind == "too long":
                on_problem(
                    Problem(
                        source,
                        "scan",
                        f"path is longer than the {MAX_KEY_BYTES} bytes an "
                        "S3 key may have; shorten it to back it up",
                        message[1],
                    )
                )
            elif kind == "debug":
                logger.debug("%s", message[1])
            elif kind == "done":
                result.skipped_special, result.excluded = message[1], message[2]
    finally:
        cursor.close()
    return result


def _walk(source: str, key_prefix_bytes: int, excludes: Excludes | None) -> Iterator[walk.Message]:
    """The walk's messages, from its own process (in this one if none can be started)."""
    names = excludes.name_regex if excludes else None
    paths = excludes.path_regex if excludes else None
    debug = logger.isEnabledFor(logging.DEBUG)
    settings = {
        "source": os.fsencode(source).hex(),
        "key_prefix_bytes": key_prefix_bytes,
        "names": names,
        "paths": paths,
        "debug": debug,
    }
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", walk.__file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        logger.info("cannot start the walk in its own process (%s): walking in this one", exc)
        name_match = excludes.name_match if excludes else None
        path_match = excludes.path_match if excludes else None
        yield from walk.walk(source, key_prefix_bytes, name_match, path_match, debug)
        return
    assert process.stdin is not None and process.stdout is not None
    done = False
    try:
        process.stdin.write(json.dumps(settings).encode() + b"\n")
        process.stdin.close()
        # The pipe is drained on a thread of its own: while this thread writes a
        # batch to SQLite, the walk goes on instead of waiting for room in the
        # pipe's 64 KiB (measured: without it the two processes took turns).
        with prefetched(_frames(process.stdout), FRAMES_AHEAD, "walk-read") as frames:
            try:
                for frame in frames:
                    message = marshal.loads(frame)
                    yield message
                    done = message[0] == "done"
            finally:
                if not done:
                    process.kill()  # ends the reading thread's read too
    finally:
        if not done:
            process.kill()
        process.stdout.close()
        stderr = process.stderr.read() if process.stderr else b""
        if process.stderr:
            process.stderr.close()
        returncode = process.wait()
    if not done:
        detail = stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(
            f"the walk of {source} stopped (exit {returncode}): "
            + (detail[-1] if detail else "no message")
        )


def _frames(stream: IO[bytes]) -> Iterator[bytes]:
    """The walk's messages as marshalled bytes, one frame at a time, until the pipe ends."""
    while True:
        header = stream.read(walk.FRAME_HEADER)
        if len(header) < walk.FRAME_HEADER:
            return
        length = int.from_bytes(header, "little")
        frame = stream.read(length)
        if len(frame) < length:
            return  # the walk ended in the middle of a frame: reported as stopped
        yield frame


def _reason(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    return f"{reason} ({read_hint()})" if denied(exc) else reason
