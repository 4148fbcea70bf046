"""The command line: the only module that prints results or decides exit codes.

Exit codes: 0 all done, 1 done with errors (see the log / Teams), 2 could not
run (config, database, lock held by another run), 130 stopped by SIGINT or
SIGTERM (what S3 confirmed until then is recorded).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

# Only what every command needs is imported here: `--version` and `--help` must not
# pay for SQLAlchemy, boto3, httpx, pydantic or rich (issue 13: start-up). Each
# command imports the rest in its body.
from matricula_backup import __version__, iam, interrupt, output
from matricula_backup.errors import (
    EXIT_COULD_NOT_RUN,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_WITH_ERRORS,
    ConfigError,
    FatalError,
    LockHeld,
)
from matricula_backup.escape import printable
from matricula_backup.localfs import current_umask
from matricula_backup.lock import exclusive_lock
from matricula_backup.logs import LOG_NAME, setup_logging
from matricula_backup.report import Problem, RunReport

if TYPE_CHECKING:
    from matricula_backup import online
    from matricula_backup.config import ObjectLock, Settings
    from matricula_backup.folders import BackupFolder

logger = logging.getLogger("matricula_backup")

app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help="Back up image folders to S3 Glacier Deep Archive, one bucket per folder.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"matricula-backup {__version__}")
        raise typer.Exit()


CacheOption = Annotated[
    Path | None,
    typer.Option(
        "--cache",
        help="Cache directory: holds config.json, the log and the state database state.db.",
        file_okay=False,
    ),
]
VerboseOption = Annotated[
    bool, typer.Option("--verbose", "-v", help="Log every file decision (debug).")
]


@app.callback(invoke_without_command=True)
def backup(
    ctx: typer.Context,
    cache: CacheOption = None,
    reset: Annotated[
        bool,
        typer.Option(
            "--reset",
            help="Drop the file tables and rebuild them by scanning again; files already in "
            "their bucket (same size, uploaded after their mtime) are not uploaded again.",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Show what would be uploaded and deleted; change nothing (no bucket, no "
            "upload, no database change, no notification).",
        ),
    ] = False,
    allow_mass_delete: Annotated[
        bool,
        typer.Option(
            "--allow-mass-delete",
            help="Delete from the buckets even when a folder lost more than "
            "backup.max_delete_percent of its files, or all of them (normally refused: it "
            "looks like an unmounted share).",
        ),
    ] = False,
    allow_mass_change: Annotated[
        bool,
        typer.Option(
            "--allow-mass-change",
            help="Upload changed files even when more than backup.max_change_percent of a "
            "folder's files changed since the last run (normally held back: it looks like "
            "ransomware encrypting files in place).",
        ),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet", "-q", help="Print nothing but errors (the exit code tells the outcome)."
        ),
    ] = False,
    folder: Annotated[
        list[Path] | None,
        typer.Option(
            "--folder",
            help="Back up only this backup folder (repeat for more); the others are left "
            "alone this run.",
            show_default=False,
        ),
    ] = None,
    verbose: VerboseOption = False,
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = None,
) -> None:
    """Run a backup: scan every backup folder, upload new and changed files, delete vanished ones.

    Example (nightly, from cron): matricula-backup --cache /var/lib/matricula-backup

    Other commands (restore, ...) take their own --cache: matricula-backup restore --help
    """
    if ctx.invoked_subcommand is not None:
        return
    from matricula_backup import config_alert, notify
    from matricula_backup.headstart import first_walk
    from matricula_backup.model import RunOptions

    cache, log_path = _start(cache, verbose)
    settings: Settings | None = None
    try:
        settings = _load(cache)
        if not dry_run:
            config_alert.forget(cache)
        options = RunOptions(
            dry_run=dry_run,
            reset=reset,
            allow_mass_delete=allow_mass_delete,
            allow_mass_change=allow_mass_change,
            only=tuple(Path(os.path.normpath(path.absolute())) for path in folder or ()),
        )
        # The first folder's walk starts before run.py (SQLAlchemy, S3 code) is loaded:
        # it goes on meanwhile (headstart.py).
        if dry_run:
            early = first_walk(settings, options)
            from matricula_backup.run import run_backup

            report = run_backup(settings, options, None, early)
        else:
            with exclusive_lock(cache):
                logger.info(
                    "backup started (matricula-backup %s%s)",
                    __version__,
                    ", --reset" if reset else "",
                )
                early = first_walk(settings, options)
                from matricula_backup.run import run_backup

                # A live display on a terminal; under cron (no TTY) only the summary.
                progress = None
                if sys.stdout.isatty() and not quiet:
                    from matricula_backup.live import TerminalProgress

                    progress = TerminalProgress()
                report = run_backup(settings, options, progress, early)
    except FatalError as exc:
        logger.error("%s", exc)
        if settings is None and isinstance(exc, ConfigError) and not dry_run:
            # config.json did not load: Teams is told if its webhook can be read.
            config_alert.tell_teams(cache, str(exc), log_path or cache / LOG_NAME)
        if settings is not None and not dry_run:
            notify.tell_fatal(
                settings.webhook,
                exc,
                reset,
                log_path or cache / LOG_NAME,
                lock_held=isinstance(exc, LockHeld),
                held_since=exc.since if isinstance(exc, LockHeld) else None,
                stuck_after_hours=settings.stuck_after_hours,
            )
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        logger.error("interrupted; what S3 confirmed so far is recorded")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:  # a bug: keep the traceback in the log, tell Teams
        logger.exception("internal error")
        if settings is not None and not dry_run:
            notify.tell_fatal(settings.webhook, exc, reset, log_path or cache / LOG_NAME)
        typer.echo(
            f"internal error: {type(exc).__name__}: {exc} (traceback in {log_path})", err=True
        )
        raise typer.Exit(EXIT_COULD_NOT_RUN) from None

    if not quiet:
        for line in output.backup_lines(report, dry_run, settings.prices):
            typer.echo(line)
    logger.info("%s", output.run_line(report))
    for line in output.problem_lines(report.problems, report.error_count, log_path):
        typer.echo(line, err=True)
    if not dry_run:
        notify.tell_run(
            settings.webhook, report, log_path or cache / LOG_NAME, settings.notify_on_success
        )
    raise typer.Exit(EXIT_WITH_ERRORS if report.error_count else EXIT_OK)


@app.command()
def restore(
    cache: CacheOption = None,
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="What to restore: backup folders, subfolders or files, as absolute paths "
            "(default: everything).",
            show_default=False,
        ),
    ] = None,
    tier: Annotated[
        str,
        typer.Option(help="bulk: readable within 48 hours, cheapest; standard: within 12 hours."),
    ] = "bulk",
    days: Annotated[
        int, typer.Option(min=1, max=365, help="How long S3 keeps the restored copies readable.")
    ] = 7,
    to: Annotated[
        Path | None,
        typer.Option(help="Write under this directory (TO/images/...) instead of in place."),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            help="Restore the versions current at this time (e.g. 2026-11-20T14:30:15), which "
            "brings back files deleted since. A time without a zone is the local time of this "
            "machine; add one for another (2026-11-20T14:30Z, ...+01:00)."
        ),
    ] = None,
    deleted: Annotated[
        bool,
        typer.Option(
            "--deleted",
            help="Restore only files that were deleted, each as it was before its deletion.",
        ),
    ] = False,
    no_owner: Annotated[
        bool,
        typer.Option(
            "--no-owner",
            help="Do not give files their owner and group from the backup (set only when "
            "running as root; otherwise files belong to the user who restores).",
        ),
    ] = False,
    keep_special_bits: Annotated[
        bool,
        typer.Option(
            "--keep-special-bits",
            help="Also restore setuid, setgid and sticky bits (dropped by default: the "
            "bucket's metadata is not trusted with them).",
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Also replace local files newer than the backup.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would be restored and its cost.")
    ] = False,
    verbose: VerboseOption = False,
) -> None:
    """Bring files back from Deep Archive. Run it again until everything is downloaded.

    The first run asks S3 to restore the selected files; S3 makes them readable
    within 48 hours (bulk) or 12 hours (standard). Each later run downloads what
    has become readable, verifies it, and sets its modification time.

    Files get their mode from the backup, and their owner when run as root.

    Example: matricula-backup restore --cache /var/lib/matricula-backup /images/Taufbuch
    """
    from matricula_backup.restore import TIERS, RestoreOptions, parse_at, run_restore

    umask = current_umask()  # the user's, for restored files; _start sets the tool's own
    cache, log_path = _start(cache, verbose)
    if tier.lower() not in TIERS:
        typer.echo(f"--tier {tier!r}: use bulk or standard", err=True)
        raise typer.Exit(EXIT_COULD_NOT_RUN)
    try:
        moment = parse_at(at) if at else None
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_COULD_NOT_RUN) from None
    if deleted and moment:
        typer.echo("--deleted and --at exclude each other: use one of them", err=True)
        raise typer.Exit(EXIT_COULD_NOT_RUN)
    selectors = tuple(Path(os.path.normpath(path.absolute())) for path in paths or ())
    options = RestoreOptions(
        selectors,
        TIERS[tier.lower()],
        days,
        to.absolute() if to else None,
        moment,
        overwrite,
        dry_run,
        deleted=deleted,
        owner=not no_owner,
        keep_special_bits=keep_special_bits,
        umask=umask,
    )
    try:
        settings = _load(cache)
        options = replace(options, prices=settings.prices)
        if dry_run:
            report = run_restore(settings, options)
        else:
            with exclusive_lock(cache, "restore.lock"):
                report = run_restore(settings, options)
    except FatalError as exc:
        logger.error("%s", exc)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        logger.error("interrupted; run the same command again to go on")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    for line in output.restore_lines(report, options):
        typer.echo(printable(line))  # names from the bucket
        logger.info("%s", line)
    for line in output.problem_lines(report.problems, len(report.problems), log_path):
        typer.echo(line, err=True)
    raise typer.Exit(EXIT_WITH_ERRORS if report.problems else EXIT_OK)


@app.command()
def verify(
    cache: CacheOption = None,
    deep: Annotated[
        bool,
        typer.Option(
            "--deep",
            help="Also compare every object's SHA-256 metadata with state.db (a HEAD "
            "request per file).",
        ),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the findings (for cron).")
    ] = False,
    verbose: VerboseOption = False,
) -> None:
    """Check that each bucket holds what state.db records: one listing per bucket.

    Objects missing from a bucket are queued, and the next backup run uploads them.
    Bucket settings that let history be destroyed (foreign lifecycle rules, a
    policy open to others, suspended versioning, a weakened Object Lock) are
    findings too. Exit code 0 when everything matches, 1 when something was
    found (and Teams is told).

    Example: matricula-backup verify --cache /var/lib/matricula-backup --deep
    """
    from matricula_backup import notify
    from matricula_backup.verify import run_verify

    cache, log_path = _start(cache, verbose)
    with _fatal_errors_exit():
        settings = _load(cache)
        with exclusive_lock(cache):
            report = run_verify(settings, deep)
    for check in [] if quiet else report.folders:
        typer.echo(output.verify_check_line(check, deep))
    for finding in report.findings:
        logger.warning("%s", finding)
    for line in output.verify_finding_lines(report):
        typer.echo(line)
    if not quiet or report.findings:
        typer.echo(output.verify_summary(report))
    if report.findings:  # the weekly verify runs unattended: tell Teams, as a run would
        told = RunReport(folders=[], error_count=len(report.findings))
        told.problems = [Problem(f.folder, "verify", str(f)) for f in report.findings[:1000]]
        notify.tell_errors(settings.webhook, told, log_path or cache / LOG_NAME)
    raise typer.Exit(EXIT_WITH_ERRORS if report.findings else EXIT_OK)


@app.command()
def scrub(
    cache: CacheOption = None,
    max_minutes: Annotated[
        float | None,
        typer.Option(
            "--max-minutes",
            min=0,
            help="Stop reading after this many minutes; the rest is due at the next scrub.",
        ),
    ] = None,
    accept: Annotated[
        Path | None,
        typer.Option(
            "--accept",
            help="The held file's new bytes are right: the next run uploads them (reads "
            "nothing else).",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the failures (for cron).")
    ] = False,
    verbose: VerboseOption = False,
) -> None:
    """Re-read the files due (not read since their upload or for preservation.scrub_days)
    and compare their SHA-256 with the upload's, at preservation.scrub_rate.

    A mismatch holds the file (never uploaded over its good copy), exits 1 and tells Teams
    with the restore command.

    Example: matricula-backup scrub --cache /var/lib/matricula-backup --max-minutes 120
    """
    from matricula_backup import notify
    from matricula_backup.scrub import accept as run_scrub_accept
    from matricula_backup.scrub import card_items as scrub_card_items
    from matricula_backup.scrub import run_scrub

    cache, log_path = _start(cache, verbose)
    with _fatal_errors_exit():
        settings = _load(cache)
        with exclusive_lock(cache):
            if accept is not None:
                full, ended = run_scrub_accept(settings, accept)
                typer.echo(output.scrub_accepted_line(full, ended.found_sha256))
                logger.warning("scrub --accept %s: the new bytes are accepted", full)
                raise typer.Exit(EXIT_OK)
            try:
                report = run_scrub(settings, max_minutes)
            except KeyboardInterrupt:
                logger.error("interrupted; what was read is recorded")
                raise typer.Exit(EXIT_INTERRUPTED) from None
    for line in output.scrub_lines(report):
        logger.info("%s", line)
        if not quiet:
            typer.echo(printable(line))
    for problem in [f.message() for f in report.failures] + report.unreadable:
        typer.echo(f"error: {printable(problem)}", err=True)
    if report.failures:
        notify.tell_scrub_failures(
            settings.webhook,
            len(report.failures),
            scrub_card_items(report),
            log_path or cache / LOG_NAME,
        )
    raise typer.Exit(EXIT_WITH_ERRORS if report.failures or report.unreadable else EXIT_OK)


@app.command()
def drill(
    cache: CacheOption = None,
    sample: Annotated[
        int, typer.Option(min=1, max=1000, help="How many random current objects to restore.")
    ] = 20,
    tier: Annotated[
        str,
        typer.Option(help="bulk: readable within 48 hours, cheapest; standard: within 12 hours."),
    ] = "bulk",
    every: Annotated[
        int | None,
        typer.Option(
            "--every",
            min=1,
            help="Start a new drill only if the last one started at least this many days ago "
            "(for a daily timer); a running drill always goes on.",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only a failed drill (for cron).")
    ] = False,
    verbose: VerboseOption = False,
) -> None:
    """A restore drill: restore random current objects from Deep Archive, compare their bytes
    with state.db and the local files, delete the copies. Spans invocations (run it again
    until it says PASSED or FAILED); one Teams card at the end.

    Example: matricula-backup drill --cache /var/lib/matricula-backup --sample 20
    """
    from matricula_backup import notify
    from matricula_backup.drill import advance as drill_advance
    from matricula_backup.drill import card_items as drill_card_items
    from matricula_backup.drill import start_or_resume as drill_start
    from matricula_backup.restore import TIERS

    cache, log_path = _start(cache, verbose)
    if tier.lower() not in TIERS:
        typer.echo(f"--tier {tier!r}: use bulk or standard", err=True)
        raise typer.Exit(EXIT_COULD_NOT_RUN)
    with _fatal_errors_exit():
        settings = _load(cache)
        with exclusive_lock(cache, "drill.lock"):
            current = drill_start(settings, sample, TIERS[tier.lower()], every)
            if current is None:
                if not quiet:
                    typer.echo(output.drill_none_due_line(every))
                raise typer.Exit(EXIT_OK)
            logger.info("%s", output.drill_cost_line(current))
            if not quiet:
                typer.echo(output.drill_cost_line(current))
            try:
                current = drill_advance(settings, current)
            except KeyboardInterrupt:
                logger.error("interrupted; run the same command again to go on")
                raise typer.Exit(EXIT_INTERRUPTED) from None
    failed = bool(current.failed or current.errors)  # said at once; the card waits for the end
    for line in output.drill_lines(current):
        logger.info("%s", line)
        if not quiet or failed:
            typer.echo(printable(line), err=line.startswith(("failed:", "error:")))
    if current.finished:
        notify.tell_drill(
            settings.webhook,
            current.passed,
            current.checked - len(current.failed),
            len(current.objects),
            current.tier,
            drill_card_items(current),
            log_path or cache / LOG_NAME,
        )
    raise typer.Exit(EXIT_WITH_ERRORS if failed else EXIT_OK)


@app.command()
def status(
    cache: CacheOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON, for monitoring systems.")
    ] = False,
) -> None:
    """What state.db says of each backup folder; no scan, no S3 request.

    Example: matricula-backup status --cache /var/lib/matricula-backup --json
    """
    from matricula_backup.config import load_settings
    from matricula_backup.status import read_status

    cache, _log_path = _start(cache, False)
    try:
        settings: Settings | None = load_settings(cache)  # to tell missing and gone folders
    except ConfigError as exc:
        typer.echo(f"warning: {exc} (status cannot tell which folders are gone)", err=True)
        settings = None
    with _fatal_errors_exit():
        current = read_status(cache, settings)
    if as_json:
        typer.echo(json.dumps(asdict(current), indent=2))
    else:
        for line in output.status_lines(current):
            typer.echo(printable(line))


@app.command()
def history(
    cache: CacheOption = None,
    last: Annotated[int, typer.Option(min=1, help="How many runs to show.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The last runs, newest first, with what each did per backup folder.

    Example: matricula-backup history --cache /var/lib/matricula-backup --last 30
    """
    from matricula_backup.status import read_history

    cache, _log_path = _start(cache, False)
    with _fatal_errors_exit():
        runs = read_history(cache, last)
    if as_json:
        typer.echo(json.dumps([asdict(run) for run in runs], indent=2))
    else:
        for line in output.history_lines(runs):
            typer.echo(printable(line))


