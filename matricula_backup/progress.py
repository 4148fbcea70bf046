"""Live progress on a terminal; nothing at all under cron.

The run calls the same three methods either way; ``cli.py`` picks the terminal
display (``live.py``, drawn with rich) only when stdout is a TTY and --quiet was
not given, so a run under cron does not load rich at all.
"""

from __future__ import annotations

from typing import Protocol


class RunProgress(Protocol):
    def scanning(self, folder: str) -> None: ...

    def uploading(self, folder: str, files: int, size: int) -> None: ...

    def advance(self, size: int, error: bool = False) -> None: ...

    def close(self) -> None: ...


class NoProgress:
    """Under cron or with --quiet: the summary lines are all there is."""

    def scanning(self, folder: str) -> None:
        pass

    def uploading(self, folder: str, files: int, size: int) -> None:
        pass

    def advance(self, size: int, error: bool = False) -> None:
        pass

    def close(self) -> None:
        pass
