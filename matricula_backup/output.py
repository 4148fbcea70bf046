"""The text of results: every line a command shows, built here and printed by cli.py.

These functions return strings and print nothing; ``cli.py`` decides where each
goes (stdout, stderr, the log) and the exit code. Names that come from outside
(file names, keys from a bucket) are escaped with ``printable`` here or by the
caller, as each function says.

Only light modules are imported at load: ``--version`` must stay fast (issue 13).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from matricula_backup.escape import printable
from matricula_backup.pricing import cost_lines
from matricula_backup.report import folder_line, run_line

if TYPE_CHECKING:
    from matricula_backup.config import ObjectLock
    from matricula_backup.folders import BackupFolder
    from matricula_backup.pricing import Prices
    from matricula_backup.report import RunReport
    from matricula_backup.verify import FolderCheck, VerifyReport

SHOWN_PROBLEMS = 20  # on stderr; the log has them all


def problem_lines(problems: Sequence[object], total: int, log_path: Path | None) -> list[str]:
    """The first errors for stderr, and how many more the log holds."""
    lines = [f"error: {problem}" for problem in problems[:SHOWN_PROBLEMS]]
    if total > SHOWN_PROBLEMS:
        lines.append(f"... {total - SHOWN_PROBLEMS} more errors in {log_path}")
    return lines


def backup_lines(report: RunReport, dry_run: bool, prices: Prices) -> list[str]:
    """A run's stdout: a line per backup folder, the summary, its cost, the warnings."""
    lines = [folder_line(entry, dry_run) for entry in report.folders]
    lines.append(run_line(report))
    lines += cost_lines(report, prices, report.requests_by_operation)
    lines += [f"warning: {warning}" for warning in report.warnings]
    return lines


def verify_check_line(check: FolderCheck, deep: bool) -> str:
    """One backup folder against its bucket."""
    return (
        f"{printable(check.folder)} -> s3://{check.bucket}: {check.rows} files in state.db, "
        f"{check.objects} objects in the bucket"
        + (f", {check.checked_checksums} checksums checked" if deep else "")
        + (f"; {check.requeued} queued for upload" if check.requeued else "")
    )


def verify_finding_lines(report: VerifyReport) -> list[str]:
    """The first findings (keys come from the bucket: escaped)."""
    return [f"finding: {printable(str(f))}" for f in report.findings[: SHOWN_PROBLEMS * 5]]


def verify_summary(report: VerifyReport) -> str:
    return f"verify: {len(report.folders)} folders, {len(report.findings)} findings"


def config_folder_line(folder: BackupFolder, bucket: str) -> str:
    """A configured backup folder and its bucket, for check-config."""
    state = "" if folder.path.is_dir() else "  (missing: not mounted?)"
    return f"{printable(str(folder.path))} ({folder.source}) -> bucket {bucket}{state}"


def gone_folder_line(path: str, bucket: str, cache: Path) -> str:
    """A folder state.db records that config.json no longer produces, and how to close it."""
    return (
        f"problem: {printable(path)} (bucket {bucket}) is recorded in state.db but no "
        f"longer a backup folder: every run reports it until: matricula-backup forget "
        f"--cache {cache} {printable(shlex.quote(path))}"
    )


def object_lock_lines(lock: ObjectLock, unlocked: Sequence[tuple[str, str]]) -> list[str]:
    """For buckets that hold files uploaded without a retention: how to turn Object Lock on.

    ``unlocked`` holds (bucket, the command that enables Object Lock on it)."""
    lines = [
        f"Object Lock: new buckets get {lock.mode} {lock.days} days; every upload is locked "
        f"that long and extended when fewer than {lock.renew_days} days remain"
    ]
    for bucket, command in unlocked:
        lines.append(
            f"Object Lock: bucket {bucket} has not been seen with Object Lock on. If it has "
            "none (verify says so), enable it (a versioned bucket allows it; it cannot be "
            f"turned off again): {command} - once a verify or a "
            "run that works on the bucket has seen it on, the next run locks the versions "
            "already in it too"
        )
    return lines


def config_valid_line(folders: int, webhook: str) -> str:
    """check-config's verdict; ``webhook`` is already redacted (or says there is none)."""
    return f"config.json is valid: {folders} backup folders, webhook {webhook}"


def init_line(path: Path, cache: Path) -> str:
    return (
        f"wrote {path}: set backup.folders / backup.roots and the aws and notification "
        f"keys (see the README), then run: matricula-backup check-config --cache {cache}"
    )


def scrub_accepted_line(full: str, sha256: bytes) -> str:
    return printable(
        f"accepted: {full}: the next run uploads its new bytes (sha256 {sha256.hex()})"
    )


def drill_none_due_line(every: int | None) -> str:
    return f"drill: none due (the last one started less than {every} days ago)"