@app.command("forget")
def forget_command(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Backup folders to close, as the run's message or status names them.",
            show_default=False,
        ),
    ],
    cache: CacheOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only print what would be dropped.")
    ] = False,
) -> None:
    """Close backup folders that are gone: drop their rows from state.db; buckets stay.

    A folder recorded in state.db that config.json no longer produces (removed
    from it, or a subfolder of a root renamed or removed) is reported by every
    run until it is forgotten. Its bucket and objects are kept (see the README
    on deleting a bucket). A folder still configured and present is refused.

    Example: matricula-backup forget --cache /var/lib/matricula-backup /images/archive/Graz
    """
    from matricula_backup.forget import run_forget

    cache, _log_path = _start(cache, False)
    selected = [os.path.normpath(path.absolute()) for path in paths]
    with _fatal_errors_exit():
        settings = _load(cache)
        if dry_run:
            report = run_forget(settings, selected, dry_run)
        else:
            with exclusive_lock(cache):
                report = run_forget(settings, selected, dry_run)
    for line in output.forget_lines(report, dry_run):
        typer.echo(line)
        logger.info("%s", line)
    raise typer.Exit(EXIT_OK)


@app.command()
def init(cache: CacheOption = None) -> None:
    """Write a template config.json (mode 600) with every key; edit it, then check-config.

    A missing cache directory is created (mode 700; missing parents with the usual mode).

    Example: matricula-backup init --cache /var/lib/matricula-backup
    """
    from matricula_backup.config import CONFIG_NAME, template

    if cache is not None and not cache.absolute().exists():
        _create_cache_dir(cache.absolute())
    cache, _log_path = _start(cache, False)
    path = cache / CONFIG_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        typer.echo(f"{path} exists already; not overwritten", err=True)
        raise typer.Exit(EXIT_COULD_NOT_RUN) from None
    with os.fdopen(fd, "w") as handle:
        json.dump(template(), handle, indent=2)
        handle.write("\n")
    typer.echo(output.init_line(path, cache))


