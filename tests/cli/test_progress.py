"""Progress a log can see: with output sent to a file, long stages print plain lines at a steady interval."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from featurelens.cli.progress import format_duration, format_rate, stage_progress, token_progress


def log_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=200), buffer


def test_a_log_gets_the_first_and_last_state_when_the_interval_never_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FEATURELENS_PROGRESS_SECONDS", "3600")
    console, buffer = log_console()
    with token_progress(console, "capturing", total=1000) as advance:
        for _ in range(10):
            advance(100)
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("capturing: 0/1,000 tok (0.0%)")
    assert lines[1].startswith("capturing: 1,000/1,000 tok (100.0%)") and "tok/s" in lines[1]


def test_every_update_prints_at_interval_zero_with_rate_detail_and_a_new_total(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FEATURELENS_PROGRESS_SECONDS", "0")
    console, buffer = log_console()
    with stage_progress(console, "training", "steps") as update:
        update(1, 4, "loss 0.5")
        update(2, 4, "loss 0.4")
        update(3, 5, "loss 0.3")
    lines = buffer.getvalue().splitlines()
    assert lines[0].startswith("training: 0 steps") and "%" not in lines[0]  # no total known yet
    assert lines[1].startswith("training: 1/4 steps (25.0%)") and lines[1].endswith("loss 0.5")
    assert lines[3].startswith("training: 3/5 steps (60.0%)") and "left" in lines[3]
    assert len(lines) == 4  # the last state was already printed


def test_a_failed_stage_prints_no_final_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURELENS_PROGRESS_SECONDS", "3600")
    console, buffer = log_console()
    with pytest.raises(RuntimeError), stage_progress(console, "explaining", "features", 10) as update:
        update(3)
        raise RuntimeError("boom")
    assert len(buffer.getvalue().splitlines()) == 1  # the start line only: no "done" state for a failure


def test_a_terminal_draws_a_bar_not_lines() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    with stage_progress(console, "mapping", "tok", 10) as update:
        update(10)
    assert "mapping: " not in buffer.getvalue() and "mapping" in buffer.getvalue()


def test_formats() -> None:
    assert [format_duration(s) for s in (0, 59.4, 75, 3725)] == ["0s", "59s", "1m15s", "1h02m"]
    assert format_rate(772.4, "tok", False) == "772 tok/s"
    assert format_rate(0.52, "steps", False) == "0.5 steps/s"
    assert format_rate(41.3, "features", True) == "2,478 features/min"
