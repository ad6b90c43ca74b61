"""The compare view: a planted comparison folder (results.json and maps.parquet written here, the cells'
numbers known) served beside the planted atlas: the API returns every cell where results.json puts its
hooks, NaN and absent cells as null, each measure's colour range; the heatmap PNGs are served by name
only (no path reaches another file); 404 without --compare; one line for a folder that is not a
comparison."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from featurelens.compare.plots import draw_map
from featurelens.errors import CompareError
from featurelens.serve import create_app
from featurelens.serve.compare import compare_view
from tests.cli.test_cli import assert_one_line_error

HOOKS_A = [f"layers.{i}.resid_post" for i in range(4)]
HOOKS_B = [f"layers.{i}.resid_post" for i in range(3)]
MAPS = [
    {"name": "a-a", "title": "tiny × tiny", "a": "tiny", "b": "tiny", "hooks_a": HOOKS_A, "hooks_b": HOOKS_A},
    {"name": "a-b", "title": "tiny × random init (null model)", "a": "tiny", "b": "random"}
    | {"hooks_a": HOOKS_A, "hooks_b": HOOKS_B},
]
MEASURES = {
    "cka": {
        "kind": "similarity",
        "metric": False,
        "description": "debiased linear CKA",
        "options": {"debiased": True},
    },
    "procrustes": {"kind": "distance", "metric": True, "description": "angular Procrustes", "options": {}},
}
NOT_SIGNIFICANT = ("a-b", "cka", 2, 1)  # value 0.125, p 0.375: the one cell whose test did not reject
NAN_CELL = ("a-b", "procrustes", 0, 0)  # value NaN, p-value null
ABSENT_CELL = ("a-a", "procrustes", 3, 3)  # no row in maps.parquet
NOT_SIGNIFICANT_P = 0.375


def planted_value(map_name: str, measure: str, i: int, j: int) -> float:
    if (map_name, measure, i, j) == NOT_SIGNIFICANT:
        return 0.125
    base = 1.0 - abs(i - j) / 4 if map_name == "a-a" else 0.5 - 0.1 * i + 0.01 * j
    return base if measure == "cka" else 1.0 - base


def planted_cells() -> list[dict[str, Any]]:
    cells = []
    for entry in MAPS:
        for measure in MEASURES:
            for i, hook_a in enumerate(entry["hooks_a"]):
                for j, hook_b in enumerate(entry["hooks_b"]):
                    where = (entry["name"], measure, i, j)
                    if where == ABSENT_CELL:
                        continue
                    value = np.nan if where == NAN_CELL else planted_value(*where)
                    p = (
                        None
                        if where == NAN_CELL
                        else (NOT_SIGNIFICANT_P if where == NOT_SIGNIFICANT else 0.01)
                    )
                    cells.append(
                        {
                            "map": entry["name"],
                            "measure": measure,
                            "hook_a": hook_a,
                            "hook_b": hook_b,
                            "row": i,
                            "col": j,
                            "value": value,
                            "p_value": p,
                            "significant": p is not None and p < 0.05,
                            "null_mean": 0.001 * (i + 1),
                            "null_std": 0.002 * (j + 1),
                            "value_rows": 20_000 if measure == "cka" else 512,
                        }
                    )
    return cells


def plant_compare(out: Path, cells: list[dict[str, Any]] | None = None, **changes: Any) -> Path:
    """A comparison folder as `featurelens compare` writes it, and the heatmap PNG of a-a × cka only."""
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "job": {"model": "tiny", "hooks": "layers.*.resid_post", "seed": 0},
        "maps": MAPS,
        "measures": MEASURES,
        "rows": 20_000,
        "null_rows": 512,
        "permutations": 100,
        "alpha": 0.05,
        "correction": "Benjamini-Hochberg within each map and measure",
        "alignment": "same tokenizer: identical rows",
        "seconds": {"values": 1.5, "nulls": float("nan")},
    } | changes
    (out / "results.json").write_text(json.dumps(results, allow_nan=True))
    cells = planted_cells() if cells is None else cells
    types = {"row": pa.int32(), "col": pa.int32(), "value_rows": pa.int64(), "significant": pa.bool_()}
    columns = {
        name: pa.array(
            [c[name] for c in cells], types.get(name, pa.float64() if name in FLOATS else pa.string())
        )
        for name in (cells[0] if cells else COLUMN_NAMES)
    }
    pq.write_table(pa.table(columns), out / "maps.parquet")
    values = np.array([[planted_value("a-a", "cka", i, j) for j in range(4)] for i in range(4)])
    draw_map(
        values,
        np.ones((4, 4), bool),
        HOOKS_A,
        HOOKS_A,
        title="cka",
        kind="similarity",
        path=out / "a-a_cka.png",
    )
    return out


FLOATS = {"value", "p_value", "null_mean", "null_std"}
COLUMN_NAMES = ["map", "measure", "hook_a", "hook_b", "row", "col", "value", "p_value", "significant"]
COLUMN_NAMES += ["null_mean", "null_std", "value_rows"]


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return plant_compare(tmp_path_factory.mktemp("compare") / "maps")


@pytest.fixture(scope="module")
def client(atlas_path: Path, compare_dir: Path) -> TestClient:
    return TestClient(create_app(atlas_path, compare=compare_dir))


def test_the_api_returns_every_planted_cell_where_results_json_puts_its_hooks(
    client: TestClient, compare_dir: Path
) -> None:
    assert client.get("/api/meta").json()["compare"] is True
    served = client.get("/api/compare").json()
    assert served["folder"] == str(compare_dir)
    assert (served["rows"], served["null_rows"], served["permutations"], served["alpha"]) == (
        20_000,
        512,
        100,
        0.05,
    )
    assert served["alignment"] == "same tokenizer: identical rows" and served["correction"].startswith(
        "Benjamini"
    )
    assert served["seconds"] == {"values": 1.5, "nulls": None} and served["job"]["seed"] == 0
    cells = planted_cells()
    for measure, (name, info) in zip(served["measures"], MEASURES.items(), strict=True):
        assert {k: measure[k] for k in ("name", *info)} == {"name": name, **info}
        finite = [c["value"] for c in cells if c["measure"] == name and np.isfinite(c["value"])]
        assert (measure["low"], measure["high"]) == (min(finite), max(finite))
    assert [m["name"] for m in served["maps"]] == ["a-a", "a-b"]
    for entry, planted in zip(served["maps"], MAPS, strict=True):
        assert {k: entry[k] for k in planted} == planted
        assert [g["measure"] for g in entry["grids"]] == list(MEASURES)
        for grid in entry["grids"]:
            mine = {
                (c["row"], c["col"]): c
                for c in cells
                if (c["map"], c["measure"]) == (entry["name"], grid["measure"])
            }
            for i, hook_a in enumerate(planted["hooks_a"]):
                for j, hook_b in enumerate(planted["hooks_b"]):
                    cell = mine.get((i, j))
                    where = (entry["name"], grid["measure"], i, j)
                    if cell is None:
                        assert where == ABSENT_CELL
                        assert grid["value"][i][j] is None and grid["significant"][i][j] is False
                        assert grid["value_rows"][i][j] is None
                        continue
                    assert (cell["hook_a"], cell["hook_b"]) == (hook_a, hook_b)
                    value = None if np.isnan(cell["value"]) else cell["value"]
                    assert grid["value"][i][j] == value
                    assert grid["p_value"][i][j] == cell["p_value"]
                    assert grid["significant"][i][j] is cell["significant"]
                    assert (grid["null_mean"][i][j], grid["null_std"][i][j]) == (
                        cell["null_mean"],
                        cell["null_std"],
                    )
                    assert grid["value_rows"][i][j] == cell["value_rows"]
    a_b = served["maps"][1]["grids"][0]
    assert (
        a_b["value"][2][1] == 0.125
        and a_b["p_value"][2][1] == NOT_SIGNIFICANT_P
        and not a_b["significant"][2][1]
    )
    assert (
        served["maps"][1]["grids"][1]["value"][0][0] is None
        and served["maps"][1]["grids"][1]["p_value"][0][0] is None
    )
    pngs = [(m["name"], g["measure"], g["png"]) for m in served["maps"] for g in m["grids"]]
    assert [p for p in pngs if p[2] is not None] == [("a-a", "cka", "/api/compare/png/a-a_cka.png")]


def test_heatmap_pngs_are_served_by_name_only(client: TestClient, compare_dir: Path) -> None:
    png = client.get("/api/compare/png/a-a_cka.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content == (compare_dir / "a-a_cka.png").read_bytes()
    (compare_dir.parent / "secret.png").write_bytes(b"not yours")
    for name in [
        "a-b_cka.png",  # a map and measure of the folder, but no PNG was written
        "results.json",
        "maps.parquet",
        "..%2Fsecret.png",
        "%2E%2E%2Fsecret.png",
        "a-a_cka.png%2F..%2F..%2Fsecret.png",
        "%2Fetc%2Fpasswd",
    ]:
        reply = client.get(f"/api/compare/png/{name}")
        assert reply.status_code == 404, name
        assert (
            b"not yours" not in reply.content
            and b"PAR1" not in reply.content
            and b"root:" not in reply.content
        )


def test_the_compare_view_is_404_without_a_folder(atlas_path: Path) -> None:
    plain = TestClient(create_app(atlas_path))
    assert plain.get("/api/meta").json()["compare"] is False
    for path in ("/api/compare", "/api/compare/png/a-a_cka.png"):
        missing = plain.get(path)
        detail = missing.json()["detail"]
        assert missing.status_code == 404 and "--compare" in detail and "\n" not in detail


def test_a_folder_that_is_not_a_comparison_is_one_line(atlas_path: Path, tmp_path: Path) -> None:
    with pytest.raises(CompareError, match="is not a comparison folder"):
        compare_view(tmp_path)
    folder = plant_compare(tmp_path / "good")
    assert compare_view(folder / "results.json").maps[0].name == "a-a"  # the file names its folder
    broken = [
        ({"format": "featurelens.probe"}, None, "not a featurelens comparison"),
        ({"measures": {"cka": {"kind": "closeness", "metric": False}}}, None, "measures.cka.kind"),
        ({"permutations": "many"}, None, "permutations"),
        ({}, [c | {"row": 4} for c in planted_cells()], "cell (4, 0) outside map 'a-a' (4 x 4 hooks)"),
        ({}, [c | {"hook_b": "embed"} for c in planted_cells()], "names layers.0.resid_post x embed"),
        (
            {},
            [c | {"measure": "rsa"} for c in planted_cells()],
            "measure 'rsa' that results.json does not describe",
        ),
        ({}, [c | {"map": "b-b"} for c in planted_cells()], "map 'b-b' that results.json does not describe"),
    ]
    for number, (changes, cells, message) in enumerate(broken):
        with pytest.raises(CompareError, match=message.replace("(", r"\(").replace(")", r"\)")):
            compare_view(plant_compare(tmp_path / f"broken-{number}", cells, **changes))
    without = plant_compare(tmp_path / "no-value")
    pq.write_table(pq.read_table(without / "maps.parquet").drop(["value"]), without / "maps.parquet")
    with pytest.raises(CompareError, match="has no column value"):
        compare_view(without)

    command = [
        sys.executable,
        "-m",
        "featurelens.cli.main",
        "serve",
        str(atlas_path),
        "--compare",
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert_one_line_error(result, "is not a comparison folder")