@app.command("config-schema")
def config_schema() -> None:
    """Print the JSON Schema of config.json, so an editor checks the file as you type it.

    Example: matricula-backup config-schema > /var/lib/matricula-backup/config.schema.json
    """
    from matricula_backup.config_model import json_schema  # pydantic: only when asked

    typer.echo(json.dumps(json_schema(), indent=2))


@app.command("check-config")
def check_config(
    cache: CacheOption = None,
    online: Annotated[
        bool,
        typer.Option(
            "--online",
            help="Also make one cheap request to S3 (GetBucketVersioning of one bucket) and "
            "connect to the webhook's host (HEAD /; nothing is posted).",
        ),
    ] = False,
) -> None:
    """Validate config.json and show the backup folders and their buckets; no S3 request.

    With --online, one request to S3 and one to the webhook's host show that
    both can be reached with this config (exit 1 if not).

    Example: matricula-backup check-config --online --cache /var/lib/matricula-backup
    """
    from matricula_backup.config import redact_url
    from matricula_backup.folders import backup_folders, bucket_name
    from matricula_backup.forget import gone_paths
    from matricula_backup.status import recorded_buckets

    cache, _log_path = _start(cache, False)
    with _fatal_errors_exit():
        settings = _load(cache)
        folders, problems = backup_folders(settings)
        recorded = recorded_buckets(cache)
    for folder in folders:
        bucket = recorded.get(str(folder.path)) or bucket_name(folder.path, settings.bucket_prefix)
        typer.echo(output.config_folder_line(folder, bucket))
    for problem in problems:
        typer.echo(f"problem: {printable(problem.message)}", err=True)
    for path in gone_paths(settings, folders, sorted(recorded)):
        problems.append(Problem(path, "config", "gone"))
        typer.echo(output.gone_folder_line(path, recorded[path], cache), err=True)
    if settings.object_lock is not None:
        for line in _object_lock_advice(cache, settings.object_lock):
            typer.echo(line)
    missing = [folder for folder in folders if not folder.path.is_dir()]
    webhook = redact_url(settings.webhook) if settings.webhook else "none (errors are only logged)"
    typer.echo(output.config_valid_line(len(folders), webhook))
    checks = _online_checks(settings, folders, recorded) if online else []
    for check in checks:
        typer.echo(str(check), err=not check.ok)
    failed = any(not check.ok for check in checks)
    raise typer.Exit(EXIT_WITH_ERRORS if problems or missing or failed else EXIT_OK)


