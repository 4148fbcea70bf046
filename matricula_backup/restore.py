"""Restore from Deep Archive: select versions, ask S3 to restore them, download them.

Deep Archive objects cannot be read until S3 restores a temporary copy
(Standard tier: within 12 hours, Bulk: within 48). So a restore is a command
run again and again (by hand or from cron) until everything is back:

    list versions (SQL picks latest, or as of --at)
      -> per object: already in place? newer local file? (kept)
      -> archived and not restored: RestoreObject (recorded in ``restores``)
      -> restore running: reported as in progress
      -> readable: download to a temporary file, verify size and SHA-256,
         set the mtime, rename into place; recorded as downloaded

It works from the buckets, not from the files tables: after a disaster
state.db may be gone, and deleted files live only as noncurrent versions.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection

from matricula_backup import pricing, s3
from matricula_backup.config import Settings
from matricula_backup.db.engine import open_state_db, open_state_db_for_dry_run
from matricula_backup.folders import backup_folders, bucket_name
from matricula_backup.report import Problem

logger = logging.getLogger(__name__)

TIERS = {"bulk": "Bulk", "standard": "Standard"}
BATCH = 200


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


@dataclass(frozen=True)
class _Item:
    bucket: str
    key: str
    version_id: str
    size: int
    target: str
    downloaded_before: bool


def run_restore(settings: Settings, options: RestoreOptions) -> RestoreReport:
    report = RestoreReport()
    store = s3.connect(settings)
    engine = (
        open_state_db_for_dry_run(settings.cache_dir)
        if options.dry_run
        else open_state_db(settings.cache_dir)
    )
    try:
        with engine.connect() as conn:
            sources = _sources(conn, settings, store, report)
            _list_selected_versions(conn, store, sources, options, report)
            _select(conn, options, report)
            if options.dry_run:
                _estimate(conn, report)
            else:
                _work(conn, store, options, report, settings.workers)
    finally:
        engine.dispose()
    return report


# --- which buckets, which keys --------------------------------------------------------------


def _sources(
    conn: Connection, settings: Settings, store: s3.Store, report: RestoreReport
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
        except s3.S3_ERRORS as exc:
            report.problems.append(
                Problem(
                    "(bucket list)",
                    "restore",
                    f"cannot list the buckets to find those of backup.roots: {s3.describe(exc)}",
                )
            )
    return sources


def _discover_root_buckets(settings: Settings, store: s3.Store, known: set[str]) -> dict[str, Path]:
    """Buckets named like ours whose first key lies in a direct subfolder of a root."""
    found: dict[str, Path] = {}
    pattern = re.compile(rf"^{re.escape(settings.bucket_prefix)}[a-z0-9-]+-[0-9a-f]{{8}}$")
    for bucket in store.client.list_buckets().get("Buckets", []):
        name = bucket["Name"]
        if name in known or not pattern.match(name):
            continue
        contents = store.client.list_objects_v2(Bucket=name, MaxKeys=1).get("Contents", [])
        if not contents:
            continue
        key = contents[0]["Key"]
        for root in settings.roots:
            root_prefix = str(root).lstrip("/") + "/"
            if key.startswith(root_prefix):
                folder = root / key[len(root_prefix) :].split("/", 1)[0]
                if bucket_name(folder, settings.bucket_prefix) == name:
                    found[name] = folder
    return found


def _list_selected_versions(
    conn: Connection,
    store: s3.Store,
    sources: dict[str, Path],
    options: RestoreOptions,
    report: RestoreReport,
) -> None:
    """Every version and delete marker the selectors ask for, into ``temp.versions``."""
    conn.exec_driver_sql("DROP TABLE IF EXISTS temp.versions")
    conn.exec_driver_sql(
        "CREATE TEMP TABLE versions (bucket TEXT, key TEXT, version_id TEXT, size INTEGER, "
        "last_modified_ms INTEGER, storage_class TEXT, is_marker INTEGER, is_latest INTEGER, "
        "ord INTEGER)"
    )
    order = 0
    for bucket, prefix, exact in _prefixes(sources, options.selectors, report):
        try:
            for page in s3.list_versions(store, bucket, prefix):
                rows = []
                for entry in page:
                    if exact and entry.key != prefix and not entry.key.startswith(prefix + "/"):
                        continue
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
        except s3.S3_ERRORS as exc:
            report.problems.append(Problem(bucket, "restore", s3.describe(exc)))


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
    if options.at is None:
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
    store: s3.Store,
    options: RestoreOptions,
    report: RestoreReport,
    workers: int,
) -> None:
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore") as pool:
        for batch in _batches(conn, options):
            outcomes = list(pool.map(lambda item: _restore_one(store, item, options), batch))
            now = int(time.time())
            for item, (outcome, detail) in zip(batch, outcomes, strict=True):
                _count(report, item, outcome, detail)
                _record(conn, item, outcome, detail, options.tier, now)
            conn.commit()


def _batches(conn: Connection, options: RestoreOptions) -> Iterator[list[_Item]]:
    last = 0
    while True:
        rows = conn.exec_driver_sql(
            """SELECT s.rowid, s.bucket, s.key, s.version_id, s.size,
                      r.downloaded_at IS NOT NULL AND r.target IS NOT NULL
            FROM temp.selection AS s LEFT JOIN restores AS r USING (bucket, key, version_id)
            WHERE s.rowid > ? ORDER BY s.rowid LIMIT ?""",
            (last, BATCH),
        ).all()
        if not rows:
            return
        last = rows[-1][0]
        yield [
            _Item(row[1], row[2], row[3], row[4], _target(row[2], options.to), bool(row[5]))
            for row in rows
        ]


def _target(key: str, to: Path | None) -> str:
    original = "/" + key
    return str(to / key) if to else original


def _restore_one(store: s3.Store, item: _Item, options: RestoreOptions) -> tuple[str, str]:
    """Do the next step for one object; returns (outcome, detail). Never raises."""
    try:
        local = _lstat(item.target)
        if item.downloaded_before and local and local.st_size == item.size:
            return "present", ""
        state = s3.head(store, item.bucket, item.key, item.version_id)
        if local is not None:
            # The listing's size: HEAD of an archived object may not give it.
            same = local.st_size == item.size and local.st_mtime_ns == state.mtime_ns
            if same:
                return "present", ""
            if not options.overwrite and (
                state.mtime_ns is None or local.st_mtime_ns > state.mtime_ns
            ):
                return "kept_newer", "a local file newer than the backup exists"
        if state.archived and state.restore != "done":
            if state.restore == "ongoing":
                return "in_progress", ""
            s3.request_restore(
                store, item.bucket, item.key, item.version_id, options.tier, options.days
            )
            return "requested", ""
        s3.download(store, item.bucket, item.key, item.version_id, item.target, state, item.size)
        return "downloaded", ""
    except s3.S3_ERRORS as exc:
        return "error", s3.describe(exc)
    except (OSError, s3.ChecksumMismatch) as exc:
        return "error", f"{type(exc).__name__}: {exc}"


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


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


def _record(conn: Connection, item: _Item, outcome: str, detail: str, tier: str, now: int) -> None:
    conn.exec_driver_sql(
        """INSERT INTO restores (bucket, key, version_id, size) VALUES (?, ?, ?, ?)
        ON CONFLICT (bucket, key, version_id) DO NOTHING""",
        (item.bucket, item.key, item.version_id, item.size),
    )
    where = (item.bucket, item.key, item.version_id)
    if outcome == "requested":
        conn.exec_driver_sql(
            "UPDATE restores SET tier = ?, requested_at = ?, error = NULL "
            "WHERE bucket = ? AND key = ? AND version_id = ?",
            (tier, now, *where),
        )
    elif outcome in ("downloaded", "present"):
        conn.exec_driver_sql(
            "UPDATE restores SET downloaded_at = coalesce(?, downloaded_at), target = ?, "
            "error = NULL WHERE bucket = ? AND key = ? AND version_id = ?",
            (now if outcome == "downloaded" else None, item.target, *where),
        )
    elif outcome == "error":
        conn.exec_driver_sql(
            "UPDATE restores SET error = ? WHERE bucket = ? AND key = ? AND version_id = ?",
            (detail, *where),
        )


def restore_lines(report: RestoreReport, options: RestoreOptions) -> list[str]:
    """The summary a person reads after each restore run."""
    gib = pricing.GB
    when = f" as of {options.at:%Y-%m-%d %H:%M %Z}" if options.at else ""
    lines = [f"selected: {report.selected} files ({report.selected_bytes / gib:.2f} GiB){when}"]
    if options.dry_run:
        lines.append(
            f"to restore from Deep Archive: {report.to_request} files "
            f"({report.to_request_bytes / gib:.2f} GiB) not downloaded yet"
        )
        return lines + _cost_lines(report, options)
    lines += [
        f"already in place: {report.present}; newer local files kept: {report.kept_newer}",
        f"restore requested now: {report.requested} files "
        f"({report.requested_bytes / gib:.2f} GiB, {options.tier} tier)",
        f"still being restored by S3: {report.in_progress} files "
        f"({report.in_progress_bytes / gib:.2f} GiB)",
        f"downloaded and verified: {report.downloaded} files "
        f"({report.downloaded_bytes / gib:.2f} GiB)",
    ]
    if report.requested:
        lines += _cost_lines(report, options)
    if report.requested or report.in_progress:
        lines.append(
            f"not finished: run the same command again in a few hours (S3 needs up to "
            f"{pricing.RESTORE_HOURS[options.tier]} hours for the {options.tier} tier); it "
            "downloads what has become readable and asks for nothing twice"
        )
    elif not report.problems:
        lines.append("restore complete")
    return lines


def _cost_lines(report: RestoreReport, options: RestoreOptions) -> list[str]:
    """What the restore costs at Deep Archive prices (see pricing.py)."""
    tier = options.tier
    objects, size = (
        (report.to_request, report.to_request_bytes)
        if options.dry_run
        else (report.requested, report.requested_bytes)
    )
    verb = "would cost" if options.dry_run else "cost"
    cost = pricing.usd(options.prices.restore_cost(tier, objects, size))
    return [
        f"restore requests ({tier}): {objects} objects, {size / pricing.GB:.2f} GiB "
        f"{verb} about {cost}; S3 makes them "
        f"readable within {pricing.RESTORE_HOURS[tier]} hours for {options.days} days",
        f"downloading them: about {pricing.usd(options.prices.download_cost(objects, size))} "
        "(GET requests and transfer out of AWS)",
    ]


def parse_at(value: str) -> datetime:
    """'2026-11-20' or '2026-11-20T14:30' (local time) or with an offset, e.g. '...Z'."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"--at {value!r}: give a date or time like 2026-11-20 or 2026-11-20T14:30"
        ) from None
    return moment if moment.tzinfo else moment.astimezone()
