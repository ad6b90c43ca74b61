"""The result folder of `featurelens compare` (written under a temporary name, renamed when whole)::

results.json          the job, the maps (hooks of each side), each measure's kind/metric/description,
                      rows, null rows, permutations, alpha, correction, alignment and timings
maps.parquet          one row per cell: map, measure, hook_a, hook_b, row, col, value, p_value,
                      significant, null_mean, null_std, value_rows
{map}_{measure}.png   a heatmap per map and measure, cells that are not significant marked
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from featurelens.compare.maps import MapJob, MapResult
from featurelens.compare.plots import colour_limits, draw_map
from featurelens.errors import CompareError
from featurelens.folders import check_output_folder, staged_folder
from featurelens.jsonio import finite

MARKER = "results.json"  # the file every comparison folder has (maps and --x/--y alike)


def check_compare_out(job: MapJob) -> Path:
    """The output folder of ``job``, checked before any work (exists without --overwrite: one line)."""
    return check_output_folder(job.out, job.overwrite, MARKER, "comparison folder", CompareError)


def cell_table(result: MapResult) -> pa.Table:
    """The cells as an Arrow table (the columns of maps.parquet)."""
    c = result.cells
    return pa.table(
        {
            "map": pa.array(c["map"], pa.string()),
            "measure": pa.array(c["measure"], pa.string()),
            "hook_a": pa.array(c["hook_a"], pa.string()),
            "hook_b": pa.array(c["hook_b"], pa.string()),
            "row": pa.array(c["row"], pa.int32()),
            "col": pa.array(c["col"], pa.int32()),
            "value": pa.array(c["value"], pa.float64()),
            "p_value": pa.array(c["p_value"], pa.float64()),
            "significant": pa.array(c["significant"], pa.bool_()),
            "null_mean": pa.array(c["null_mean"], pa.float64()),
            "null_std": pa.array(c["null_std"], pa.float64()),
            "value_rows": pa.array(c["value_rows"], pa.int64()),
        }
    )


def grid(table: pa.Table, map_name: str, measure: str, column: str) -> np.ndarray:
    """One map's ``column`` as a [rows, cols] array."""
    mask = np.array(
        [
            m == map_name and name == measure
            for m, name in zip(table["map"].to_pylist(), table["measure"].to_pylist(), strict=True)
        ]
    )
    rows = np.asarray(table["row"])[mask]
    cols = np.asarray(table["col"])[mask]
    values = np.asarray(table[column].to_numpy(zero_copy_only=False))[mask]
    out = np.full(
        (rows.max() + 1, cols.max() + 1), np.nan if values.dtype.kind == "f" else False, dtype=values.dtype
    )
    out[rows, cols] = values
    return out


def save_maps(result: MapResult, out: Path) -> Path:
    """Write ``result`` to the folder ``out`` (replacing it); returns ``out``."""
    table = cell_table(result)
    meta = dict(result.meta)
    job: MapJob = meta.pop("job")
    with staged_folder(out) as staging:
        pq.write_table(table, staging / "maps.parquet")
        for name, info in meta["measures"].items():
            grids = {entry["name"]: grid(table, entry["name"], name, "value") for entry in meta["maps"]}
            limits = colour_limits(np.concatenate([values.ravel() for values in grids.values()]))
            for entry in meta["maps"]:
                draw_map(
                    grids[entry["name"]],
                    grid(table, entry["name"], name, "significant"),
                    entry["hooks_a"],
                    entry["hooks_b"],
                    title=f"{name}: {entry['title']}",
                    kind=info["kind"],
                    path=staging / f"{entry['name']}_{name}.png",
                    measure=name,
                    tested=np.isfinite(grid(table, entry["name"], name, "p_value")),
                    alpha=job.alpha,
                    limits=limits,  # one colour scale for every map of a measure
                )
        document = {"job": asdict(job), **meta}
        (staging / MARKER).write_text(json.dumps(finite(document), indent=2, default=str))
    return out
