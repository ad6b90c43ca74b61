"""Progress bars for long jobs (rich), kept at the CLI edge."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn


class Advance(Protocol):
    def __call__(self, n_tokens: int, total: int | None = None) -> None: ...


@contextmanager
def token_progress(console: Console, label: str, total: int) -> Iterator[Advance]:
    """A bar counting tokens with a tokens/s rate; yields ``advance(n_tokens, total=None)``.

    Pass ``total`` when a better estimate of the total is known (e.g. the exact count at the end).
    """
    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.completed:,}/{task.total:,} tok"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(label, total=total, rate="")

        def advance(n_tokens: int, total: int | None = None) -> None:
            if total is not None:
                progress.update(task, total=total)
            progress.advance(task, n_tokens)
            speed = progress.tasks[task].speed
            progress.update(task, rate=f"{speed:,.0f} tok/s" if speed else "")

        yield advance
