"""Live progress on a terminal; nothing at all under cron.

The run calls the same three methods either way; ``cli.py`` picks the terminal
display only when stdout is a TTY and --quiet was not given.
"""

from __future__ import annotations

from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


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


class TerminalProgress:
    """One line per backup folder: files and bytes done / total, speed, ETA, errors."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", markup=False),
            BarColumn(bar_width=24),
            TextColumn("{task.fields[files_done]}/{task.fields[files]} files"),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[errors]} errors", style="red"),
            console=console,
            transient=False,
        )
        self._task: TaskID | None = None
        self._scanning = False  # the current task is a scan: no total, removed when done
        self._total: int | None = None
        self._files_done = 0
        self._errors = 0
        self._progress.start()

    def scanning(self, folder: str) -> None:
        self._start_task(f"{_short(folder)} (scanning)", total=None, files=0)
        self._scanning = True

    def uploading(self, folder: str, files: int, size: int) -> None:
        self._start_task(_short(folder), total=max(size, 1), files=files)

    def advance(self, size: int, error: bool = False) -> None:
        if self._task is None:
            return
        self._files_done += 1
        self._errors += int(error)
        self._progress.update(
            self._task, advance=size, files_done=self._files_done, errors=self._errors
        )

    def close(self) -> None:
        self._finish()
        self._progress.stop()

    def _start_task(self, description: str, total: int | None, files: int) -> None:
        self._finish()
        self._files_done = self._errors = 0
        self._total = total
        self._task = self._progress.add_task(
            description, total=total, files=files, files_done=0, errors=0
        )

    def _finish(self) -> None:
        if self._task is None:
            return
        if self._scanning:  # a scan with nothing to upload after it
            self._progress.remove_task(self._task)
        else:
            self._progress.update(self._task, completed=self._total)
        self._task, self._scanning = None, False


def _short(folder: str, width: int = 40) -> str:
    return folder if len(folder) <= width else "…" + folder[-(width - 1) :]
