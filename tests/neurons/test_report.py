"""The neuron report on a store with planted units: it must find exactly those, with the right rates, and its
statistics must equal numpy/scipy references however the rows are chunked."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

from featurelens.capture.rows import Rows
from featurelens.errors import NeuronError
from featurelens.neurons import (
    NeuronJob,
    NeuronSettings,
    UnitStatistics,
    load_report,
    report_from_rows,
    run_neuron_report,
    save_report,
)
from featurelens.neurons.report import checkpoint_path
from featurelens.neurons.statistics import chunk_moments, merge_moments
from tests.cli.test_cli import assert_one_line_error, featurelens
from tests.stores import write_rows_store

HOOK = "layers.1.mlp_neurons"
SEQ, N_SEQ, WIDTH = 64, 120, 24
DEAD, ALWAYS_ON, TOKEN, PREVIOUS, POSITIONAL, MASSIVE = 0, 1, 2, 3, 4, 5
TOKEN_ID, PREVIOUS_ID = 7, 9


def planted_rows(seed: int = 0) -> dict[str, np.ndarray]:
    """Sequences of random tokens 3..59 and activations with one planted unit of each kind; the rest noise.

    dead: always <= 0; always-on: always > 0; token: 5 on token 7, else ~0; previous token: 5 right after
    token 9; positional: 3 sin(position / 8); massive: 5,000 at position 0 of every sequence.
    """
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, 60, size=(N_SEQ, SEQ))
    previous = np.concatenate([np.full((N_SEQ, 1), -1), tokens[:, :-1]], axis=1)
    positions = np.broadcast_to(np.arange(SEQ), tokens.shape)
    x = rng.normal(size=(N_SEQ, SEQ, WIDTH))
    x[..., DEAD] = -np.abs(x[..., DEAD]) - 0.1
    x[..., ALWAYS_ON] = np.abs(x[..., ALWAYS_ON]) + 0.5
    x[..., TOKEN] = np.where(tokens == TOKEN_ID, 5.0, 0.0) + 0.01 * x[..., TOKEN]
    x[..., PREVIOUS] = np.where(previous == PREVIOUS_ID, 5.0, 0.0) + 0.01 * x[..., PREVIOUS]
    x[..., POSITIONAL] = 3 * np.sin(positions / 8) + 0.1 * x[..., POSITIONAL]
    x[:, 0, MASSIVE] = 5000.0
    flat = {
        "x": x.reshape(-1, WIDTH).astype(np.float32),
        "tokens": tokens.reshape(-1).astype(np.int32),
        "previous": previous.reshape(-1).astype(np.int32),
        "positions": positions.reshape(-1).astype(np.int32),
        "docs": np.repeat(np.arange(N_SEQ) // 4, SEQ).astype(np.int32),
    }
    return flat


def write_store(root: Path, rows: dict[str, np.ndarray], model: str, hook: str = HOOK) -> Path:
    return write_rows_store(
        root, rows["tokens"], rows["docs"], rows["positions"], {hook: rows["x"]}, model, SEQ
    )


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Any]:
    rows = planted_rows()
    store = write_store(tmp_path_factory.mktemp("neurons") / "acts", rows, str(tiny_model_dir))
    report = run_neuron_report(NeuronJob(acts=str(store), tokens=10**9, chunk_tokens=1000))
    return {"rows": rows, "store": store, "report": report, "units": report.units.to_pandas()}


def flagged(units: Any, flag: str) -> set[int]:
    return set(units.loc[units[flag], "unit"].tolist())


def test_the_report_finds_exactly_the_planted_units(planted: dict[str, Any]) -> None:
    units = planted["units"]
    assert flagged(units, "dead") == {DEAD}
    assert flagged(units, "always_on") == {ALWAYS_ON}
    assert flagged(units, "token_specific") == {TOKEN}
    assert flagged(units, "previous_token_specific") == {PREVIOUS}
    assert flagged(units, "bigram_specific") == set()
    assert flagged(units, "positional") == {POSITIONAL}
    assert flagged(units, "massive") == {MASSIVE}
    assert flagged(units, "outlier") == {MASSIVE}


def test_the_planted_rates_and_tokens_are_right(planted: dict[str, Any]) -> None:
    units, rows = planted["units"].set_index("unit"), planted["rows"]
    n = len(rows["tokens"])
    assert units.loc[TOKEN, "token"] == TOKEN_ID and units.loc[TOKEN, "token_coverage"] == 1.0
    frequency = (rows["tokens"] == TOKEN_ID).mean()
    assert units.loc[TOKEN, "token_lift"] == pytest.approx(1 / frequency)
    assert (
        units.loc[PREVIOUS, "previous_token"] == PREVIOUS_ID
        and units.loc[PREVIOUS, "previous_coverage"] == 1.0
    )
    assert units.loc[MASSIVE, "massive_100x_rate"] == pytest.approx(N_SEQ / n)
    assert units.loc[MASSIVE, "max_abs_position"] == 0
    assert units.loc[POSITIONAL, "position_r2"] > 0.99
    assert units.loc[ALWAYS_ON, "fire_rate"] == 1.0 and units.loc[DEAD, "fire_rate"] == 0.0
    massive = planted["report"].massive.to_pandas()
    assert set(massive["unit"]) == {MASSIVE} and set(massive["position"]) == {0} and len(massive) == N_SEQ


def test_statistics_equal_numpy_and_scipy(planted: dict[str, Any]) -> None:
    units, x = planted["units"], planted["rows"]["x"].astype(np.float64)
    np.testing.assert_allclose(units["kurtosis"], scipy.stats.kurtosis(x, axis=0, fisher=False), rtol=1e-5)
    np.testing.assert_allclose(units["skewness"], scipy.stats.skew(x, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(units["mean"], x.mean(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(units["std"], x.std(0), rtol=1e-6)
    np.testing.assert_allclose(units["fire_rate"], (x > 0).mean(0))
    np.testing.assert_allclose(units["zero_rate"], (x == 0).mean(0))
    layer = planted["report"].layers.to_pylist()[0]
    median = layer["median_abs"]
    np.testing.assert_allclose(units["near_zero_rate"], (np.abs(x) <= 0.01 * median).mean(0))
    np.testing.assert_allclose(units["outlier_rate"], (np.abs(x) > 20 * median).mean(0))
    assert layer["kurtosis"] == pytest.approx(scipy.stats.kurtosis(x.reshape(-1), fisher=False), rel=1e-6)
    assert layer["zero_fraction"] == pytest.approx((x == 0).mean())


def test_position_variance_explained_equals_a_groupby(planted: dict[str, Any]) -> None:
    """Over the rows that are not sink rows (norm above 10x the median row norm): the massive positions."""
    rows = planted["rows"]
    norms = np.linalg.norm(rows["x"], axis=1)
    typical = norms <= 10 * np.median(norms)
    assert (~typical).sum() == N_SEQ == planted["report"].layers.to_pylist()[0]["sink_rows"]
    x, positions = rows["x"][typical].astype(np.float64), rows["positions"][typical]
    counts = np.bincount(positions)
    present = counts > 0
    sums = np.stack([np.bincount(positions, weights=x[:, j]) for j in range(WIDTH)], 1)
    means = sums[present] / counts[present, None]
    expected = (counts[present, None] * (means - x.mean(0)) ** 2).sum(0) / ((x - x.mean(0)) ** 2).sum(0)
    np.testing.assert_allclose(planted["units"]["position_r2"], expected, rtol=1e-4, atol=1e-5)
    assert planted["units"]["position_r2"][MASSIVE] < 0.1  # its sinks alone would make it "positional"


@pytest.mark.parametrize("sizes", [(1,), (7, 1, 500), (4096,)])
def test_moments_and_top_values_do_not_depend_on_chunking(sizes: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    x = (rng.standard_t(3, size=(3000, 9)) * rng.uniform(0.1, 100, 9) + rng.uniform(-1e3, 1e3, 9)).astype(
        np.float32
    )
    stats = UnitStatistics(9, NeuronSettings(top=16))
    first = 0
    for i in range(10**6):
        if first >= len(x):
            break
        size = sizes[i % len(sizes)]
        part = torch.from_numpy(x[first : first + size])
        stats.update(part, torch.arange(first, first + len(part)), torch.zeros(len(part), dtype=torch.int64))
        first += size
    reference = x.astype(np.float64)
    np.testing.assert_allclose(
        stats.kurtosis(), scipy.stats.kurtosis(reference, axis=0, fisher=False), rtol=1e-4
    )
    np.testing.assert_allclose(stats.mean(), reference.mean(0), rtol=1e-7)
    top = np.sort(x, axis=0)[::-1][:16]
    np.testing.assert_array_equal(stats.top_values.numpy(), top)
    np.testing.assert_array_equal(x[stats.top_rows.numpy(), np.arange(9)], top)


def test_merge_moments_of_two_halves_equals_the_whole() -> None:
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(3.0, 2.0, size=(1000, 4)).astype(np.float32))
    merged = merge_moments(chunk_moments(x[:313]), chunk_moments(x[313:]))
    whole = chunk_moments(x)
    for a, b in zip(merged[1:], whole[1:], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_report_round_trips_through_its_folder(planted: dict[str, Any], tmp_path: Path) -> None:
    folder = save_report(planted["report"], tmp_path / "report")
    for name in ("report.html", "massive.png", "sparsity.png", "kurtosis.png", "firing.png", "units.parquet"):
        assert (folder / name).stat().st_size > 0, name
    again = load_report(folder)
    pd.testing.assert_frame_equal(again.units.to_pandas(), planted["units"])
    with pytest.raises(NeuronError, match="already exists"):
        save_report(planted["report"], folder)
    assert not list(tmp_path.glob(".*partial*"))


def test_live_report_keeps_position_zero_and_every_token(tiny_model_dir: Path) -> None:
    job = NeuronJob(model=str(tiny_model_dir), hooks=("layers.*.mlp_neurons",), tokens=512, seq_len=64)
    report = run_neuron_report(job)
    assert report.meta["rows"] == 512
    assert [row["hook"] for row in report.layers.to_pylist()] == [f"layers.{i}.mlp_neurons" for i in range(3)]
    assert report.units.num_rows == 3 * 64


def test_chunks_from_memory_give_the_same_report_as_the_store(planted: dict[str, Any]) -> None:
    rows = planted["rows"]
    chunk = Rows(
        {HOOK: torch.from_numpy(rows["x"])},
        rows["tokens"],
        rows["previous"],
        rows["positions"],
        rows["docs"],
        np.arange(len(rows["tokens"])),
    )
    again = report_from_rows(iter([chunk]), [HOOK], NeuronSettings()).units.to_pandas()
    for flag in ("dead", "always_on", "token_specific", "previous_token_specific", "positional", "massive"):
        assert flagged(again, flag) == flagged(planted["units"], flag)


def test_cli_writes_the_report_and_refuses_bad_input(planted: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "cli-report"
    done = featurelens("neurons", "--acts", str(planted["store"]), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "layers.1.mlp_neurons" in done.stdout and (out / "report.html").is_file()
    assert_one_line_error(
        featurelens("neurons", "--acts", str(planted["store"]), "--out", str(out)), "--overwrite"
    )
    bad_hook = featurelens(
        "neurons", "--acts", str(planted["store"]), "--hook", "layers.9.*", "--out", str(tmp_path / "x")
    )
    assert_one_line_error(bad_hook, "layers.9.*", "mlp_neurons")
    assert_one_line_error(
        featurelens("neurons", "--massive", "100,x", "--out", str(tmp_path / "y")), "--massive"
    )
    assert_one_line_error(
        featurelens("neurons", "--acts", str(tmp_path), "--out", str(tmp_path / "z")),
        "not an activation store",
    )


class Interrupt(Exception):
    """Stands in for a kill between two chunks."""


@pytest.mark.parametrize("source", ["store", "live"])
def test_an_interrupted_report_resumes_to_the_uninterrupted_result(
    source: str, planted: dict[str, Any], tiny_model_dir: Path, tmp_path: Path
) -> None:
    if source == "store":
        job = NeuronJob(acts=str(planted["store"]), tokens=10**9, chunk_tokens=1000, out=str(tmp_path / "r"))
    else:
        job = NeuronJob(
            model=str(tiny_model_dir), tokens=1024, seq_len=64, batch_size=4, out=str(tmp_path / "r")
        )
    whole = run_neuron_report(job)
    chunks = 0

    def stop_after_two(_n: int, _expected: int) -> None:
        nonlocal chunks
        chunks += 1
        if chunks == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_neuron_report(dataclasses.replace(job, checkpoint_seconds=1e-9), on_rows=stop_after_two)
    checkpoint = checkpoint_path(job.out)
    assert checkpoint.is_file()
    with pytest.raises(NeuronError, match="--resume"):
        run_neuron_report(job)
    with pytest.raises(NeuronError, match="other settings"):
        run_neuron_report(dataclasses.replace(job, resume=True, settings=NeuronSettings(top=5)))
    resumed = run_neuron_report(dataclasses.replace(job, resume=True))
    assert not checkpoint.exists()  # a whole pass leaves none behind
    assert resumed.meta["rows"] == whole.meta["rows"]
    pd.testing.assert_frame_equal(resumed.units.to_pandas(), whole.units.to_pandas())
    pd.testing.assert_frame_equal(resumed.massive.to_pandas(), whole.massive.to_pandas())


def test_nan_activations_fail_with_their_rows(planted: dict[str, Any]) -> None:
    rows = planted["rows"]
    x = rows["x"].copy()
    x[70, 3] = np.nan
    chunk = Rows(
        {HOOK: torch.from_numpy(x)},
        rows["tokens"],
        rows["previous"],
        rows["positions"],
        rows["docs"],
        np.arange(len(x)),
    )
    with pytest.raises(NeuronError, match=r"layers.1.mlp_neurons: NaN/Inf activations at rows \[70\]"):
        report_from_rows(iter([chunk]), [HOOK], NeuronSettings())
