"""Restore from Deep Archive: select versions, ask S3 to restore them, download them.

Deep Archive objects cannot be read until S3 restores a temporary copy
(Standard tier: within 12 hours, Bulk: within 48). So a restore is a command
run again and again (by hand or from cron) until everything is back:

    list versions (SQL picks latest, or as of --at)
      -> per object, on ``backup.workers`` threads: already in place? newer local file? (kept)
      -> archived and not restored: RestoreObject (recorded in ``restores``)
      -> restore running: reported as in progress
      -> readable: download to a temporary file, verify size and SHA-256,
         set the mtime, rename into place; recorded as downloaded

It works from the buckets, not from the files tables: after a disaster
state.db may be gone, and deleted files live only as noncurrent versions.

The latest versions (no --at, no --deleted) are streamed: a thread lists the
next pages while the objects of the pages already listed are downloaded, as
aws s3 cp and s5cmd do. --at and --deleted need every version of a key before
one can be chosen, so they list first.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import pwd
import queue
import re
import shlex
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import Connection

from matricula_backup import localfs, pricing
from matricula_backup.config import Settings
from matricula_backup.db.engine import open_state_db, open_state_db_for_dry_run
from matricula_backup.errors import ChecksumMismatch, RequestFailed
from matricula_backup.folders import backup_folders, bucket_name
from matricula_backup.prefetch import prefetched
from matricula_backup.report import Problem
from matricula_backup.s3 import buckets, client, objects

logger = logging.getLogger(__name__)

TIERS = {"bulk": "Bulk", "standard": "Standard"}
BATCH = 1000
PAGES_AHEAD = 4  # listing pages (1,000 entries each) fetched ahead of the downloads
FIRST_PAGE = 100  # entries in the first listing page: the downloads start on its answer
# Files written but not yet durable and in place: each holds its directory open, so
# well below the usual limit of 1,024 descriptors.
PLACE_BATCH = 256


@dataclass(frozen=True)
class RestoreOptions:
    selectors: tuple[Path, ...] = ()  # absolute paths: backup folders, subfolders or files
    tier: str = "Bulk"
    days: int = 7
    to: Path | None = None  # write under this directory instead of the original paths
    at: datetime | None = None  # the versions current at this time (deleted files too)
    overwrite: bool = False
    dry_run: bool = False
    prices: pricing.Prices = pricing.Prices()
    deleted: bool = False  # only files deleted since: the newest version before the deletion
    owner: bool = True  # set uid/gid from the metadata (only when running as root)
    keep_special_bits: bool = False  # setuid/setgid/sticky from the metadata
    umask: int = 0o022  # of the user who runs the restore (the tool's own is 077)


@dataclass
class RestoreReport:
    selected: int = 0
    selected_bytes: int = 0
    present: int = 0  # already in place: same size and mtime
    kept_newer: int = 0  # a local file newer than the backup was left alone
    requested: int = 0  # RestoreObject sent this run
    requested_bytes: int = 0
    in_progress: int = 0  # S3 is still restoring these
    in_progress_bytes: int = 0
    downloaded: int = 0
    downloaded_bytes: int = 0
    to_request: int = 0  # dry run: archived, not yet downloaded
    to_request_bytes: int = 0
    problems: list[Problem] = field(default_factory=list)


class _Result(NamedTuple):
    """What one step did to one object: outcome, detail (why, for an error), and for
    "written" the file that is put in place once durable."""

    outcome: str  # present, kept_newer, requested, in_progress, written, error
    detail: str = ""
    written: localfs.Written | None = None


class _Item(NamedTuple):  # one per object: made in 0.5 us, a frozen dataclass in 2.2 us
    bucket: str
    key: str
    version_id: str
    size: int
    target: str  # where it goes (or, for an unsafe key, s3://bucket/key), escaped for display
    downloaded_before: bool
    requested_before: bool
    archived: bool
    root: str = ""  # the backup folder, or --to
    parts: tuple[str, ...] = ()  # the checked path below root
    unsafe: str = ""  # why the key is not written


def run_restore(settings: Settings, options: RestoreOptions) -> RestoreReport:
    report = RestoreReport()
    store = client.connect(settings)
    engine = (
        open_state_db_for_dry_run(settings.cache_dir)
        if options.dry_run
        else open_state_db(settings.cache_dir)
    )
    try:
        with engine.connect() as conn:
            sources = _sources(conn, settings, store, report)
            if options.dry_run or options.at is not None or options.deleted:
                _list_selected_versions(conn, store, sources, options, report)
                _select(conn, options, report)
                _explain_deleted(conn, settings, options, report)
                if options.dry_run:
                    _estimate(conn, report)
                else:
                    batches = _batches(conn, sources, options)
                    _work(conn, store, batches, options, report, settings.workers)
            else:
                batches = _streamed_batches(conn, store, sources, options, report)
                _work(conn, store, batches, options, report, settings.workers)
                _explain_deleted(conn, settings, options, report)
    finally:
        engine.dispose()
    return report


# --- which buckets, which keys --------------------------------------------------------------


def _sources(
    conn: Connection, settings: Settings, store: client.Store, report: RestoreReport
) -> dict[str, Path]:
    """bucket -> backup folder, from state.db, config.json and (for roots) the bucket list.

    After a disaster neither state.db nor the subfolders of a root may exist:
    buckets named like ours are matched to a root by one of their keys.
    """
    sources = {
        row[1]: Path(row[0])
        for row in conn.exec_driver_sql("SELECT path, bucket FROM folders").all()
    }
    folders, _ = backup_folders(settings)
    for folder in folders:
        if str(folder.path) not in map(str, sources.values()):
            sources[bucket_name(folder.path, settings.bucket_prefix)] = folder.path
    if settings.roots:
        try:
            sources.update(_discover_root_buckets(settings, store, set(sources)))
        except client.S3_ERRORS as exc:
            report.problems.append(
                Problem(
                    "(bucket list)",
                    "restore",
                    "cannot list the buckets to find those of backup.roots: "
                    + client.describe(exc),
                )
            )
    return sources


def _discover_root_buckets(
    settings: Settings, store: client.Store, known: set[str]
) -> dict[str, Path]:
    """Buckets named like ours whose first key lies in a direct subfolder of a root."""
    found: dict[str, Path] = {}
    pattern = re.compile(rf"^{re.escape(settings.bucket_prefix)}[a-z0-9-]+-[0-9a-f]{{8}}$")
    for name in buckets.bucket_names(store):
        if name in known or not pattern.match(name):
            continue
        key = objects.first_key(store, name)
        if key is None:
            continue
        for root in settings.roots:
            root_prefix = str(root).lstrip("/") + "/"
            if key.startswith(root_prefix):
                folder = root / key[len(root_prefix) :].split("/", 1)[0]
                if bucket_name(folder, settings.bucket_prefix) == name:
                    found[name] = folder
    return found


def _list_selected_versions(
    conn: Connection,
    store: client.Store,
    sources: dict[str, Path],
    options: RestoreOptions,
    report: RestoreReport,
) -> None:
    """Every version and delete marker the selectors ask for, into ``temp.versions``."""
    targets = list(_prefixes(sources, options.selectors, report))
    for _ in _insert_pages(conn, _listing(store, targets), report):
        pass


def _streamed_batches(
    conn: Connection,
    store: client.Store,
    sources: dict[str, Path],
    options: RestoreOptions,
    report: RestoreReport,
) -> Iterator[list[_Item]]:
    """The latest versions, a listing page at a time, while the next pages are listed.

    The latest entry of a key is known from its own listing entry (IsLatest),
    so each page's objects can start at once; every entry still goes into
    ``temp.versions`` (a selector that matches only deleted files is
    explained from it afterwards).
    """
    conn.exec_driver_sql("DROP TABLE IF EXISTS temp.selection")
    conn.exec_driver_sql(
        "CREATE TEMP TABLE selection (bucket TEXT, key TEXT, version_id TEXT, size INTEGER, "
        "storage_class TEXT)"
    )
    targets = list(_prefixes(sources, options.selectors, report))
    last = 0
    with prefetched(_listing(store, targets), PAGES_AHEAD, "restore-list") as pages:
        for first, end in _insert_pages(conn, pages, report):
            conn.exec_driver_sql(
                "INSERT INTO temp.selection SELECT bucket, key, version_id, size, storage_class "
                "FROM temp.versions WHERE ord BETWEEN ? AND ? AND is_latest AND NOT is_marker "
                "ORDER BY ord",
                (first, end),
            )
            while True:
                batch, last, size = _next_batch(conn, sources, options, last)
                if not batch:
                    break
                report.selected += len(batch)
                report.selected_bytes += size
                yield batch


def _listing(
    store: client.Store, targets: list[tuple[str, str, bool]]
) -> Iterator[tuple[str, list[objects.Version] | str]]:
    """(bucket, a page of versions under the prefix) or (bucket, why it cannot be listed).

    Touches no database and no report: it may run on a thread of its own.
    """
    for bucket, prefix, exact in targets:
        try:
            for page in objects.list_versions(store, bucket, prefix, first_page=FIRST_PAGE):
                yield (
                    bucket,
                    [
                        entry
                        for entry in page
                        if not exact or entry.key == prefix or entry.key.startswith(prefix + "/")
                    ],
                )
        except client.S3_ERRORS as exc:
            yield bucket, client.describe(exc)


def _insert_pages(
    conn: Connection,
    pages: Iterable[tuple[str, list[objects.Version] | str]],
    report: RestoreReport,
) -> Iterator[tuple[int, int]]:
    """Each listed page into ``temp.versions``; yields the range of ``ord`` it took."""
    conn.exec_driver_sql("DROP TABLE IF EXISTS temp.versions")
    conn.exec_driver_sql(
        "CREATE TEMP TABLE versions (bucket TEXT, key TEXT, version_id TEXT, size INTEGER, "
        "last_modified_ms INTEGER, storage_class TEXT, is_marker INTEGER, is_latest INTEGER, "
        "ord INTEGER)"
    )
    order = 0
    for bucket, page in pages:
        if isinstance(page, str):
            report.problems.append(Problem(bucket, "restore", page))
            continue
        first = order + 1
        rows = []
        for entry in page:
            order += 1
            rows.append(
                (
                    bucket,
                    entry.key,
                    entry.version_id,
                    entry.size,
                    entry.last_modified_ms,
                    entry.storage_class,
                    entry.is_marker,
                    entry.is_latest,
                    order,
                )
            )
        if rows:
            conn.exec_driver_sql(
                "INSERT INTO temp.versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
            )
            yield first, order


def _prefixes(
    sources: dict[str, Path], selectors: tuple[Path, ...], report: RestoreReport
) -> Iterator[tuple[str, str, bool]]:
    """(bucket, key prefix, prefix must end at a '/' or the key's end) to list."""
    if not selectors:
        for bucket, folder in sorted(sources.items()):
            yield bucket, str(folder).lstrip("/") + "/", False
        return
    for selector in selectors:
        matched = False
        for bucket, folder in sorted(sources.items()):
            if selector == folder or selector.is_relative_to(folder):
                matched = True
                yield bucket, str(selector).lstrip("/"), selector != folder
            elif folder.is_relative_to(selector):
                matched = True
                yield bucket, str(folder).lstrip("/") + "/", False
        if not matched:
            report.problems.append(
                Problem(
                    str(selector),
                    "restore",
                    "not inside any backup folder known from "
                    "state.db, config.json or the buckets; nothing selected",
                )
            )


def _select(conn: Connection, options: RestoreOptions, report: RestoreReport) -> None:
    """The version of each key to restore, into ``temp.selection``."""
    conn.exec_driver_sql("DROP TABLE IF EXISTS temp.selection")
    if options.deleted:
        # Keys whose latest entry is a delete marker: the newest version before it.
        conn.exec_driver_sql(
            """CREATE TEMP TABLE selection AS
            SELECT bucket, key, version_id, size, storage_class FROM (
                SELECT *, row_number() OVER (
                    PARTITION BY bucket, key ORDER BY last_modified_ms DESC, ord) AS newest
                FROM temp.versions AS v WHERE NOT is_marker AND EXISTS (
                    SELECT 1 FROM temp.versions AS m WHERE m.bucket = v.bucket
                    AND m.key = v.key AND m.is_latest AND m.is_marker))
            WHERE newest = 1 ORDER BY bucket, key"""
        )
    elif options.at is None:
        conn.exec_driver_sql(
            "CREATE TEMP TABLE selection AS SELECT bucket, key, version_id, size, storage_class "
            "FROM temp.versions WHERE is_latest AND NOT is_marker ORDER BY bucket, key"
        )
    else:
        # The newest entry at or before --at; a delete marker there means the
        # file did not exist then.
        conn.exec_driver_sql(
            """CREATE TEMP TABLE selection AS
            SELECT bucket, key, version_id, size, storage_class FROM (
                SELECT *, row_number() OVER (
                    PARTITION BY bucket, key ORDER BY last_modified_ms DESC, ord) AS newest
                FROM temp.versions WHERE last_modified_ms <= ?)
            WHERE newest = 1 AND NOT is_marker ORDER BY bucket, key""",
            (int(options.at.timestamp() * 1000),),
        )
    count, size = conn.exec_driver_sql(
        "SELECT count(*), coalesce(sum(size), 0) FROM temp.selection"
    ).one()
    report.selected, report.selected_bytes = int(count), int(size)


def _explain_deleted(
    conn: Connection, settings: Settings, options: RestoreOptions, report: RestoreReport
) -> None:
    """A path that matches only deleted files: say when, and the command that restores it."""
    if options.at is not None or options.deleted:
        return
    for selector in options.selectors:
        prefix = str(selector).lstrip("/")
        match = "({0} = ? OR substr({0}, 1, length(?) + 1) = ? || '/')"
        (selected,) = conn.exec_driver_sql(
            f"SELECT count(*) FROM temp.selection WHERE {match.format('key')}",
            (prefix, prefix, prefix),
        ).one()
        if selected:
            continue
        rows = conn.exec_driver_sql(
            f"""SELECT m.last_modified_ms, (
                    SELECT max(v.last_modified_ms) FROM temp.versions AS v WHERE NOT v.is_marker
                    AND v.bucket = m.bucket AND v.key = m.key) AS version_ms
            FROM temp.versions AS m WHERE m.is_latest AND m.is_marker AND {match.format("m.key")}
            ORDER BY m.last_modified_ms""",
            (prefix, prefix, prefix),
        ).all()
        rows = [row for row in rows if row[1] is not None]
        if not rows:
            continue
        command = f"matricula-backup restore --cache {shlex.quote(str(settings.cache_dir))}"
        path = shlex.quote(str(selector))
        if len(rows) == 1:
            deleted_ms, version_ms = rows[0]
            message = (
                f"deleted at {_local(deleted_ms)}; nothing selected (only files that exist "
                f"now are restored by default). To restore it as it was then: {command} "
                f"--at {_before(version_ms, deleted_ms)} {path}"
            )
        else:
            message = (
                f"only deleted files match: {len(rows)} files, deleted between "
                f"{_local(rows[0][0])} and {_local(rows[-1][0])}; nothing selected. To restore "
                f"each as it was before its deletion: {command} --deleted {path} (or the "
                f"state at one time: --at TIME, e.g. --at "
                f"{_before(rows[-1][1], rows[-1][0])} for the last deletion)"
            )
        shown = localfs.escape(str(selector))
        report.problems.append(Problem(str(selector), "restore", message, shown))


def _local(ms: int) -> str:
    return f"{datetime.fromtimestamp(ms / 1000).astimezone():%Y-%m-%d %H:%M:%S %Z}"


def _before(version_ms: int, deleted_ms: int) -> str:
    """An --at time (local, with its offset) that selects the version, not the marker after it."""
    seconds = -(-version_ms // 1000)
    if seconds * 1000 < deleted_ms:
        moment = datetime.fromtimestamp(seconds).astimezone()
        return moment.isoformat(timespec="seconds")
    return datetime.fromtimestamp(version_ms / 1000).astimezone().isoformat(timespec="milliseconds")


def _estimate(conn: Connection, report: RestoreReport) -> None:
    """Dry run: the archived versions not downloaded yet would all be requested."""
    count, size = conn.exec_driver_sql(
        """SELECT count(*), coalesce(sum(s.size), 0) FROM temp.selection AS s
        LEFT JOIN restores AS r USING (bucket, key, version_id)
        WHERE s.storage_class IN ('DEEP_ARCHIVE', 'GLACIER') AND r.downloaded_at IS NULL"""
    ).one()
    report.to_request, report.to_request_bytes = int(count), int(size)


# --- the work --------------------------------------------------------------------------------


def _work(
    conn: Connection,
    store: client.Store,
    batches: Iterable[list[_Item]],
    options: RestoreOptions,
    report: RestoreReport,
    workers: int,
) -> None:
    """Every selected object: HEAD, RestoreObject, GET and write, ``workers`` requests
    at a time.

    Most objects of a restore after a disaster are readable, small and have
    nothing at their place: this thread starts their GETs itself, through the
    CRT (``objects.start_download``), and writes each file when its answer comes
    back. Handing them to worker threads cost two more thread wake-ups and GIL
    hand-overs per file: a 20,000-file restore made 255,000 voluntary context
    switches instead of 135,000, and spent 1.5 s more CPU on two cores
    (benchmarks/RESULTS.md). The other objects (a local file to compare,
    archived and not yet requested, large, or not readable after all) go to
    ``workers`` threads through one queue, in a window that keeps them fed.

    The answers and the workers' outcomes come back on one queue, in the order
    they finish. An answer frees its request slot as soon as it is taken: the
    next GET starts before the file is written (``answered`` holds at most one
    answer, since one is taken only when none waits). About once a second this
    thread makes the files written meanwhile durable and puts them in place
    (``Directories.put_in_place``: one syncfs, then the renames), then records
    the outcomes, a batch of rows per statement, and commits: a file is recorded
    as downloaded only once it is on disk.
    """
    window = workers * 4
    todo: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
    # (item, what a worker did or what a GET of this thread got, the GET's number or 0)
    finished: queue.SimpleQueue[tuple[_Item, Any, int]] = queue.SimpleQueue()
    queued = 0  # objects handed to the workers, not finished
    fetching: dict[int, tuple[float, Any, float]] = {}  # number -> deadline, request, limit
    timed_out: set[int] = set()
    numbers = itertools.count(1)
    written: list[tuple[_Item, localfs.Written]] = []
    results: list[tuple[_Item, str, str]] = []
    answered: collections.deque[tuple[_Item, Any]] = collections.deque()  # to write
    last_commit = time.monotonic()
    directories = localfs.Directories()

    def work() -> None:
        while (item := todo.get()) is not None:
            try:
                result = _restore_one(store, item, options, directories)
            except Exception as exc:  # a fault of ours: this object fails, not the run
                result = _internal_error(item, exc)
            finished.put((item, result, 0))

    def hand_over(item: _Item) -> None:
        nonlocal queued
        todo.put(item)
        queued += 1

    def may_fetch(item: _Item) -> bool:
        """Whether this thread can GET the object itself (if nothing is at its place)."""
        if item.unsafe or not _probably_readable(item):
            return False
        return objects.can_start_download(store, item.size)

    def fetch(item: _Item) -> bool:
        """Start the GET here if nothing is at the object's place; False: for a worker."""
        try:
            if directories.lstat(item.root, list(item.parts)) is not None:
                return False  # a local file: compared by a worker
        except (OSError, localfs.UnsafePath):
            return False  # reported by a worker
        number = next(numbers)

        def done(answer: Any) -> None:  # on a CRT thread
            finished.put((item, answer, number))

        try:
            sent, limit = objects.start_download(
                store, item.bucket, item.key, item.version_id, item.size, done
            )
        except Exception:  # a fault of ours: a worker tries the object the usual way
            logger.exception("restore %s: cannot start the GET", item.target)
            return False
        fetching[number] = (time.monotonic() + limit, sent, limit)
        return True

    def expire() -> None:
        """Give up the GETs that took too long: their answer is then a failure."""
        now = time.monotonic()
        for number, (deadline, sent, _) in fetching.items():
            if deadline < now and number not in timed_out:
                timed_out.add(number)
                sent.cancel()

    def outcome(item: _Item, result: str, detail: str) -> None:
        _count(report, item, result, detail)
        results.append((item, result, detail))

    def take_one() -> None:
        nonlocal queued
        try:
            item, answer, number = finished.get(timeout=1.0)
        except queue.Empty:
            expire()
            return
        if number:
            _, _, limit = fetching.pop(number)
            if number in timed_out:
                timed_out.discard(number)
                if isinstance(answer, RequestFailed):  # not a success that beat the cancel
                    answer = RequestFailed("GetObject", "Timeout", f"no answer in {limit:.0f} s")
            answered.append((item, answer))  # written once no request slot is free
            return
        queued -= 1
        keep(item, answer)

    def write_one() -> None:
        item, answer = answered.popleft()
        try:
            result = _write_answer(item, answer, options, directories)
        except Exception as exc:  # a fault of ours: this object fails, not the run
            result = _internal_error(item, exc)
        if result is None:  # not readable after all: HEAD and RestoreObject
            hand_over(item._replace(archived=True, requested_before=False))
        else:
            keep(item, result)

    def keep(item: _Item, result: _Result) -> None:
        if result.written is not None:
            written.append((item, result.written))
        else:
            outcome(item, result.outcome, result.detail)

    def settle(room: Callable[[], bool]) -> None:
        """Take outcomes until ``room()`` (or nothing is left); place and record those
        due."""
        nonlocal last_commit
        while (queued or fetching or answered) and not room():
            if answered:
                write_one()
            else:
                take_one()
        due = not (queued or fetching or answered) or time.monotonic() - last_commit > 1
        if due and fetching:
            expire()
        if (due or len(written) >= PLACE_BATCH) and written:
            placed = directories.put_in_place([entry for _, entry in written])
            for (item, _), error in zip(written, placed, strict=True):
                if error is None:
                    outcome(item, "downloaded", "")
                else:
                    problem = f"{type(error).__name__}: {error}"
                    outcome(item, "error", f"written, but cannot be put in place ({problem})")
            written.clear()
        if due and results:
            _record(conn, results, options.tier, int(time.time()))
            results.clear()
            conn.commit()
            last_commit = time.monotonic()

    def room_to_fetch() -> bool:  # a worker busy with an object holds a request slot
        return len(fetching) + min(queued, workers) < workers

    def room_to_hand_over() -> bool:
        return queued < window

    threads = [
        threading.Thread(target=work, name=f"restore-{number}", daemon=True)
        for number in range(workers)
    ]
    for thread in threads:
        thread.start()
    try:
        for batch in batches:
            for item in batch:
                if may_fetch(item):
                    settle(room_to_fetch)
                    if fetch(item):
                        continue
                settle(room_to_hand_over)
                hand_over(item)
    finally:
        settle(lambda: False)
        for _ in threads:
            todo.put(None)
        for thread in threads:
            thread.join()
        directories.close()


def _batches(
    conn: Connection, sources: dict[str, Path], options: RestoreOptions
) -> Iterator[list[_Item]]:
    last = 0
    while True:
        batch, last, _ = _next_batch(conn, sources, options, last)
        if not batch:
            return
        yield batch


def _next_batch(
    conn: Connection, sources: dict[str, Path], options: RestoreOptions, last: int
) -> tuple[list[_Item], int, int]:
    """The next rows of ``temp.selection`` after rowid ``last``: (items, last rowid, bytes)."""
    rows = conn.exec_driver_sql(
        """SELECT s.rowid, s.bucket, s.key, s.version_id, s.size,
                  r.downloaded_at IS NOT NULL AND r.target IS NOT NULL,
                  r.requested_at IS NOT NULL,
                  s.storage_class IN ('DEEP_ARCHIVE', 'GLACIER')
        FROM temp.selection AS s LEFT JOIN restores AS r USING (bucket, key, version_id)
        WHERE s.rowid > ? ORDER BY s.rowid LIMIT ?""",
        (last, BATCH),
    ).all()
    if not rows:
        return [], last, 0
    items = [_place(row, sources[row[1]], options.to) for row in rows]
    return items, int(rows[-1][0]), sum(int(row[4]) for row in rows)


def _place(row: Sequence[Any], folder: Path, to: Path | None) -> _Item:
    """Where the object of a selection row goes: checked below the backup folder (or
    --to), or why not."""
    _, bucket, key, version_id, size, downloaded, requested, archived = row
    flags = (bool(downloaded), bool(requested), bool(archived))
    prefix = str(folder).lstrip("/") + "/"
    try:
        if not key.startswith(prefix):
            raise localfs.UnsafeKey(f"the key lies outside the folder's prefix {prefix!r}")
        parts = localfs.split_key(key[len(prefix) :])
        if to is None:
            root = str(folder)
        else:
            root = str(to)
            parts = [*prefix.rstrip("/").split("/"), *parts]
        path = localfs.inside(root, parts)
    except localfs.UnsafeKey as exc:
        shown = f"s3://{bucket}/{localfs.escape(key)}"
        return _Item(bucket, key, version_id, size, shown, *flags, unsafe=f"not restored: {exc}")
    return _Item(bucket, key, version_id, size, path, *flags, root, tuple(parts))


def _restore_one(
    store: client.Store, item: _Item, options: RestoreOptions, directories: localfs.Directories
) -> _Result:
    """Do the next step for one object. Never raises."""
    if item.unsafe:
        return _Result("error", item.unsafe)
    return _guarded(item, options, lambda: _next_step(store, item, options, directories))


def _next_step(
    store: client.Store, item: _Item, options: RestoreOptions, directories: localfs.Directories
) -> _Result:
    parts = list(item.parts)
    local = directories.lstat(item.root, parts)
    if local is not None and not stat.S_ISREG(local.st_mode):
        if stat.S_ISDIR(local.st_mode):
            return _Result("error", "a directory is in the place of the file; left alone")
        if not options.overwrite:
            return _Result(
                "error",
                f"{_kind(local)} is in the place of the file; left alone (--overwrite "
                "replaces the link or file itself, never what it points to)",
            )
        local = None  # --overwrite: the rename replaces the entry itself
    if item.downloaded_before and local and local.st_size == item.size:
        return _Result("present", "")
    state = None
    if local is not None:
        state = objects.head(store, item.bucket, item.key, item.version_id)
        # The listing's size: HEAD of an archived object may not give it.
        same = local.st_size == item.size and local.st_mtime_ns == state.mtime_ns
        if same:
            return _Result("present", "")
        if not options.overwrite and (state.mtime_ns is None or local.st_mtime_ns > state.mtime_ns):
            return _Result("kept_newer", "a local file newer than the backup exists")
    elif _probably_readable(item):  # one GET instead of HEAD + GET
        try:
            return _download(store, item, options, None, directories)
        except client.S3_ERRORS as exc:
            if client.error_code(exc) != "InvalidObjectState":
                raise
    if state is None:
        state = objects.head(store, item.bucket, item.key, item.version_id)
    if state.archived and state.restore != "done":
        if state.restore == "ongoing":
            return _Result("in_progress", "")
        objects.request_restore(
            store, item.bucket, item.key, item.version_id, options.tier, options.days
        )
        return _Result("requested", "")
    return _download(store, item, options, state, directories)


def _probably_readable(item: _Item) -> bool:
    """Not archived, or its restore was asked for before: a GET is tried first."""
    return not item.archived or item.requested_before


def _internal_error(item: _Item, exc: Exception) -> _Result:
    """A fault of ours while restoring one object: that object fails, not the run."""
    logger.exception("restore %s", item.target)
    return _Result("error", f"internal error: {type(exc).__name__}: {exc}")


def _write_answer(
    item: _Item, answer: Any, options: RestoreOptions, directories: localfs.Directories
) -> _Result | None:
    """The file from the answer to ``objects.start_download``; None if the object is
    not readable (InvalidObjectState). Never raises."""
    if isinstance(answer, RequestFailed):
        if answer.code == "InvalidObjectState":
            return None
        return _Result("error", client.describe(answer))
    return _guarded(
        item,
        options,
        lambda: _write(item, objects.received(answer, item.size), options, directories),
    )


def _guarded(item: _Item, options: RestoreOptions, step: Callable[[], _Result]) -> _Result:
    """What ``step`` did, or the error it met as a problem of this object."""
    try:
        return step()
    except client.S3_ERRORS as exc:
        return _Result("error", client.describe(exc))
    except localfs.UnsafePath as exc:
        return _Result("error", f"not restored: {exc}")
    except PermissionError as exc:
        return _Result("error", _permission_message(exc, item, options))
    except (OSError, ChecksumMismatch) as exc:
        return _Result("error", f"{type(exc).__name__}: {exc}")


def _download(
    store: client.Store,
    item: _Item,
    options: RestoreOptions,
    state: objects.ObjectState | None,
    directories: localfs.Directories,
) -> _Result:
    fetched = objects.download(store, item.bucket, item.key, item.version_id, state, item.size)
    return _write(item, fetched, options, directories)


def _write(
    item: _Item,
    fetched: objects.Download,
    options: RestoreOptions,
    directories: localfs.Directories,
) -> _Result:
    """The file under a temporary name, verified, with its owner, mode and mtime."""
    dir_mode = 0o777 & ~options.umask
    with directories.create(item.root, list(item.parts), dir_mode) as output:
        for chunk in fetched.chunks():
            output.write(chunk)
        attributes = localfs.attributes(
            fetched.state.metadata,
            options.umask,
            options.keep_special_bits,
            set_owner=options.owner and os.geteuid() == 0,
        )
        written = output.finish(attributes, fetched.state.mtime_ns)
    return _Result("written", "", written)


def _kind(found: os.stat_result) -> str:
    return "a symlink" if stat.S_ISLNK(found.st_mode) else "a special file (not a regular file)"


def _permission_message(exc: PermissionError, item: _Item, options: RestoreOptions) -> str:
    """Who restores, what it could not do, and the two ways out."""
    uid = os.geteuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = f"uid {uid}"
    where = localfs.escape(exc.filename) if isinstance(exc.filename, str) else "its directory"
    advice = (
        "write access there, or restore under a directory of your own with --to DIR"
        if options.to is not None
        else "run the restore as root (owners and modes come back from the backup), or "
        "restore under a directory of your own with --to DIR"
    )
    return f"cannot write {where} as user {user}: permission denied; {advice}"


def _count(report: RestoreReport, item: _Item, outcome: str, detail: str) -> None:
    if outcome == "error":
        report.problems.append(Problem(item.bucket, "restore", detail, item.target))
        logger.warning("restore %s: %s", item.target, detail)
        return
    if outcome in ("present", "kept_newer"):
        setattr(report, outcome, getattr(report, outcome) + 1)
        if outcome == "kept_newer":
            logger.info("kept (newer than the backup): %s", item.target)
        return
    setattr(report, outcome, getattr(report, outcome) + 1)
    setattr(report, f"{outcome}_bytes", getattr(report, f"{outcome}_bytes") + item.size)
    logger.debug("%s: %s", outcome, item.target)


def _record(conn: Connection, results: list[tuple[_Item, str, str]], tier: str, now: int) -> None:
    """The outcomes of a batch of objects into ``restores``, one statement per kind."""
    conn.exec_driver_sql(
        """INSERT INTO restores (bucket, key, version_id, size) VALUES (?, ?, ?, ?)
        ON CONFLICT (bucket, key, version_id) DO NOTHING""",
        [(item.bucket, item.key, item.version_id, item.size) for item, _, _ in results],
    )
    requested = [
        (tier, now, *_where(item)) for item, outcome, _ in results if outcome == "requested"
    ]
    if requested:
        conn.exec_driver_sql(
            "UPDATE restores SET tier = ?, requested_at = ?, error = NULL "
            "WHERE bucket = ? AND key = ? AND version_id = ?",
            requested,
        )
    placed = [
        (now if outcome == "downloaded" else None, item.target, *_where(item))
        for item, outcome, _ in results
        if outcome in ("downloaded", "present")
    ]
    if placed:
        conn.exec_driver_sql(
            "UPDATE restores SET downloaded_at = coalesce(?, downloaded_at), target = ?, "
            "error = NULL WHERE bucket = ? AND key = ? AND version_id = ?",
            placed,
        )
    failed = [(detail, *_where(item)) for item, outcome, detail in results if outcome == "error"]
    if failed:
        conn.exec_driver_sql(
            "UPDATE restores SET error = ? WHERE bucket = ? AND key = ? AND version_id = ?",
            failed,
        )


def _where(item: _Item) -> tuple[str, str, str]:
    return item.bucket, item.key, item.version_id


def parse_at(value: str) -> datetime:
    """'2026-11-20' or '2026-11-20T14:30:15' (local time of this machine) or with an
    offset, e.g. '...Z' or '...+01:00'."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"--at {value!r}: give a date or time like 2026-11-20 or 2026-11-20T14:30"
        ) from None
    return moment if moment.tzinfo else moment.astimezone()
