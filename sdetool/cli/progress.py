"""Progress of the command line, on stderr: a rich bar on a terminal, plain periodic lines elsewhere.

Both displays receive the calls the library makes where it reports progress: ``start(label, total)``
when a task starts, ``advance(count, status)`` as it goes, ``finish()`` when it ends (on an error too).
Without a terminal (CI logs, Slurm, ``2>log``) a bar would leave nothing readable behind, so
:class:`PlainProgress` writes one line at the start, at most one per interval, and one at the end,
as pip and the Hugging Face tools do there.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable, TextIO

from rich.console import Console

from sdetool.errors import BadInputError

INTERVAL_VARIABLE = "SDETOOL_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0


class RichProgress:
    """Streaming progress as a rich bar on stderr (count, count/s, ETA)."""

    def __init__(self, console: Console, unit: str = "rows") -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._task = None
        self._unit = unit
        self._task_unit = unit

    def start(self, label: str, total: int, unit: str | None = None) -> None:
        """A task of ``total`` units starts; ``unit`` replaces the display's own unit for this task."""
        self._task_unit = unit or self._unit
        verb = "reading " if self._task_unit == "rows" else ""
        self._bar.start()
        self._task = self._bar.add_task(f"{verb}{label}", total=total, rate="", unit=self._task_unit)

    def advance(self, count: int, status: str = "") -> None:
        """``count`` more units are done; ``status`` (e.g. the loss) is shown beside the rate."""
        speed = self._bar.tasks[self._task].speed
        rate = f"{format_rate(speed)} {self._task_unit}/s" if speed else ""
        self._bar.update(self._task, advance=count, rate=" ".join(x for x in (status, rate) if x))

    def finish(self) -> None:
        """The task is over (done, or stopped by an error)."""
        self._bar.stop()


class PlainProgress:
    """Streaming progress as plain lines (no colours, no cursor movement) for a stream that is no terminal.

    One line when a task starts, then at most one every ``interval`` seconds, and one when it ends.
    Each names the task and gives done/total with the unit, the share done, the rate, the elapsed
    time and the ETA (at the end: ``done``, or ``stopped`` when the task ended short of its total),
    then the latest status text (e.g. the loss).

    Parameters
    ----------
    stream : TextIO, optional
        Where the lines go (default: ``sys.stderr`` at the time of each line).
    unit : str
        What is counted (rows, items, steps...); ``start`` may name another unit for one task.
    interval : float, optional
        Seconds between the lines of a task (default: :func:`progress_interval`).
    clock : callable, optional
        Monotonic seconds (default :func:`time.monotonic`; tests pass a fake one).

    Examples
    --------
    >>> ticks = iter([0.0, 4.0, 12.0, 20.0, 20.0])
    >>> progress = PlainProgress(sys.stdout, "rows", interval=10.0, clock=lambda: next(ticks))
    >>> progress.start("image", 1000)
    sdetool: reading image: 0/1,000 rows (0%), ? rows/s, elapsed 0:00:00, ETA ?
    >>> progress.advance(100)  # 4 s after the last line: nothing
    >>> progress.advance(500)
    sdetool: reading image: 600/1,000 rows (60%), 50 rows/s, elapsed 0:00:12, ETA 0:00:08
    >>> progress.advance(400)  # 8 s after the last line: nothing
    >>> progress.finish()
    sdetool: reading image: 1,000/1,000 rows (100%), 50 rows/s, elapsed 0:00:20, done
    """

    def __init__(self, stream: TextIO | None = None, unit: str = "rows", interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._unit = unit
        self._interval = progress_interval() if interval is None else interval
        self._clock = clock
        self._task: _Task | None = None

    def start(self, label: str, total: int, unit: str | None = None) -> None:
        """A task of ``total`` units starts: its first line."""
        task_unit = unit or self._unit
        verb = "reading " if task_unit == "rows" else ""
        self._task = _Task(f"{verb}{label}", int(total), task_unit, self._clock())
        self._write(self._task.line(self._task.started, "start"))

    def advance(self, count: int, status: str = "") -> None:
        """``count`` more units are done: a line when ``interval`` seconds have passed since the last one."""
        if self._task is None:
            return
        task = self._task
        task.done += count
        task.status = status or task.status
        now = self._clock()
        if now - task.last_line >= self._interval:
            self._write(task.line(now, "middle"))

    def finish(self) -> None:
        """The task is over: its last line (``stopped`` when it ended short of its total)."""
        if self._task is None:
            return
        task, self._task = self._task, None
        self._write(task.line(self._clock(), "end"))

    def _write(self, line: str) -> None:
        stream = self._stream or sys.stderr
        stream.write(line + "\n")
        stream.flush()


class _Task:
    """The state of one task of :class:`PlainProgress` and the making of its lines."""

    def __init__(self, label: str, total: int, unit: str, started: float) -> None:
        self.label, self.total, self.unit, self.started = label, total, unit, started
        self.done = 0
        self.status = ""
        self.last_line = started

    def line(self, now: float, kind: str) -> str:
        """The line at time ``now``; ``kind`` is start, middle or end."""
        self.last_line = now
        elapsed = max(now - self.started, 0.0)
        rate = self.done / elapsed if elapsed > 0 and kind != "start" else None
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total > 0 else ""
        parts = [f"sdetool: {self.label}: {self.done:,}/{self.total:,} {self.unit}{share}",
                 f"{'?' if rate is None else format_rate(rate)} {self.unit}/s", f"elapsed {format_duration(elapsed)}",
                 self._outlook(rate, kind)]
        if self.status:
            parts.append(self.status)
        return ", ".join(parts)

    def _outlook(self, rate: float | None, kind: str) -> str:
        """ETA on the way; ``done`` or ``stopped`` at the end."""
        if kind == "end":
            return "done" if self.done >= self.total else "stopped"
        if self.done >= self.total:
            return f"ETA {format_duration(0.0)}"
        if not rate:
            return "ETA ?"
        return f"ETA {format_duration((self.total - self.done) / rate)}"


def format_rate(per_second: float) -> str:
    """A rate for a progress display: two decimals under 10, whole numbers with separators above."""
    return f"{per_second:,.2f}" if per_second < 10 else f"{per_second:,.0f}"


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (seconds rounded down)."""
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def progress_interval() -> float:
    """Seconds between plain progress lines: ``$SDETOOL_PROGRESS_INTERVAL``, else 10.

    Raises
    ------
    BadInputError
        The variable is set to something other than a number of seconds >= 0.
    """
    text = os.environ.get(INTERVAL_VARIABLE, "").strip()
    if not text:
        return DEFAULT_INTERVAL
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not seconds >= 0 or math.isinf(seconds):
        raise BadInputError(f"{INTERVAL_VARIABLE}={text!r}: expected a number of seconds >= 0 between progress lines")
    return seconds


def progress_for(console: Console, quiet: bool = False, unit: str = "rows", main: bool = True):
    """The progress display of a command: nothing with ``quiet`` or off rank 0 (``main`` false), else a
    rich bar when ``console`` is a terminal and plain periodic lines on its stream when it is not."""
    if quiet or not main:
        return None
    if console.is_terminal:
        return RichProgress(console, unit=unit)
    return PlainProgress(console.file, unit=unit)