def _online_checks(
    settings: Settings, folders: list[BackupFolder], recorded: dict[str, str]
) -> list[online.Check]:
    """One request to S3 (a bucket of ours, or one named like a configured path), one to
    the webhook's host."""
    from matricula_backup import online
    from matricula_backup.folders import bucket_name

    first = folders[0].path if folders else (settings.folders + settings.roots)[0]
    bucket = recorded.get(str(first)) or bucket_name(first, settings.bucket_prefix)
    checks = [online.check_s3(settings, bucket)]
    if settings.webhook:
        checks.append(online.check_webhook(settings.webhook))
    else:
        checks.append(online.Check("webhook", True, "none configured (errors are only logged)"))
    return checks


def _object_lock_advice(cache: Path, lock: ObjectLock) -> list[str]:
    """For buckets that hold files uploaded without a retention: how to turn Object Lock on."""
    from matricula_backup.s3.buckets import enable_lock_command
    from matricula_backup.status import unlocked_buckets

    unlocked = [(bucket, enable_lock_command(bucket, lock)) for bucket in unlocked_buckets(cache)]
    return output.object_lock_lines(lock, unlocked)


@app.command("iam-policy")
def iam_policy(
    cache: CacheOption = None,
    role: Annotated[
        str,
        typer.Option(
            help="backup: the nightly run and verify; restore: restore; admin: what people "
            "do by hand (delete versions or buckets on purpose)."
        ),
    ] = "backup",
    account: Annotated[
        str | None,
        typer.Option(
            help="Your 12-digit AWS account id: the buckets must also belong to it "
            "(bucket names are global: the prefix alone matches other accounts' buckets)."
        ),
    ] = None,
) -> None:
    """Print the IAM policy (JSON) a role needs, scoped to backup.bucket_prefix's buckets.

    Example: matricula-backup iam-policy --cache /var/lib/matricula-backup --role backup
    """
    cache, _log_path = _start(cache, False)
    if role not in iam.ROLES:
        typer.echo(f"--role {role!r}: use one of {', '.join(iam.ROLES)}", err=True)
        raise typer.Exit(EXIT_COULD_NOT_RUN)
    if account is not None and not (account.isdigit() and len(account) == 12):
        typer.echo(f"--account {account!r}: an AWS account id has 12 digits", err=True)
        raise typer.Exit(EXIT_COULD_NOT_RUN)
    with _fatal_errors_exit():
        settings = _load(cache)
    if not settings.bucket_prefix:
        typer.echo(
            "warning: backup.bucket_prefix is empty, so this policy covers every bucket of "
            "the account; set a prefix of your own before the first run",
            err=True,
        )
    document = iam.policy(role, settings.bucket_prefix, settings.aws.region, account)
    typer.echo(json.dumps(document, indent=2))


