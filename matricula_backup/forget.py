"""The end of a backup folder's life: finding folders that are gone, and ``forget``.

A backup folder recorded in ``state.db`` that the config no longer produces (it
was removed from ``config.json``, or a subfolder of a root was renamed or
removed) is reported by every run until ``matricula-backup forget`` closes it.
Forgetting drops its rows from ``state.db`` (its files table, its ``folders``
row, its restore records); the history (``runs``, ``run_folders``,
``problems``) is kept, and so are its bucket and every object in it: deleting a
bucket is a decision this tool leaves to the administrator (see the README).

A folder that is still configured but missing (a share that is not mounted)
is reported by the run itself, folder by folder (``run.py``).
"""

from __future__ import annotations

import logging
import shlex
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, delete, func, select, text
from sqlalchemy.exc import SQLAlchemyError

from matricula_backup.config import Settings
from matricula_backup.db.engine import (
    DB_NAME,
    database_error,
    open_state_db,
    open_state_db_for_dry_run,
)
from matricula_backup.db.schema import folders as folders_table
from matricula_backup.db.schema import restores, run_folders
from matricula_backup.errors import ConfigError
from matricula_backup.folders import BackupFolder, backup_folders, printable
from matricula_backup.report import Problem

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KnownFolder:
    """A backup folder as ``state.db`` records it."""

    id: int
    path: str
    bucket: str
    table: str
    last_backup_at: int | None  # the end of its last run without errors, if any


@dataclass(frozen=True)
class Plan:
    """What ``forget`` drops for one folder."""

    folder: KnownFolder
    file_rows: int
    restore_rows: int


def known_folders(conn: Connection) -> list[KnownFolder]:
    last_ok = (
        select(func.max(run_folders.c.finished_at))
        .where(run_folders.c.folder == folders_table.c.path, run_folders.c.errors == 0)
        .scalar_subquery()
    )
    rows = conn.execute(
        select(
            folders_table.c.id,
            folders_table.c.path,
            folders_table.c.bucket,
            folders_table.c.table_name,
            last_ok,
        ).order_by(folders_table.c.path)
    ).all()
    return [KnownFolder(*row) for row in rows]


def gone_folders(
    conn: Connection, settings: Settings, configured: list[BackupFolder]
) -> list[KnownFolder]:
    """Recorded folders the config no longer produces.

    Not those of a root that is missing, unreadable or empty this run (an
    unmounted share): the root itself is reported, and its subfolders come back
    with it.
    """
    known = known_folders(conn)
    gone = set(gone_paths(settings, configured, [folder.path for folder in known]))
    return [folder for folder in known if folder.path in gone]


def gone_paths(
    settings: Settings, configured: list[BackupFolder], recorded: list[str]
) -> list[str]:
    """The recorded paths of ``gone_folders``."""
    produced = {str(folder.path) for folder in configured}
    roots_with_folders = {
        folder.path.parent for folder in configured if folder.source.startswith("backup.roots")
    }
    silent_roots = set(settings.roots) - roots_with_folders
    return [
        path for path in recorded if path not in produced and Path(path).parent not in silent_roots
    ]


def gone_problem(folder: KnownFolder, cache_dir: Path) -> Problem:
    path = printable(folder.path)
    try:
        present = Path(folder.path).is_dir()
    except OSError:
        present = False
    why = "no longer a backup folder of config.json" + (
        "" if present else ", and its directory is gone"
    )
    return Problem(
        path,
        "config",
        f"{why}; state.db still records it (bucket {folder.bucket}, last successful backup "
        f"{when(folder.last_backup_at)}) and nothing of it is backed up. If it was renamed, "
        "moved or removed on purpose, close it with: matricula-backup forget --cache "
        f"{cache_dir} {shlex.quote(path)} (its bucket and objects stay; the README says how "
        "to delete a bucket). If it should still be backed up, put it back in config.json",
    )


def last_backup_at(conn: Connection, path: str) -> int | None:
    """The end of the folder's last run without errors, if any."""
    return conn.execute(
        select(func.max(run_folders.c.finished_at)).where(
            run_folders.c.folder == path, run_folders.c.errors == 0
        )
    ).scalar()


def missing_hint(path: Path, cache_dir: Path) -> str:
    """What to do about a configured folder that is missing (``run.py`` reports it)."""
    return (
        f"Mount it; if it is gone for good, remove it from config.json and run: "
        f"matricula-backup forget --cache {cache_dir} {shlex.quote(printable(str(path)))}"
    )


def plan(conn: Connection, paths: list[str]) -> tuple[list[Plan], list[str]]:
    """What forgetting ``paths`` drops, and the paths that state.db does not know."""
    known = {folder.path: folder for folder in known_folders(conn)}
    plans: list[Plan] = []
    unknown: list[str] = []
    tables = {
        row[0] for row in conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))
    }
    for path in paths:
        folder = known.get(path)
        if folder is None:
            unknown.append(path)
            continue
        file_rows = (
            conn.execute(text(f'SELECT count(*) FROM "{folder.table}"')).scalar_one()
            if folder.table in tables
            else 0
        )
        restore_rows = conn.execute(
            select(func.count()).select_from(restores).where(restores.c.bucket == folder.bucket)
        ).scalar_one()
        plans.append(Plan(folder, file_rows, restore_rows))
    return plans, unknown


def forget(conn: Connection, plans: list[Plan]) -> None:
    """Drop the rows of the planned folders, all in one transaction; buckets are untouched."""
    for item in plans:
        folder = item.folder
        conn.execute(text(f'DROP TABLE IF EXISTS "{folder.table}"'))
        conn.execute(delete(restores).where(restores.c.bucket == folder.bucket))
        conn.execute(delete(folders_table).where(folders_table.c.id == folder.id))
        logger.info(
            "forgot %s: dropped table %s (%d rows) and %d restore records; bucket %s kept",
            folder.path,
            folder.table,
            item.file_rows,
            item.restore_rows,
            folder.bucket,
        )
    conn.commit()


def when(seconds: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds)) if seconds else "never"


@dataclass
class ForgetReport:
    plans: list[Plan]
    unknown: list[str]  # not recorded in state.db: nothing to do
    still_configured: list[str]  # configured but missing: forgotten, yet reported missing


def run_forget(settings: Settings, paths: list[str], dry_run: bool) -> ForgetReport:
    """Forget ``paths`` (all or none); refuse a folder that is configured and present."""
    configured, _problems = backup_folders(settings)
    sources = {str(folder.path): folder.source for folder in configured}
    refused = [path for path in paths if path in sources and Path(path).is_dir()]
    if refused:
        raise ConfigError(
            "; ".join(f"{printable(path)} ({sources[path]})" for path in refused)
            + ": still a backup folder of config.json and present on disk, so it is backed "
            "up and cannot be forgotten; remove it from config.json (or, for a subfolder of "
            "a root, exclude it with backup.exclude) first, then forget it"
        )
    still = [path for path in paths if path in sources]
    database = settings.cache_dir / DB_NAME
    if not database.exists() and not database.is_symlink():
        return ForgetReport([], list(paths), still)
    engine = (
        open_state_db_for_dry_run(settings.cache_dir)
        if dry_run
        else open_state_db(settings.cache_dir)
    )
    try:
        with engine.connect() as conn:
            plans, unknown = plan(conn, paths)
            if not dry_run:
                forget(conn, plans)
    except (SQLAlchemyError, sqlite3.Error) as exc:
        raise database_error(database, exc) from None
    finally:
        engine.dispose()
    return ForgetReport(plans, unknown, still)
