"""Progress bars of the command line: rich, on stderr, drawn only where the library reports progress."""

from __future__ import annotations

from rich.console import Console


class RichProgress:
    """Streaming progress as a rich bar on stderr (count, count/s, ETA)."""

    def __init__(self, console: Console, unit: str = "rows") -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._task = None
        self._unit = unit
        self._verb = "reading " if unit == "rows" else ""

    def start(self, label: str, total_rows: int) -> None:
        self._bar.start()
        self._task = self._bar.add_task(f"{self._verb}{label}", total=total_rows, rate="")

    def advance(self, rows: int, status: str = "") -> None:
        speed = self._bar.tasks[self._task].speed
        rate = (f"{speed:,.2f}" if speed < 10 else f"{speed:,.0f}") + f" {self._unit}/s" if speed else ""
        self._bar.update(self._task, advance=rows, rate=" ".join(x for x in (status, rate) if x))

    def finish(self) -> None:
        self._bar.stop()


def progress_for(console: Console, quiet: bool = False, unit: str = "rows", main: bool = True):
    """The progress display of a command: a rich bar on a terminal, nothing with ``quiet`` or off rank 0."""
    if quiet or not main:
        return None
    return RichProgress(console, unit=unit) if console.is_terminal else None
