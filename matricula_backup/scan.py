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

import contextlib
import json
import logging
import marshal
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from operator import itemgetter
from typing import IO, TYPE_CHECKING

from matricula_backup import walk
from matricula_backup.access import denied, read_hint
from matricula_backup.exclude import Excludes
from matricula_backup.model import BackupFolder, Problem
from matricula_backup.prefetch import prefetched

if TYPE_CHECKING:  # the walk can start before SQLAlchemy is loaded (headstart.py)
    from sqlalchemy import Connection

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
    started: Walk | None = None,
) -> ScanResult:
    """Fill ``temp.scan`` with every regular file below ``folder``; report what is unreadable.

    ``started``: the folder's walk, if it was started ahead (``headstart.py``);
    otherwise it starts now.

    ``on_rows(n)``: called after each batch, when ``temp.scan`` holds rowids 1 to ``n``
    (the queues compare them with the files table while the walk goes on).
    """
    create_scan_tables(conn)
    result = ScanResult()
    source = str(folder.path)
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    size_of = itemgetter(1)
    reasons: dict[tuple[int, str], str] = {}  # by (errno, strerror): the hint looks up a user
    walking = started
    try:
        if walking is None:
            walking = Walk(folder, excludes)
        for message in walking.messages():
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
                reason = reasons.get((errno, strerror))
                if reason is None:
                    reason = reasons[errno, strerror] = _reason(OSError(errno, strerror))
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
        if walking is not None:
            walking.close()
    return result


class Walk:
    """The walk of one backup folder, started now in a process of its own.

    ``messages()`` reads what it finds (once, to the end); ``close()`` ends it if it
    was not read to the end. Started before the scan needs it, it walks ahead
    (``headstart.py``): its pipe is drained on a thread of its own into a bounded
    queue (``FRAMES_AHEAD`` batches), so memory stays flat meanwhile.
    """

    def __init__(self, folder: BackupFolder, excludes: Excludes | None = None) -> None:
        self.path = folder.path
        self._source = source = str(folder.path)
        key_prefix_bytes = len(folder.key_prefix.encode())
        debug = logger.isEnabledFor(logging.DEBUG)
        self._done = False
        self._failure = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._in_process: Iterator[walk.Message] | None = None
        self._reading = contextlib.ExitStack()
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", walk.__file__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            logger.info("cannot start the walk in its own process (%s): walking in this one", exc)
            self._in_process = walk.walk(
                source,
                key_prefix_bytes,
                excludes.name_match if excludes else None,
                excludes.path_match if excludes else None,
                debug,
            )
            return
        self._process = process
        assert process.stdin is not None and process.stdout is not None
        settings = {
            "source": os.fsencode(source).hex(),
            "key_prefix_bytes": key_prefix_bytes,
            "names": excludes.name_regex if excludes else None,
            "paths": excludes.path_regex if excludes else None,
            "debug": debug,
        }
        try:
            process.stdin.write(json.dumps(settings).encode() + b"\n")
            process.stdin.close()
            # The pipe is drained on a thread of its own: while this thread writes a
            # batch to SQLite, the walk goes on instead of waiting for room in the
            # pipe's 64 KiB (measured: without it the two processes took turns).
            self._frames = self._reading.enter_context(
                prefetched(_frames(process.stdout), FRAMES_AHEAD, "walk-read")
            )
        except BaseException:
            self.close()
            raise

    def messages(self) -> Iterator[walk.Message]:
        """The walk's messages in order (see ``walk.py``); RuntimeError if it stopped early."""
        if self._in_process is not None:
            yield from self._in_process
            return
        try:
            for frame in self._frames:
                for message in marshal.loads(frame):
                    yield message
                    self._done = message[0] == "done"
        finally:
            self.close()
        if not self._done:
            raise RuntimeError(f"the walk of {self._source} stopped ({self._failure})")

    def close(self) -> None:
        """End the walk if it is still going; free its process and thread (idempotent)."""
        process, self._process = self._process, None
        if process is None:
            return
        if not self._done:
            process.kill()  # ends the reading thread's read too
        self._reading.close()
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()
        stderr = process.stderr.read()
        process.stderr.close()
        returncode = process.wait()
        detail = stderr.decode(errors="replace").strip().splitlines()
        self._failure = f"exit {returncode}: " + (detail[-1] if detail else "no message")


def _frames(stream: IO[bytes]) -> Iterator[bytes]:
    """The walk's frames (marshalled lists of messages), one at a time, until the pipe ends."""
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
