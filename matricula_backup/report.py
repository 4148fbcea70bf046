"""What a run did: per-folder counts and the problems met (their text is in output.py).

Every stage appends to these plain objects; ``cli.py`` prints them, ``notify.py``
turns them into a Teams card and ``run.py`` records them in the database.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field

from matricula_backup.model import Problem as Problem

logger = logging.getLogger(__name__)

# A night when the network is down could fail a million uploads: all are counted
# and logged, the first ones are kept for the summary, the database and Teams.
MAX_KEPT_PROBLEMS = 1000


@dataclass
class FolderReport:
    """Counts for one backup folder in one run."""

    folder: str
    bucket: str
    files_seen: int = 0
    bytes_seen: int = 0
    to_upload: int = 0
    bytes_to_upload: int = 0
    to_check: int = 0  # of to_upload: only the mtime changed, uploaded only if the bytes differ
    bytes_to_check: int = 0
    to_delete: int = 0
    bytes_to_delete: int = 0
    uploaded: int = 0
    bytes_uploaded: int = 0
    deleted: int = 0
    already_in_bucket: int = 0  # matched by a --reset against the bucket listing
    same_content: int = 0  # mtime changed, bytes equal to the bucket's: not uploaded
    excluded: int = 0  # files and folders matched by backup.exclude
    changed_uploaded: int = 0  # new versions of files that had one (the 7-day change count)
    changes_held: int = 0  # changed files the mass change guard did not upload
    s3_requests: int = 0
    started_at: int = 0
    finished_at: int = 0
    errors: int = 0
    to_extend: int = 0  # current versions whose Object Lock retention is due to be extended
    extended: int = 0


@dataclass
class RunReport:
    """The whole run: what each folder did and every problem met."""

    dry_run: bool = False
    reset: bool = False
    hostname: str = field(default_factory=socket.gethostname)
    folders: list[FolderReport] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # the first MAX_KEPT_PROBLEMS
    error_count: int = 0
    s3_requests: int = 0
    requests_by_operation: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False
    # Not errors: what S3 refused that the backup can live without (hardening).
    warnings: list[str] = field(default_factory=list)

    def add_warning(self, message: str) -> None:
        logger.warning("%s", message)
        if message not in self.warnings:
            self.warnings.append(message)

    def add_problem(self, problem: Problem, report: FolderReport | None = None) -> None:
        """Count, log and (the first ones) keep a problem; the run goes on."""
        logger.warning("%s", problem)
        self.error_count += 1
        if report is not None:
            report.errors += 1
        if len(self.problems) < MAX_KEPT_PROBLEMS:
            self.problems.append(problem)

    @property
    def unlisted_problems(self) -> int:
        return self.error_count - len(self.problems)

    def totals(self) -> FolderReport:
        total = FolderReport(folder="all", bucket="")
        for report in self.folders:
            for name in (
                "files_seen",
                "bytes_seen",
                "to_upload",
                "bytes_to_upload",
                "to_check",
                "bytes_to_check",
                "to_delete",
                "bytes_to_delete",
                "uploaded",
                "bytes_uploaded",
                "deleted",
                "already_in_bucket",
                "same_content",
                "to_extend",
                "extended",
            ):
                setattr(total, name, getattr(total, name) + getattr(report, name))
        total.errors = self.error_count
        return total


def human_bytes(count: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
