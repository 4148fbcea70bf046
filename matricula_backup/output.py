"""The text of results: every line a command shows, built here and printed by cli.py.

These functions return strings and print nothing; ``cli.py`` decides where each
goes (stdout, stderr, the log) and the exit code. Names that come from outside
(file names, keys from a bucket) are escaped with ``printable`` here or by the
caller, as each function says.

Only light modules are imported at load: ``--version`` must stay fast (issue 13).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from matricula_backup import pricing
from matricula_backup.escape import printable
from matricula_backup.pricing import BILLED_AS_PUT, KB, RESTORE_HOURS, Prices, usd
from matricula_backup.report import human_bytes

if TYPE_CHECKING:
    from matricula_backup.config import ObjectLock
    from matricula_backup.drill import DrillReport
    from matricula_backup.folders import BackupFolder
    from matricula_backup.forget import ForgetReport
    from matricula_backup.report import FolderReport, RunReport
    from matricula_backup.restore import RestoreOptions, RestoreReport
    from matricula_backup.scrub import ScrubReport
    from matricula_backup.status import FolderStatus, HistoryRun, Status
    from matricula_backup.verify import FolderCheck, VerifyReport

SHOWN_PROBLEMS = 20  # on stderr; the log has them all


def folder_line(report: FolderReport, dry_run: bool) -> str:
    """One line per backup folder, for stdout and the log."""
    excluded = f"; {report.excluded} excluded by backup.exclude" if report.excluded else ""
    folder = printable(report.folder)  # a subfolder of a root: named by whoever made it
    held = (
        f"; {report.changes_held} changed files held back (mass change guard)"
        if report.changes_held
        else ""
    )
    if dry_run:
        return (
            f"{folder} -> s3://{report.bucket}: {_would_upload(report)}, would delete "
            f"{report.to_delete} files ({human_bytes(report.bytes_to_delete)}); "
            f"{report.files_seen} files ({human_bytes(report.bytes_seen)}) on disk{excluded}{held}"
            + (f"; would extend Object Lock on {report.to_extend}" if report.to_extend else "")
        )
    # Files found unchanged (only touched, or already in the bucket after a lost
    # state.db) were never going to be uploaded.
    to_upload = report.to_upload - report.same_content - report.already_in_bucket
    line = (
        f"{folder} -> s3://{report.bucket}: uploaded {report.uploaded}/{to_upload} "
        f"files ({human_bytes(report.bytes_uploaded)}), deleted {report.deleted}/"
        f"{report.to_delete}; {report.files_seen} files ({human_bytes(report.bytes_seen)}) "
        f"on disk{excluded}"
    )
    if report.already_in_bucket:
        line += f"; {report.already_in_bucket} found already in the bucket"
    if report.same_content:
        line += f"; {report.same_content} unchanged (only touched, same bytes: not uploaded)"
    if report.to_extend:
        line += f"; Object Lock extended on {report.extended}/{report.to_extend}"
    line += held
    if report.errors:
        line += f"; {report.errors} errors"
    return line


def _would_upload(report: FolderReport) -> str:
    """A dry run's uploads; files whose mtime alone changed are checks (read and compared
    with the SHA-256 of their upload; sent only if the bytes differ)."""
    text = (
        f"would upload {report.to_upload - report.to_check} files "
        f"({human_bytes(report.bytes_to_upload - report.bytes_to_check)})"
    )
    if report.to_check:
        text += (
            f", would check {report.to_check} (mtime only changed; uploaded only if the "
            "bytes differ)"
        )
    return text


def run_line(run: RunReport) -> str:
    """The one-line summary of the whole run."""
    total = run.totals()
    verb = "dry run" if run.dry_run else "backup"
    state = (
        "interrupted" if run.interrupted else ("done with errors" if run.error_count else "done")
    )
    if run.dry_run:
        work = f"{_would_upload(total)}, would delete {total.to_delete}"
    else:
        work = (
            f"uploaded {total.uploaded} files ({human_bytes(total.bytes_uploaded)}), "
            f"deleted {total.deleted}, {run.s3_requests} S3 requests"
        )
    return (
        f"{verb} {state}: {len(run.folders)} folders, {total.files_seen} files; {work}; "
        f"{run.error_count} errors"
    )


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


def cost_lines(run: RunReport, prices: Prices, requests_by_operation: dict[str, int]) -> list[str]:
    """What this run costs (or would cost) and what the archive costs per month."""
    total = run.totals()
    if run.dry_run:
        # One PUT per file; multipart files need a few more (not known before reading them).
        # Files whose mtime alone changed are only read, unless their bytes differ.
        puts = total.to_upload - total.to_check + total.to_extend
        run_line = (
            f"estimated cost of this run: {usd(prices.requests_cost(puts))} for about {puts} "
            "PUT requests"
            + (
                f" ({total.to_extend} of them extend Object Lock retentions)"
                if total.to_extend
                else ""
            )
        )
    else:
        run_line = _run_cost_line(prices, requests_by_operation)
        retention = requests_by_operation.get("PutObjectRetention", 0)
        if retention:
            run_line += f" ({retention} of them set Object Lock retentions)"
    objects, size = total.files_seen, total.bytes_seen
    lines = [
        run_line,
        f"archive: {objects} files, {human_bytes(size)}: about "
        f"{usd(prices.archive_per_month(objects, size))} per month in Deep Archive "
        "(current versions; replaced and deleted ones are kept 180 days more)",
    ]
    if objects and size / objects < 1024 * KB:
        share = prices.archive_per_month(objects, 0) / prices.archive_per_month(objects, size)
        lines.append(
            f"note: the files average {human_bytes(size // objects)}: the 40 KB S3 keeps per "
            f"object makes {share:.0%} of that storage bill, and uploading all of them once "
            f"costs {usd(prices.requests_cost(objects))} in PUT requests"
        )
    return lines


def _run_cost_line(prices: Prices, requests_by_operation: dict[str, int]) -> str:
    """The requests of the summary line, split by what they cost: PUT/LIST, and the rest
    (GET, HEAD: two orders cheaper; DELETE: free), counted at the GET price at most."""
    total = sum(requests_by_operation.values())
    if not total:
        return "cost of this run: $0 (no S3 request)"
    puts = sum(n for op, n in requests_by_operation.items() if op in BILLED_AS_PUT)
    others = total - puts
    cost = prices.requests_cost(puts) + others / 1000 * prices.get_per_1000
    shown = f"about {usd(cost)}" if cost >= 0.00001 else "less than $0.00001"
    return (
        f"cost of this run: {shown} for its {total} S3 requests: {puts} PUT/LIST at "
        f"{usd(prices.put_per_1000)} per 1,000 and {others} others (GET/HEAD at "
        f"{usd(prices.get_per_1000)} per 1,000, DELETE free)"
    )


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


def restore_lines(report: RestoreReport, options: RestoreOptions) -> list[str]:
    """The summary a person reads after each restore run."""
    gib = pricing.GB
    when = f" as of {options.at:%Y-%m-%d %H:%M:%S %Z}" if options.at else ""
    if options.deleted:
        when = " deleted (each as it was before its deletion)"
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


def fixity_line(entry: FolderStatus, scrub_days: int) -> str:
    share = 100 * entry.scrubbed_recently / entry.files_backed_up if entry.files_backed_up else 0
    drill = "none"
    if entry.last_drill_id is not None:
        drill = (
            f"#{entry.last_drill_id} {entry.last_drill_outcome} {_when(entry.last_drill_at)} "
            f"({entry.last_drill_objects - entry.last_drill_failed} of "
            f"{entry.last_drill_objects} objects of this folder identical)"
        )
    held = f"; {entry.held} files HELD (fixity failure: see scrub)" if entry.held else ""
    return (
        f"{entry.folder}: scrubbed within {scrub_days} days: {entry.scrubbed_recently} of "
        f"{entry.files_backed_up} files ({share:.0f}%){held}; last drill {drill}; last "
        f"verify --deep {_when(entry.last_deep_verify_at)}"
    )


_STATE_LINES = {
    "missing": "MISSING (not mounted?): in config.json but its directory is not there; "
    "last successful backup {when}",
    "gone": "GONE: config.json no longer backs it up; last successful backup {when}. Run "
    "matricula-backup forget for it if that is on purpose (its bucket stays)",
}


def status_lines(status: Status) -> list[str]:
    if not status.folders and status.last_run is None:
        return [f"{status.database}: no backup has run yet"]
    lines = []
    for entry in status.folders:
        if entry.state in _STATE_LINES:
            lines.append(
                f"{entry.folder} -> s3://{entry.bucket}: "
                + _STATE_LINES[entry.state].format(when=_when(entry.last_backup_at))
            )
        lines.append(
            f"{entry.folder} -> s3://{entry.bucket}: {entry.files_backed_up} files "
            f"({human_bytes(entry.bytes_backed_up)}) backed up; {entry.pending_uploads} to upload "
            f"({human_bytes(entry.pending_upload_bytes)}), {entry.failed_uploads} failed uploads, "
            f"{entry.failed_deletes} failed deletes; last upload {_when(entry.last_upload_at)}"
        )
        lines.append(fixity_line(entry, status.scrub_days))
    for label, run in (
        ("last run", status.last_run),
        ("last successful run", status.last_successful_run),
        ("last killed run", status.last_killed_run),
    ):
        if run is None and label == "last killed run":
            continue
        if run is None:
            lines.append(f"{label}: none")
        else:
            took = f", took {run.duration_seconds} s" if run.duration_seconds is not None else ""
            if run.process_gone:
                took = " (its process is gone: killed; the next run records it as killed)"
            lines.append(
                f"{label}: #{run.id} started {_when(run.started_at)}{took}, {run.outcome}, "
                f"{run.files_uploaded} files uploaded, {run.errors} errors"
            )
    return lines


def history_lines(runs: list[HistoryRun]) -> list[str]:
    if not runs:
        return ["no backup has run yet"]
    lines = []
    for run in runs:
        if run.finished_at:
            took = f"{run.finished_at - run.started_at} s"
        else:
            took = "did not finish" if run.outcome == "killed" else "still running?"
        lines.append(
            f"#{run.id} {_when(run.started_at)} {run.mode} {run.outcome} ({took}): "
            f"{run.files_uploaded} files ({human_bytes(run.bytes_uploaded)}) uploaded, "
            f"{run.files_deleted} deleted, {run.errors} errors, {run.s3_requests} S3 requests"
        )
        for entry in run.folders:
            lines.append(
                f"    {entry.folder}: {entry.files_seen} files, {entry.files_uploaded} uploaded "
                f"({human_bytes(entry.bytes_uploaded)}), {entry.files_deleted} deleted, "
                f"{entry.files_same_content} unchanged (only touched), {entry.errors} errors, "
                f"{entry.s3_requests} requests"
            )
    return lines


def _when(seconds: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds)) if seconds else "never"


def drill_cost_line(report: DrillReport) -> str:
    """Printed before any request is sent."""
    return (
        f"drill #{report.drill_id}{' (new)' if report.new else ''}: {len(report.objects)} "
        f"objects, {report.tier} tier; cost of what is left: about {usd(report.cost)} (restore "
        "requests and retrieval, downloads, one version listing each)"
    )


def drill_lines(report: DrillReport) -> list[str]:
    """Where the drill stands after this invocation."""
    pending = len(report.objects) - report.checked
    lines = []
    if report.finished:
        verdict = "PASSED" if report.passed else "FAILED"
        lines.append(
            f"drill #{report.drill_id} {verdict}: {report.checked - len(report.failed)} of "
            f"{len(report.objects)} restored copies identical"
        )
    else:
        lines.append(
            f"{report.checked} of {len(report.objects)} checked; {report.requested} restores "
            f"requested now, {pending} waiting: S3 makes {report.tier} restores readable within "
            f"{RESTORE_HOURS.get(report.tier, 48)} hours; run matricula-backup drill again "
            "(the monthly timer does, daily until it is done)"
        )
    return (
        lines
        + [f"failed: {o.folder}/{o.path}: {o.detail}" for o in report.failed]
        + [f"error: {error}" for error in report.errors]
    )


def scrub_lines(report: ScrubReport) -> list[str]:
    """The summary a person reads (stdout) and the log keeps."""
    mib = report.bytes_read / 1024**2
    lines = [
        f"scrub: {report.checked} files read ({mib:.1f} MiB in {report.seconds:.0f} s) of "
        f"{report.due} due; {len(report.failures)} fixity failures; {report.left} left for the "
        f"next scrub; {report.skipped} changed since their upload (the next run backs them up)"
    ]
    lines += [f"no longer held (the good bytes are back): {path}" for path in report.released]
    if report.held:
        lines.append(
            f"{report.held} files held (not uploaded over their good copy): restore the good "
            "copy or run matricula-backup scrub --accept PATH"
        )
    return lines


def forget_lines(report: ForgetReport, dry_run: bool) -> list[str]:
    """What forget did (or would do), one line per path given."""
    # the paths' own escaping (not valid UTF-8 as backslash escapes), as folders.py prints them
    from matricula_backup.folders import printable as path_printable

    lines = []
    for item in report.plans:
        folder = item.folder
        lines.append(
            f"{'would forget' if dry_run else 'forgot'} {path_printable(folder.path)}: "
            f"{'would drop' if dry_run else 'dropped'} its files table {folder.table} "
            f"({item.file_rows} rows), its folders row and {item.restore_rows} restore records "
            f"(its history stays); bucket {folder.bucket} and its objects are kept"
        )
    for path in report.unknown:
        lines.append(
            f"{path_printable(path)}: not recorded in state.db (forgotten already?); nothing to do"
        )
    for path in report.still_configured:
        lines.append(
            f"{path_printable(path)}: still in config.json: the next runs report it missing "
            "until you remove it from there"
        )
    return lines
