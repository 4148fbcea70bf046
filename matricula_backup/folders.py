"""From config to backup folders, and from a backup folder to its bucket name.

A backup folder is every ``backup.folders`` entry plus every direct subfolder of
every ``backup.roots`` entry. Each one is backed up on its own into its own
bucket. The bucket name is derived once (readable name + short hash of the
absolute path), then recorded in the state database and read back from there.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import unicodedata
from pathlib import Path

from matricula_backup.access import denied, read_hint
from matricula_backup.config import CONFIG_NAME, Settings
from matricula_backup.errors import ConfigError
from matricula_backup.exclude import Excludes
from matricula_backup.model import BackupFolder as BackupFolder
from matricula_backup.model import Problem

_BAD_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BAD_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
HASH_LENGTH = 8
# Loose entries of one root listed as problems; beyond that one line counts them.
LOOSE_LISTED_PER_ROOT = 20
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

logger = logging.getLogger(__name__)


def backup_folders(settings: Settings) -> tuple[list[BackupFolder], list[Problem]]:
    """List the backup folders; a missing or unreadable root is a problem, not a stop.

    Whatever lies in a root besides its subfolders (files, symlinks, FIFOs) is
    a problem of the run until ``backup.exclude`` names it: nothing there is
    skipped in silence. A symlinked subfolder is backed up only with
    ``backup.follow_root_symlinks``, and never a second time through another
    path to the same directory.
    """
    problems: list[Problem] = []
    result = [
        BackupFolder(path, f"backup.folders[{index}]")
        for index, path in enumerate(settings.folders)
    ]
    linked: list[BackupFolder] = []
    excludes = Excludes(settings.exclude)
    for index, root in enumerate(settings.roots):
        source = f"backup.roots[{index}]"
        try:
            with os.scandir(root) as iterator:
                entries = sorted(iterator, key=lambda entry: entry.name)
        except FileNotFoundError:
            problems.append(
                Problem(str(root), "config", f"{source}: folder missing (not mounted?): {root}")
            )
            continue
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if denied(exc):
                reason += f" ({read_hint()})"
            problems.append(Problem(str(root), "config", f"{source}: cannot list: {reason}"))
            continue
        subfolders, links = _root_entries(settings, root, source, entries, excludes, problems)
        if not subfolders and not links:
            problems.append(
                Problem(
                    str(root),
                    "config",
                    f"{source}: has no subfolders, so nothing of it is backed up: {root}",
                )
            )
        result.extend(BackupFolder(path, source) for path in subfolders)
        linked.extend(BackupFolder(path, source) for path in links)
    _refuse_overlaps(result + linked)
    return _one_backup_per_directory(result, linked, problems), problems


def _root_entries(
    settings: Settings,
    root: Path,
    source: str,
    entries: list[os.DirEntry[str]],
    excludes: Excludes,
    problems: list[Problem],
) -> tuple[list[Path], list[Path]]:
    """The real and the (followed) symlinked subfolders of a root; the rest is reported."""
    subfolders: list[Path] = []
    links: list[Path] = []
    loose: list[Problem] = []
    for entry in entries:
        if not _utf8(entry.path):
            problems.append(
                Problem(
                    str(root),
                    "config",
                    f"{source}: name is not valid UTF-8, so it cannot be backed up; rename it",
                    printable(entry.path),
                )
            )
            continue
        # Names as everywhere; a pattern with '/' against the absolute path
        # (without its leading '/'): "/images/archive/liesmich.txt".
        if excludes and excludes.excluded(entry.name, entry.path.lstrip("/")):
            logger.debug("excluded by backup.exclude: %s", entry.path)
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                subfolders.append(Path(entry.path))
                continue
            if entry.is_symlink() and entry.is_dir():
                if settings.follow_root_symlinks:
                    links.append(Path(entry.path))
                else:
                    problems.append(
                        Problem(
                            str(root),
                            "config",
                            f"{source}: symlinked subfolder (-> {printable(_target(entry))}) is "
                            "not backed up; set backup.follow_root_symlinks to true to back up "
                            "its target under this path, or exclude it with backup.exclude",
                            printable(entry.path),
                        )
                    )
                continue
            kind = _kind(entry)
        except OSError as exc:
            kind = f"an entry that cannot be examined ({exc.strerror or exc})"
        loose.append(
            Problem(
                str(root),
                "config",
                f"{source}: {kind} lying directly in the root is not backed up (only the "
                "subfolders of a root are); move it into a subfolder, or exclude it with "
                "backup.exclude",
                printable(entry.path),
            )
        )
    problems.extend(loose[:LOOSE_LISTED_PER_ROOT])
    if len(loose) > LOOSE_LISTED_PER_ROOT:
        problems.append(
            Problem(
                str(root),
                "config",
                f"{source}: {len(loose) - LOOSE_LISTED_PER_ROOT} more entries lying directly "
                f"in the root are not backed up (not listed here): {root}",
            )
        )
    return subfolders, links


def _one_backup_per_directory(
    folders: list[BackupFolder], linked: list[BackupFolder], problems: list[Problem]
) -> list[BackupFolder]:
    """Drop (and report) a backup folder whose real directory another one already backs up.

    Real folders come first, then symlinked root subfolders by name: a link to
    a directory that is a backup folder itself, or inside or around one, and
    the second of two links to one directory, would be backed up twice.
    """
    kept: list[tuple[str, BackupFolder]] = []
    for folder in folders + linked:
        real = os.path.realpath(folder.path)
        clash = next(
            (
                other
                for other_real, other in kept
                if real == other_real
                or real.startswith(other_real.rstrip("/") + "/")
                or other_real.startswith(real.rstrip("/") + "/")
            ),
            None,
        )
        if clash is None:
            kept.append((real, folder))
            continue
        problems.append(
            Problem(
                printable(str(folder.path)),
                "config",
                f"{folder.source}: is the directory {printable(real)}, which backup folder "
                f"{printable(str(clash.path))} ({clash.source}) "
                "already backs up (the same directory, or one inside or around it): not "
                "backed up twice; exclude one of them with backup.exclude",
                printable(str(folder.path)),
            )
        )
    return [folder for _real, folder in kept]


def _target(entry: os.DirEntry[str]) -> str:
    try:
        return os.readlink(entry.path)
    except OSError:
        return "?"


def _kind(entry: os.DirEntry[str]) -> str:
    if entry.is_symlink():
        return "a symlink to a file" if entry.is_file() else "a dangling symlink"
    if entry.is_file(follow_symlinks=False):
        return "a file"
    return "a special file (FIFO, socket or device)"


def printable(path: str) -> str:
    """A path safe to print, log and send: bytes that are not UTF-8 and control
    characters (a newline in a name) as backslash escapes."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def _refuse_overlaps(folders: list[BackupFolder]) -> None:
    """A file must belong to exactly one backup (one bucket, one table)."""
    by_path = sorted(folders, key=lambda folder: folder.path.parts)
    for outer, inner in zip(by_path, by_path[1:], strict=False):
        if inner.path.is_relative_to(outer.path):
            raise ConfigError(
                f"{CONFIG_NAME}: {inner.source}: {inner.path} lies inside backup folder "
                f"{outer.path} ({outer.source}); each file must belong to one backup folder"
            )


