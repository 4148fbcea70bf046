"""From config to backup folders, and from a backup folder to its bucket name.

A backup folder is every ``backup.folders`` entry plus every direct subfolder of
every ``backup.roots`` entry. Each one is backed up on its own into its own
bucket. The bucket name is derived once (readable name + short hash of the
absolute path), then recorded in the state database and read back from there.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from matricula_backup.access import denied, read_hint
from matricula_backup.config import CONFIG_NAME, Settings
from matricula_backup.errors import ConfigError
from matricula_backup.report import Problem

_BAD_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BAD_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
HASH_LENGTH = 8


@dataclass(frozen=True)
class BackupFolder:
    """One folder that is backed up on its own, with where it came from in config.json."""

    path: Path
    source: str  # e.g. "backup.folders[0]" or "backup.roots[1]"

    @property
    def key_prefix(self) -> str:
        """Object keys of this folder start with this: the absolute path without its '/'."""
        return str(self.path).lstrip("/") + "/"


def backup_folders(settings: Settings) -> tuple[list[BackupFolder], list[Problem]]:
    """List the backup folders; a missing or unreadable root is a problem, not a stop."""
    problems: list[Problem] = []
    result = [
        BackupFolder(path, f"backup.folders[{index}]")
        for index, path in enumerate(settings.folders)
    ]
    for index, root in enumerate(settings.roots):
        source = f"backup.roots[{index}]"
        try:
            with os.scandir(root) as entries:
                subfolders = sorted(
                    Path(entry.path) for entry in entries if entry.is_dir(follow_symlinks=False)
                )
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
        for path in [p for p in subfolders if not _utf8(str(p))]:
            subfolders.remove(path)
            problems.append(
                Problem(
                    str(root),
                    "config",
                    f"{source}: subfolder name is not valid UTF-8, so "
                    "it cannot be backed up; rename it",
                    os.fsencode(path).decode("utf-8", "backslashreplace"),
                )
            )
        if not subfolders:
            problems.append(
                Problem(
                    str(root),
                    "config",
                    f"{source}: has no subfolders, so nothing of it is backed up: {root}",
                )
            )
        result.extend(BackupFolder(path, source) for path in subfolders)
    _refuse_overlaps(result)
    return result, problems


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
