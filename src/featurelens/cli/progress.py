"""Progress for long jobs, kept at the CLI edge: a rich bar on a terminal, plain lines in a log.

Run under ``nohup``, CI or a scheduler (output sent to a file), a rich bar draws nothing until the stage
ends, so a log would show no sign of life for minutes. There each stage prints one plain line every
``FEATURELENS_PROGRESS_SECONDS`` (default 10) seconds instead: stage, done/total, rate and time left.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

INTERVAL_VARIABLE = "FEATURELENS_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 10.0


class Update(Protocol):
    def __call__(self, completed: int, total: int | None = None, detail: str = "") -> None: ...


class Advance(Protocol):
    def __call__(self, n_tokens: int, total: int | None = None) -> None: ...


def log_interval() -> float:
    """Seconds between plain progress lines (``FEATURELENS_PROGRESS_SECONDS``; 0 prints every update)."""
    value = os.environ.get(INTERVAL_VARIABLE, "")
    try:
        return max(0.0, float(value)) if value else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL


def format_duration(seconds: float) -> str:
    """``75`` -> ``'1m15s'``; ``3725`` -> ``'1h02m'``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_rate(count_per_second: float, unit: str, per_minute: bool) -> str:
    """``772.4, 'tok'`` -> ``'772 tok/s'``; ``0.52, 'steps'`` -> ``'0.5 steps/s'``."""
    shown = count_per_second * 60 if per_minute else count_per_second
    number = f"{shown:,.0f}" if shown >= 100 else f"{shown:.1f}"
    return f"{number} {unit}/{'min' if per_minute else 's'}"


class LogLines:
    """Plain progress lines at a steady interval: ``capturing: 51,200/200,000 tok (25.6%), 772 tok/s,
    about 3m13s left``. The first update and the last state are always printed."""

    def __init__(self, console: Console, label: str, unit: str, per_minute: bool, interval: float) -> None:
        self.console, self.label, self.unit, self.per_minute = console, label, unit, per_minute
        self.interval = interval
        self.start = time.monotonic()
        self.last_print: float | None = None
        self.completed, self.detail = 0, ""
        self.total: int | None = None
        self.printed_state: tuple[int, int | None, str] | None = None

    def update(self, completed: int, total: int | None = None, detail: str = "") -> None:
        self.completed, self.detail = completed, detail
        self.total = total if total is not None else self.total
        now = time.monotonic()
        if self.last_print is None or now - self.last_print >= self.interval:
            self.print_line(now)

    def finish(self) -> None:
        if self.printed_state != (self.completed, self.total, self.detail):
            self.print_line(time.monotonic())

    def print_line(self, now: float) -> None:
        self.last_print = now
        self.printed_state = (self.completed, self.total, self.detail)
        parts = [f"{self.completed:,}" + (f"/{self.total:,}" if self.total else "") + f" {self.unit}"]
        if self.total:
            parts[0] += f" ({min(self.completed / self.total, 1.0):.1%})"
        elapsed = now - self.start
        if self.completed and elapsed > 0:
            rate = self.completed / elapsed
            parts.append(format_rate(rate, self.unit, self.per_minute))
            if self.total and self.total > self.completed:
                parts.append(f"about {format_duration((self.total - self.completed) / rate)} left")
        parts.append(f"{format_duration(elapsed)} elapsed")
        if self.detail:
            parts.append(self.detail)
        self.console.print(
            f"{self.label}: " + ", ".join(parts), markup=False, highlight=False, soft_wrap=True
        )


@contextmanager
def stage_progress(
    console: Console, label: str, unit: str, total: int | None = None, per_minute: bool = False
) -> Iterator[Update]:
    """Progress of one stage counting ``unit``s; yields ``update(completed, total=None, detail="")``.

    ``completed`` is the running count (not an increment); ``total`` replaces the estimate when a better
    one is known; ``detail`` is shown after the rate (e.g. the loss). A bar on a terminal, plain lines at
    a steady interval otherwise.
    """
    if not console.is_terminal:
        lines = LogLines(console, label, unit, per_minute, log_interval())
        lines.update(0, total)
        yield lines.update
        lines.finish()
        return
    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[detail]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(label, total=total, rate="", detail="")

        def update(completed: int, total: int | None = None, detail: str = "") -> None:
            if total is not None:
                progress.update(task, total=total)
            progress.update(task, completed=completed, detail=detail)
            speed = progress.tasks[task].speed
            progress.update(task, rate=format_rate(speed, unit, per_minute) if speed else "")

        yield update


@contextmanager
def token_progress(console: Console, label: str, total: int) -> Iterator[Advance]:
    """Progress counting tokens with a tokens/s rate; yields ``advance(n_tokens, total=None)``.

    Pass ``total`` when a better estimate of the total is known (e.g. the exact count at the end).
    """
    with stage_progress(console, label, "tok", total) as update:
        done = 0

        def advance(n_tokens: int, total: int | None = None) -> None:
            nonlocal done
            done += n_tokens
            update(done, total)

        yield advance
