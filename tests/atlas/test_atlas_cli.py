"""`featurelens atlas` and `featurelens show` as a user runs them: real subprocesses, real files."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.cli.test_cli import assert_one_line_error, featurelens


@pytest.fixture(scope="module")
def atlas_file(planted: dict[str, Any]) -> Path:
    out = planted["root"] / "cli.sqlite"
    result = featurelens(
        "atlas",
        str(planted["root"] / "sae"),
        "--acts",
        str(planted["root"] / "acts"),
        "--model",
        planted["model"],
        "--out",
        str(out),
        "--top-k",
        "5",
        "--before",
        "3",
        "--after",
        "1",
    )
    assert result.returncode == 0, result.stderr
    assert "atlas of 32 features" in result.stdout and "featurelens show" in result.stdout
    return out


def test_show_prints_a_feature_card_and_writes_its_histogram(atlas_file: Path, tmp_path: Path) -> None:
    png = tmp_path / "f3.png"
    result = featurelens("show", str(atlas_file), "3", "--png", str(png))
    assert result.returncode == 0, result.stderr
    for fragment in ("feature 3", "density", "top activating contexts", "quantile samples", "promotes"):
        assert fragment in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    overview = featurelens("show", str(atlas_file))
    assert (
        overview.returncode == 0
        and "32 features" in overview.stdout
        and "density (log10" in overview.stdout
        and "recommended features" in overview.stdout
    )


def test_export_parquet_holds_every_row(atlas_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "tables"
    result = featurelens("atlas", str(atlas_file), "--export", "parquet", "--out", str(out))
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(atlas_file) as db:
        for table in ("features", "examples", "tokens", "token_effects", "neighbours"):
            (count,) = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
            assert pq.read_table(out / f"{table}.parquet").num_rows == count, table
        top = next(e for e in pq.read_table(out / "examples.parquet").to_pylist() if e["kind"] == "top")
        query = "SELECT activations FROM examples WHERE feature = ? AND kind = 'top' AND rank = ?"
        (blob,) = db.execute(query, (top["feature"], top["rank"])).fetchone()
    assert np.frombuffer(blob, "<f2").tolist() == top["activations"]


def test_bad_input_is_one_clear_line(atlas_file: Path, planted: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "notes.sqlite").write_text("hello")
    assert_one_line_error(featurelens("show", str(tmp_path / "notes.sqlite"), "1"), "not a featurelens atlas")
    assert_one_line_error(featurelens("show", str(atlas_file), "32"), "out of range", "0..31")
    assert_one_line_error(featurelens("show", str(atlas_file), "x1"), "must be an integer")
    assert_one_line_error(featurelens("show", str(atlas_file), "3", "--png", str(tmp_path / "f.jpg")), ".png")
    build = ["--acts", str(planted["root"] / "acts"), "--model", planted["model"]]
    assert_one_line_error(
        featurelens("atlas", str(planted["root"] / "sae"), *build, "--out", str(atlas_file)), "already exists"
    )
    assert_one_line_error(featurelens("atlas", str(tmp_path / "nothing"), *build), "does not exist")
    assert_one_line_error(
        featurelens("atlas", str(planted["root"] / "sae"), *build, "--tokens", "0"), "--tokens"
    )
    assert_one_line_error(featurelens("atlas", str(atlas_file)), "--export parquet")