def bucket_name(folder: Path, prefix: str = "") -> str:
    """A valid, readable, deterministic bucket name for a backup folder.

    ``/images/Wien/Taufbücher`` -> ``<prefix>taufbucher-1a2b3c4d``: the folder's
    name made safe, then 8 hex digits of the SHA-256 of its absolute path, so two
    folders with the same name in different places get different buckets.
    """
    digest = hashlib.sha256(os.fsencode(str(folder))).hexdigest()[:HASH_LENGTH]
    lead = prefix
    if not lead and _slug(folder.name).startswith(_BAD_PREFIXES):
        lead = "mb-"  # names such as "sthree-..." are reserved by AWS
    room = 63 - len(lead) - 1 - HASH_LENGTH
    slug = _slug(folder.name)[:room].strip("-") or "folder"
    name = f"{lead}{slug}-{digest}"
    if not is_valid_bucket_name(name):
        raise ValueError(f"cannot derive a valid bucket name for {folder}: {name}")
    return name


def is_valid_bucket_name(name: str) -> bool:
    """The S3 bucket naming rules that matter for names we make (no dots)."""
    return (
        _BUCKET_RE.match(name) is not None
        and not name.startswith(_BAD_PREFIXES)
        and not name.endswith(_BAD_SUFFIXES)
    )


def table_name(bucket: str) -> str:
    """The SQLite table of a backup folder, named after its bucket: files_<bucket>."""
    return "files_" + bucket.replace("-", "_")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _slug(name: str) -> str:
    # "Taufbücher 1890" -> "taufbucher-1890": accents dropped, anything else to '-'.
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
