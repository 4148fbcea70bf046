"""The command line: the only module that prints results or decides exit codes.

Exit codes: 0 all done, 1 done with errors (see the log / Teams), 2 could not
run (config, database, lock held by another run), 130 stopped by SIGINT or
SIGTERM (what S3 confirmed until then is recorded).
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Annotated

import typer

from matricula_backup import __version__, notify
from matricula_backup.config import Settings, load_settings
from matricula_backup.errors import (
    EXIT_COULD_NOT_RUN,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_WITH_ERRORS,
    FatalError,
    LockHeld,
)
from matricula_backup.lock import exclusive_lock
from matricula_backup.logs import LOG_NAME, setup_logging
from matricula_backup.report import Problem, RunReport, folder_line, run_line
from matricula_backup.run import RunOptions, run_backup

logger = logging.getLogger("matricula_backup")

SHOWN_PROBLEMS = 20  # on stderr; the log has them all

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


@app.callback(invoke_without_command=True)
def backup(
    cache: Annotated[
        Path,
        typer.Option(
            "--cache",
            help="Cache directory: holds config.json, the log and the state database state.db.",
            file_okay=False,
        ),
    ],
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
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log every file decision (debug).")
    ] = False,
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = None,
) -> None:
    """Run a backup: scan every backup folder, upload new and changed files, delete vanished ones.

    Example (nightly, from cron): matricula-backup --cache /var/lib/matricula-backup
    """
    cache = cache.absolute()
    if not cache.is_dir():
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
    signal.signal(signal.SIGTERM, _interrupt)
    log_path = setup_logging(cache, verbose)
    settings: Settings | None = None
    try:
        settings = load_settings(cache)
        for warning in settings.warnings:
            logger.warning("%s", warning)
            typer.echo(f"warning: {warning}", err=True)
        options = RunOptions(dry_run=dry_run, reset=reset, allow_mass_delete=allow_mass_delete)
        if dry_run:
            report = run_backup(settings, options)
        else:
            with exclusive_lock(cache):
                logger.info(
                    "backup started (matricula-backup %s%s)",
                    __version__,
                    ", --reset" if reset else "",
                )
                report = run_backup(settings, options)
    except FatalError as exc:
        logger.error("%s", exc)
        if settings is not None and not dry_run and not isinstance(exc, LockHeld):
            _notify(settings, _fatal_report(exc, reset), log_path or cache / LOG_NAME)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        logger.error("interrupted; what S3 confirmed so far is recorded")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:  # a bug: keep the traceback in the log, tell Teams
        logger.exception("internal error")
        if settings is not None and not dry_run:
            _notify(settings, _fatal_report(exc, reset), log_path or cache / LOG_NAME)
        typer.echo(
            f"internal error: {type(exc).__name__}: {exc} (traceback in {log_path})", err=True
        )
        raise typer.Exit(EXIT_COULD_NOT_RUN) from None

    for folder in report.folders:
        typer.echo(folder_line(folder, dry_run))
    summary = run_line(report)
    typer.echo(summary)
    logger.info("%s", summary)
    for problem in report.problems[:SHOWN_PROBLEMS]:
        typer.echo(f"error: {problem}", err=True)
    if report.error_count > SHOWN_PROBLEMS:
        typer.echo(f"... {report.error_count - SHOWN_PROBLEMS} more errors in {log_path}", err=True)
    if report.error_count and not dry_run:
        _notify(settings, report, log_path or cache / LOG_NAME)
    raise typer.Exit(EXIT_WITH_ERRORS if report.error_count else EXIT_OK)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _fatal_report(exc: Exception, reset: bool) -> RunReport:
    report = RunReport(reset=reset)
    report.add_problem(Problem("(whole run)", "run", f"the backup could not run: {exc}"))
    return report


def _notify(settings: Settings, report: RunReport, log_path: Path) -> None:
    if not settings.webhook:
        logger.warning("no notification.webhook in config.json: nobody is told of these errors")
        return
    notify.send(settings.webhook, notify.failure_card(report, log_path))


def main() -> None:
    app()
