"""Layer maps on stores with planted relations (a rotated copy, an invertible mixing, an independent hook, an
attention-sink row), live on a tiny model against its random initialisation, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from featurelens.compare.cka import linear_cka
from featurelens.compare.maps import MapJob, run_maps
from featurelens.compare.output import cell_table, grid
from tests.cli.test_cli import assert_one_line_error, featurelens
from tests.stores import write_rows_store

SEQ, N_SEQ = 64, 40
SINK = 70  # a row whose layer-0 norm is 100x the others': left out of every map


def planted_stores(root: Path, model: str) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    n = SEQ * N_SEQ
    tokens = rng.integers(3, 60, size=n).astype(np.int32)
    positions = np.tile(np.arange(SEQ), N_SEQ).astype(np.int32)
    docs = np.repeat(np.arange(N_SEQ), SEQ).astype(np.int32)
    z = rng.normal(size=(n, 12))
    z[SINK] *= 100
    rotation, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    a = {
        "layers.0.resid_post": z,
        "layers.1.resid_post": 3 * z @ rotation + 5,
        "layers.2.resid_post": rng.normal(size=(n, 10)),
    }
    b = {
        "layers.0.resid_post": z
        @ (np.eye(12) + 2 * np.diag(rng.uniform(size=12)) @ rng.normal(size=(12, 12))),
        "layers.1.resid_post": rng.normal(size=(n, 8)),
    }
    f32 = {name: {h: x.astype(np.float32) for h, x in acts.items()} for name, acts in (("a", a), ("b", b))}
    return {
        "a": write_rows_store(root / "a", tokens, docs, positions, f32["a"], model, SEQ),
        "b": write_rows_store(root / "b", tokens, docs, positions, f32["b"], model, SEQ),
        "acts_a": f32["a"],
        "acts_b": f32["b"],
    }


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Any]:
    return planted_stores(tmp_path_factory.mktemp("maps"), str(tiny_model_dir))


@pytest.fixture(scope="module")
def mapped(stores: dict[str, Any]) -> dict[str, Any]:
    job = MapJob(
        acts=str(stores["a"]),
        acts_b=str(stores["b"]),
        measures=("cka", "cca"),
        tokens=10**9,
        null_rows=300,
        permutations=60,
    )
    result = run_maps(job)
    return {"result": result, "table": cell_table(result)}


def test_streamed_cka_knows_the_planted_answers(mapped: dict[str, Any], stores: dict[str, Any]) -> None:
    table = mapped["table"]
    cka = grid(table, "a-a", "cka", "value")
    significant = grid(table, "a-a", "cka", "significant")
    np.testing.assert_allclose(np.diagonal(cka), 1.0, atol=1e-6)
    np.testing.assert_allclose(cka, cka.T, atol=1e-12)
    assert cka[0, 1] == pytest.approx(1.0, abs=1e-6)  # a rotated, scaled, shifted copy
    assert abs(cka[0, 2]) < 0.01 and not significant[0, 2]  # independent
    assert significant[0, 1]
    kept = np.ones(SEQ * N_SEQ, dtype=bool)
    kept[SINK] = False  # the sink row is left out of both sides
    acts = stores["acts_a"]
    expected = linear_cka(
        acts["layers.0.resid_post"][kept].astype(np.float64), acts["layers.2.resid_post"][kept]
    )
    assert cka[0, 2] == pytest.approx(expected, abs=1e-6)
    assert mapped["result"].meta["rows"] == SEQ * N_SEQ - 1


def test_cca_sees_through_an_invertible_map_that_lowers_cka(mapped: dict[str, Any]) -> None:
    table = mapped["table"]
    cka, cca = grid(table, "a-b", "cka", "value"), grid(table, "a-b", "cca", "value")
    assert cca[0, 0] == pytest.approx(1.0, abs=1e-9)
    assert cka[0, 0] < 0.95
    assert grid(table, "a-b", "cka", "significant")[0, 0]
    assert not grid(table, "a-b", "cka", "significant")[2, 1]
    p_values = grid(table, "a-b", "cka", "p_value")
    assert p_values[0, 0] == pytest.approx(1 / 61)


def test_the_cli_writes_a_whole_folder_and_refuses_bad_input(stores: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "maps"
    run = featurelens(
        "compare", "--acts", str(stores["a"]), "--acts-b", str(stores["b"]), "--measure", "cka",
        "--measure", "shape:alpha=0.5", "--permutations", "20", "--null-rows", "200", "--out", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert {p.name for p in out.iterdir()} == {
        "results.json", "maps.parquet", "a-a_cka.png", "a-b_cka.png", "a-a_shape.png", "a-b_shape.png",
    }  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["measures"]["shape"] == {
        "kind": "distance",
        "metric": True,
        "description": results["measures"]["shape"]["description"],
        "options": {"alpha": 0.5},
        "value_rows": 200,
    }
    assert results["maps"][1]["hooks_b"] == ["layers.0.resid_post", "layers.1.resid_post"]
    assert pq.read_table(out / "maps.parquet").num_rows == 2 * (9 + 6)
    again = featurelens("compare", "--acts", str(stores["a"]), "--out", str(out))
    assert_one_line_error(again, "already exists; pass --overwrite")
    assert_one_line_error(
        featurelens(
            "compare", "--acts", str(stores["a"]), "--measure", "cka:sigma=2", "--out", str(tmp_path / "x")
        ),
        "measure 'cka' has no option 'sigma'",
    )
    assert_one_line_error(
        featurelens("compare", "--acts", str(stores["a"]), "--hooks", "mlp*", "--out", str(tmp_path / "y")),
        "no hook matches 'mlp*'",
    )
    twice = ("--acts", str(stores["a"]), "--measure", "shape:alpha=0", "--measure", "shape", "--out", "z")
    assert_one_line_error(featurelens("compare", *twice, cwd=tmp_path), "'shape' is given twice")
    assert not any((tmp_path / name).exists() for name in ("x", "y", "z"))


def test_stores_of_different_tokens_are_refused(
    stores: dict[str, Any], tmp_path: Path, tiny_model_dir: Path
) -> None:
    rng = np.random.default_rng(1)
    n = SEQ * N_SEQ
    other = write_rows_store(
        tmp_path / "other",
        rng.integers(3, 60, size=n).astype(np.int32),
        np.repeat(np.arange(N_SEQ), SEQ).astype(np.int32),
        np.tile(np.arange(SEQ), N_SEQ).astype(np.int32),
        {"layers.0.resid_post": rng.normal(size=(n, 4)).astype(np.float32)},
        str(tiny_model_dir),
        SEQ,
    )
    run = featurelens(
        "compare", "--acts", str(stores["a"]), "--acts-b", str(other), "--out", str(tmp_path / "o")
    )
    assert_one_line_error(run, "do not hold the same tokens")


def test_a_live_map_against_the_random_initialisation(tiny_model_dir: Path) -> None:
    job = MapJob(model=str(tiny_model_dir), tokens=2000, seq_len=64, null_rows=200, permutations=30, seed=1)
    result = run_maps(job)
    table = cell_table(result)
    within, between = grid(table, "a-a", "cka", "value"), grid(table, "a-b", "cka", "value")
    assert within.shape == between.shape == (3, 3)
    np.testing.assert_allclose(np.diagonal(within), 1.0, atol=1e-6)
    assert np.all(np.diagonal(between) < 0.99)  # other weights: not the same representation
    assert result.meta["maps"][1]["b"].endswith("(random init, seed 1)")
    assert result.meta["alignment"] == "one tokenizer: identical rows"


def test_two_files_are_compared_by_every_measure_with_its_null(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 6))
    rotation, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", 2 * x @ rotation + 1)
    out = tmp_path / "pair"
    run = featurelens(
        "compare", "--x", str(tmp_path / "x.npy"), "--y", str(tmp_path / "y.npy"), "--permutations", "49",
        "--out", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    results = {c["measure"]: c for c in json.loads((out / "results.json").read_text())["comparisons"]}
    assert {"cka", "cka-biased", "cca", "procrustes", "shape"} <= set(results)
    assert results["cka"]["value"] == pytest.approx(1.0, abs=1e-9)
    assert results["procrustes"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert all(c["p_value"] == pytest.approx(1 / 50) for c in results.values())
    np.save(tmp_path / "short.npy", x[:30])
    assert_one_line_error(
        featurelens("compare", "--x", str(tmp_path / "x.npy"), "--y", str(tmp_path / "short.npy"), "--out",
                    str(tmp_path / "bad")),
        "x has 40 rows, y has 30",
    )  # fmt: skip
    assert_one_line_error(
        featurelens("compare", "--x", str(tmp_path / "x.npy"), "--out", str(tmp_path / "bad")),
        "--x and --y go together",
    )
