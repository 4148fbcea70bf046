"""The live progress display of a run on a terminal, drawn with rich (see ``progress.py``)."""

from __future__ import annotations

from collections.abc import Iterable

from rich.cells import cell_len
from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress_bar import ProgressBar
from rich.table import Column, Table
from rich.text import Text

# The columns of a line, by name. Those that do not fit the terminal are left out,
# the optional ones first in the reverse of this order; a cut number ("175.8/7...")
# or a wrapped line would be worse than a missing column.
_ESSENTIAL = ("spinner", "description", "files", "errors")
_OPTIONAL = ("bytes", "eta", "speed", "bar")
MIN_DESCRIPTION = 24
MIN_BAR = 10
BAR_WIDTH = 24


class _FittingProgress(Progress):
    """rich's Progress, but every line fits the terminal: no wrapping, no cut numbers."""

    def __init__(self, columns: dict[str, ProgressColumn], console: Console | None) -> None:
        self._named = columns
        super().__init__(*columns.values(), console=console, transient=False)

    def make_tasks_table(self, tasks: Iterable[Task]) -> Table:
        visible = [task for task in tasks if task.visible]
        if not visible:  # also while rich starts up, before it has a console
            return Table.grid()
        cells = {
            name: [column(task) for task in visible]
            for name, column in self._named.items()
            if name not in ("description", "bar")
        }
        widths = {name: max(map(_width, found), default=0) for name, found in cells.items()}
        described = max((len(task.description) for task in visible), default=0)
        room = self.console.width
        chosen = list(_ESSENTIAL)
        used = sum(widths[name] for name in _ESSENTIAL if name in widths)
        used += min(described, MIN_DESCRIPTION) + len(chosen) - 1
        bar = 0
        for name in _OPTIONAL:
            need = MIN_BAR if name == "bar" else widths[name]
            if used + 1 + need <= room:
                chosen.append(name)
                used += 1 + need
                if name == "bar":
                    bar = min(BAR_WIDTH, room - used + MIN_BAR)
                    used += bar - MIN_BAR
        description = min(described, MIN_DESCRIPTION + room - used)
        widths["description"], widths["bar"] = description, bar
        order = [name for name in self._named if name in chosen]
        table = Table.grid(
            *(Column(no_wrap=True, width=widths[name]) for name in order), padding=(0, 1)
        )
        for index, task in enumerate(visible):
            row: list[RenderableType] = []
            for name in order:
                if name == "description":
                    row.append(Text(_short(task.description, description)))
                elif name == "bar":
                    row.append(
                        ProgressBar(
                            total=max(0, task.total) if task.total is not None else None,
                            completed=max(0, task.completed),
                            width=bar,
                            pulse=not task.started,
                            animation_time=task.get_time(),
                        )
                    )
                else:
                    row.append(cells[name][index])
            table.add_row(*row)
        return table


def _width(renderable: RenderableType) -> int:
    return cell_len(renderable.plain) if isinstance(renderable, Text) else 0


class TerminalProgress:
    """One line per backup folder: files and bytes done / total, speed, ETA, errors."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = _FittingProgress(
            {
                "spinner": SpinnerColumn(),
                "description": TextColumn("{task.description}", markup=False),
                "bar": BarColumn(bar_width=BAR_WIDTH),
                "files": TextColumn("{task.fields[files_done]}/{task.fields[files]} files"),
                "bytes": DownloadColumn(binary_units=True),
                "speed": TransferSpeedColumn(),
                "eta": TimeRemainingColumn(),
                "errors": TextColumn("{task.fields[errors]} errors", style="red"),
            },
            console,
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
    """The end of a long path, which names the folder: "…/Taufbuch 1890"."""
    if width <= 1:
        return folder[:width]
    return folder if len(folder) <= width else "…" + folder[-(width - 1) :]
