"""The walk of the first backup folder, started before a run loads its heavy code.

Before its first scan a run imports SQLAlchemy, the queues, the worker and the
S3 code and opens state.db: about 0.3 s in which the walk, which needs none of
that, can already go on. ``cli.py`` calls ``first_walk`` as soon as config.json
is read (under the run's lock), then imports ``run.py``; the scan of that
folder takes the walk over (``scan_folder(..., started=...)``), and
``run_backup`` ends it if the run never gets there (a database error, a
missing folder). The walk is the same process the scan would start: the same
messages, the same memory bound (its pipe is drained into a bounded queue).

Measured on 1,000,010 files (no-change run): the walk is the run's critical
path, so the head start comes off its wall time.
"""

from __future__ import annotations

import os

from matricula_backup.config import Settings
from matricula_backup.exclude import Excludes
from matricula_backup.folders import backup_folders
from matricula_backup.model import RunOptions
from matricula_backup.scan import Walk


def first_walk(settings: Settings, options: RunOptions) -> Walk | None:
    """The walk of the folder the run scans first, started now; None if there is none.

    Any problem with the folders (a missing root, an unreadable one) is left to
    the run, which finds and reports it again; so is a folder that is missing.
    """
    try:
        folders, _ = backup_folders(settings)
    except Exception:  # the run meets the same error and reports it
        return None
    if options.only:  # in the order of --folder, as the run takes them
        known = {folder.path: folder for folder in folders}
        folders = [known[path] for path in options.only if path in known]
    if not folders or not os.path.isdir(folders[0].path):
        return None
    return Walk(folders[0], Excludes(settings.exclude))
