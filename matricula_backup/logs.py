"""Logging: a rotated log file in the cache directory, warnings on stderr."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path

LOG_NAME = "matricula-backup.log"
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 5  # 60 MB at most, whatever the number of nightly runs


def setup_logging(cache_dir: Path | None, verbose: bool = False) -> Path | None:
    """Log to ``cache_dir/matricula-backup.log`` (rotated) and to stderr."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stderr)
    # Per-file problems go to the log file; the terminal (and cron's mail) gets
    # the summary from cli.py, and errors that stop the run.
    console.setLevel(logging.INFO if verbose else logging.ERROR)
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root.addHandler(console)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if cache_dir is None or not cache_dir.is_dir():
        return None
    path = cache_dir / LOG_NAME
    try:
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
        )
    except OSError as exc:
        logging.getLogger(__name__).warning("cannot write the log file %s: %s", path, exc)
        return None
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    )
    root.addHandler(handler)
    return path
