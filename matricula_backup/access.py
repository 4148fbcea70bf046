"""Who may read what: the hints a "Permission denied" gets.

The backups run as a service account (README: Setting up a server), which
must read every image folder and own the cache directory. When it cannot, the
message says who it is and the command that gives it access, so the fix does
not have to be guessed.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from pathlib import Path


def user_name(uid: int | None = None) -> str:
    """The name of ``uid`` (default: the user running this), or the number if it has none."""
    uid = os.geteuid() if uid is None else uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def denied(exc: OSError) -> bool:
    return exc.errno in (errno.EACCES, errno.EPERM)


def read_hint() -> str:
    """What to do when an image file or folder cannot be read: give this user read access."""
    user = user_name()
    return (
        f"give {user} read access, e.g. setfacl -R -m u:{user}:rX FOLDER and "
        f"setfacl -R -d -m u:{user}:rX FOLDER, or a group with g+rX: see the README"
    )


def owner_hint(path: Path) -> str:
    """Whose ``path`` is, its mode, who runs this, and the chown/chmod that fixes it."""
    user = user_name()
    try:
        info = path.stat()
    except OSError:
        return f"this runs as {user}"
    owner = user_name(info.st_uid)
    mode = stat.S_IMODE(info.st_mode)
    return (
        f"it belongs to {owner} (mode {mode:o}) and this runs as {user}: run the command as "
        f"{owner} (runuser -u {owner} -- matricula-backup ...), or give the file to "
        f"{user}: chown {user} {path} && chmod 600 {path}"
    )
