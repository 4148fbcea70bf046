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
        self._progress.start()

    def scanning(self, folder: str) -> None:
        self._finish()
        self._task = self._progress.add_task(
            f"{_short(folder)} (scanning)", total=None, files=0, files_done=0, errors=0
        )

    def uploading(self, folder: str, files: int, size: int) -> None:
        self._finish()
        self._task = self._progress.add_task(
            _short(folder), total=max(size, 1), files=files, files_done=0, errors=0
        )

    def advance(self, size: int, error: bool = False) -> None:
        if self._task is None:
            return
        fields = self._progress.tasks[self._task_index()].fields
        self._progress.update(
            self._task,
            advance=size,
            files_done=fields["files_done"] + 1,
            errors=fields["errors"] + int(error),
        )

    def close(self) -> None:
        self._finish()
        self._progress.stop()

    def _finish(self) -> None:
        if self._task is not None:
            task = self._progress.tasks[self._task_index()]
            if task.total is None:  # a scan with nothing to upload after it
                self._progress.remove_task(self._task)
            else:
                self._progress.update(self._task, completed=task.total)
            self._task = None

    def _task_index(self) -> int:
        return next(i for i, task in enumerate(self._progress.tasks) if task.id == self._task)


def _short(folder: str, width: int = 40) -> str:
    return folder if len(folder) <= width else "…" + folder[-(width - 1) :]
