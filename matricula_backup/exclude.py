"""``backup.exclude``: glob patterns for files and folders that are not backed up.

The rules, kept simple so that they are predictable:

- A pattern without '/' is matched against the *name* of every file and folder,
  at any depth: ``*.tmp``, ``Thumbs.db``, ``.DS_Store``, ``@eaDir``.
- A pattern with '/' is matched against the path *relative to the backup
  folder*: ``scans/tmp/*``, ``*/Vorschau/*``; a leading '/' is ignored.
- ``*`` and ``?`` match any characters, '/' included; ``[abc]`` a set. Case matters.
- An excluded folder is not entered: nothing below it is backed up.

Files that were backed up before and are excluded now count as removed: their
objects get delete markers (subject to ``backup.max_delete_percent``).
"""

from __future__ import annotations

import fnmatch
import re


class Excludes:
    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.patterns = patterns
        names = [p for p in patterns if "/" not in p]
        paths = [p.lstrip("/") for p in patterns if "/" in p]
        self._names = re.compile("|".join(fnmatch.translate(p) for p in names)) if names else None
        self._paths = re.compile("|".join(fnmatch.translate(p) for p in paths)) if paths else None

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def excluded(self, name: str, rel: str) -> bool:
        """Is the entry ``name`` at ``rel`` (relative to the backup folder) excluded?"""
        return bool(
            (self._names is not None and self._names.match(name))
            or (self._paths is not None and self._paths.match(rel))
        )
