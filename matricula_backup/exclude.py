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
        # The same as regular expressions (None: no such patterns), for the walk's process.
        self.name_regex = self._names.pattern if self._names is not None else None
        self.path_regex = self._paths.pattern if self._paths is not None else None
        self.name_match = self._names.match if self._names is not None else None
        self.path_match = self._paths.match if self._paths is not None else None

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def excluded(self, name: str, rel: str) -> bool:
        """Is the entry ``name`` at ``rel`` (relative to the backup folder) excluded?"""
        return bool(
            (self._names is not None and self._names.match(name))
            or (self._paths is not None and self._paths.match(rel))
        )
