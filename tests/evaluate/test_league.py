"""`featurelens compare-dictionaries`: a sweep of dictionaries measured on the same held-out tokens, each row
equal to what `featurelens evaluate` reports for that dictionary alone on those tokens."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import featurelens as fl
from featurelens.evaluate.league import LeagueJob, league_table
from tests.cli.test_cli import assert_one_line_error, featurelens

HOOK = "layers.1.resid_post"


@pytest.fixture(scope="module")
def sweep(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("league")
    fl.run_capture(
        fl.CaptureConfig(
            out=str(root / "acts"), model=str(tiny_model_dir), hooks=(HOOK,), n_tokens=8_000, seq_len=32
        )
    )
    trained = featurelens(
        "train", "--acts", str(root / "acts"), "--hook", HOOK, "--k", "2,16", "--expansion", "4",
        "--batch-size", "256", "--lr", "0.01", "--epochs", "3", "--out", str(root / "sweep"),
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    return sorted(p for p in (root / "sweep").iterdir() if (p / "training.json").is_file())


def test_every_row_equals_evaluate_on_the_same_tokens(sweep: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "league"
    run = featurelens("compare-dictionaries", *map(str, sweep), "--tokens", "640", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert {p.name for p in out.iterdir()} == {"league.parquet", "league.csv", "pareto.png"}
    rows = {row["dictionary"]: row for row in pq.read_table(out / "league.parquet").to_pylist()}
    assert set(rows) == {path.name for path in sweep}
    assert len({row["tokens_measured"] for row in rows.values()}) == 1  # the same held-out tokens for all
    for path in sweep:
        alone = featurelens("evaluate", str(path), "--tokens", "640", "--json")
        assert alone.returncode == 0, alone.stderr
        expected, row = json.loads(alone.stdout), rows[path.name]
        for key in ("fvu", "l0", "dead_fraction", "dense_fraction", "ce_loss_recovered", "kl_to_clean"):
            assert row[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key
        training = json.loads((path / "training.json").read_text())
        assert row["training_tokens"] == training["tokens"]
        assert row["training_seconds"] == pytest.approx(training["tokens"] / training["tokens_per_second"])
    by_k = sorted(rows.values(), key=lambda row: row["l0"])
    assert by_k[0]["l0"] <= 2 < by_k[1]["l0"] <= 16
    assert by_k[1]["fvu"] < by_k[0]["fvu"]  # more active latents, better reconstruction
    assert "dictionaries on the same" in run.stdout


def test_reconstruction_only_and_bad_input(sweep: list[Path], tmp_path: Path) -> None:
    table = league_table(LeagueJob(folders=tuple(map(str, sweep)), tokens=320, with_loss=False))
    assert all(math.isnan(value) for value in table["ce_loss_recovered"].to_pylist())
    assert_one_line_error(featurelens("compare-dictionaries", str(tmp_path / "missing")), "missing")
    other = json.loads((sweep[0] / "training.json").read_text())
    (tmp_path / "other").mkdir()
    for name in ("config.json", "weights.safetensors"):
        (tmp_path / "other" / name).write_bytes((sweep[0] / name).read_bytes())
    (tmp_path / "other" / "training.json").write_text(json.dumps({**other, "model": "smollm2"}))
    mixed = featurelens("compare-dictionaries", str(sweep[0]), str(tmp_path / "other"))
    assert_one_line_error(mixed, "different models", "--model")