@app.command("notify-test")
def notify_test(cache: CacheOption = None) -> None:
    """Send a test card to notification.webhook, to see that it reaches the channel.

    Example: matricula-backup notify-test --cache /var/lib/matricula-backup
    """
    from matricula_backup import notify
    from matricula_backup.config import CONFIG_NAME, redact_url

    cache, _log_path = _start(cache, False)
    with _fatal_errors_exit():
        settings = _load(cache)
    if not settings.webhook:
        typer.echo("config.json has no notification.webhook", err=True)
        raise typer.Exit(EXIT_COULD_NOT_RUN)
    where = redact_url(settings.webhook)
    if notify.send(settings.webhook, notify.test_card(socket.gethostname(), cache / CONFIG_NAME)):
        typer.echo(f"test message accepted by {where}")
        raise typer.Exit(EXIT_OK)
    typer.echo(f"test message NOT accepted by {where}: see {cache / LOG_NAME}", err=True)
    raise typer.Exit(EXIT_WITH_ERRORS)


def _create_cache_dir(cache: Path) -> None:
    """Like git and restic: parents with the default mode, the directory itself owner-only."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.mkdir(mode=0o700)
        cache.chmod(0o700)  # whatever the umask took away or let through
    except OSError as exc:
        typer.echo(
            f"{cache}: cannot create the cache directory: {exc.strerror or exc}; create it "
            f"as a user who may (e.g. install -d -o USER -m 700 {cache}) and run init again",
            err=True,
        )
        raise typer.Exit(EXIT_COULD_NOT_RUN) from None
    typer.echo(f"created {cache} (mode 700)")


def _start(cache: Path | None, verbose: bool) -> tuple[Path, Path | None]:
    """What every command does first: check the cache directory, set up logging."""
    if cache is None:
        typer.echo("Missing option '--cache': the cache directory with config.json", err=True)
        raise typer.Exit(EXIT_COULD_NOT_RUN)
    cache = cache.absolute()
    try:
        is_dir = cache.is_dir()
    except OSError as exc:  # a parent this user may not enter
        typer.echo(
            f"{cache}: cannot reach the cache directory: {exc.strerror or exc}; run as the "
            "user who owns it",
            err=True,
        )
        raise typer.Exit(EXIT_COULD_NOT_RUN) from None
    if not is_dir:
        typer.echo(
            f"{cache}: no such directory. Create it (mkdir -m 700 {cache}) and put "
            "config.json in it (see the README)",
            err=True,
        )
        raise typer.Exit(EXIT_COULD_NOT_RUN)
    # Everything this tool creates (log and its rotations, state.db and its WAL,
    # the lock) lists the archive or its errors: owner only.
    os.umask(0o077)
    # systemd stops a service with SIGTERM: stop the same way as on Ctrl-C.
    interrupt.install()
    return cache, setup_logging(cache, verbose)


def _load(cache: Path) -> Settings:
    from matricula_backup.config import load_settings

    settings = load_settings(cache)
    for warning in settings.warnings:
        logger.warning("%s", warning)
        typer.echo(f"warning: {warning}", err=True)
    return settings


@contextlib.contextmanager
def _fatal_errors_exit() -> Iterator[None]:
    """A FatalError becomes its message on stderr (and in the log) and its exit code."""
    try:
        yield
    except FatalError as exc:
        logger.error("%s", exc)
        raise typer.Exit(exc.exit_code) from None


def main() -> None:
    """The console script (and ``python -m matricula_backup``): the CLI, then ``_exit``."""
    try:
        app()  # in its standalone mode, click always ends with SystemExit
    except SystemExit as exc:
        _exit(exc.code)


def _observed() -> bool:
    """Whether a profiler, tracer or debugger watches this process.

    They hook in through sys.setprofile or sys.settrace, or, from Python 3.12,
    as a sys.monitoring tool, which neither of those shows: cProfile does so
    from 3.12, and coverage and pdb can.
    """
    if sys.getprofile() is not None or sys.gettrace() is not None:
        return True
    monitoring = getattr(sys, "monitoring", None)
    if monitoring is None:
        return False
    return any(monitoring.get_tool(tool) is not None for tool in range(6))  # tool ids 0-5


def _exit(code: object) -> NoReturn:
    """End the process with ``code`` (as ``sys.exit`` takes it) without the interpreter's teardown.

    Python's own exit frees every object of every loaded module before the
    process ends: 0.09 s after a no-change run, 0.16-0.25 s after a run that
    loaded SQLAlchemy and botocore (strace, from the last log line to
    exit_group), paid by every scheduled run and every restore after its last
    byte: about a quarter of a small run's wall time (benchmarks/RESULTS.md,
    issue 13). The work is done by then: what a command wrote to state.db is
    committed (SQLite's WAL keeps it whether or not the connection is closed),
    and every file it wrote is closed. What a normal exit still does is done
    here too: the exit handlers (the log's handlers are flushed and closed) and
    the flush of stdout and stderr. A thread still at work (a bug) is not cut
    off: the normal exit is taken, which waits for it; so it is under a
    profiler or a debugger, which report after the program ends.
    """
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): printed, exit status 1
        print(code, file=sys.stderr)
        status = 1
    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(status)
    if _observed():
        sys.exit(status)  # python -m cProfile, a debugger: they write their results after us
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (| head)
            # 120, as Python answers then; but a command that failed keeps its own
            # code, where Python would turn it into 120 too.
            status = status or 120
    os._exit(status)
