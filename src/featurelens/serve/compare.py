"""The compare view's data: a layer × layer result folder (from `featurelens compare`) as typed API models,
each map and measure as [hooks_a][hooks_b] grids of the value, its p-value, significance and null.

The folder's ``results.json`` is read through :class:`WrittenCompare` and its ``maps.parquet`` checked
against it (every cell's map, measure and hooks described there), so a folder that is not a comparison is
one :class:`~featurelens.errors.CompareError` line naming it. The heatmap PNGs are served by name only:
``{map}_{measure}.png`` for a map and measure of the folder, never a path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, ValidationError

from featurelens.compare.maps import CELL_COLUMNS
from featurelens.errors import CompareError
from featurelens.jsonio import finite


class WrittenMap(BaseModel):
    """One entry of ``maps`` in ``results.json``."""

    model_config = ConfigDict(extra="ignore")

    name: str
    title: str
    a: str
    b: str
    hooks_a: list[str]
    hooks_b: list[str]


class WrittenMeasure(BaseModel):
    model_config = ConfigDict(extra="ignore")

    kind: Literal["similarity", "distance"]
    metric: bool
    description: str = ""
    options: dict[str, Any] = {}


class WrittenCompare(BaseModel):
    """``results.json`` of a comparison folder (the fields the view reads)."""

    model_config = ConfigDict(extra="ignore")

    job: dict[str, Any] = {}
    maps: list[WrittenMap]
    measures: dict[str, WrittenMeasure]
    rows: int
    null_rows: int | None = None
    permutations: int
    alpha: float
    correction: str = ""
    alignment: str = ""
    seconds: dict[str, Any] = {}


class CompareMeasure(BaseModel):
    name: str
    kind: Literal["similarity", "distance"]  # similarity: higher = more alike; distance: lower
    metric: bool  # a distance that satisfies the triangle inequality
    description: str
    options: dict[str, Any]
    low: float | None  # the finite range of its values over every map (one colour scale per measure)
    high: float | None


class CompareGrid(BaseModel):
    """One map's cells for one measure: ``value[i][j]`` compares ``hooks_a[i]`` with ``hooks_b[j]``; None
    where the value is NaN, no test ran (``p_value``) or the cell is absent."""

    measure: str
    value: list[list[float | None]]
    p_value: list[list[float | None]]
    significant: list[list[bool]]  # after the folder's correction, at its alpha
    null_mean: list[list[float | None]]
    null_std: list[list[float | None]]
    value_rows: list[list[int | None]]  # rows the value was computed on
    png: str | None  # the URL of its heatmap PNG when the folder has one


class CompareMap(BaseModel):
    name: str
    title: str
    a: str
    b: str
    hooks_a: list[str]
    hooks_b: list[str]
    grids: list[CompareGrid]  # one per measure, in the order of ``measures``


class CompareView(BaseModel):
    folder: str
    job: dict[str, Any]
    rows: int
    null_rows: int | None
    permutations: int
    alpha: float
    correction: str
    alignment: str
    seconds: dict[str, Any]
    measures: list[CompareMeasure]
    maps: list[CompareMap]


def compare_folder(path: str | Path) -> Path:
    """The comparison folder ``path``, or the folder of ``path`` when it names its results.json or
    maps.parquet."""
    folder = Path(path)
    return folder.parent if folder.is_file() and folder.name in ("results.json", "maps.parquet") else folder


def read_compare(path: str | Path) -> tuple[WrittenCompare, pa.Table]:
    """``results.json`` and ``maps.parquet`` of the comparison folder ``path`` (or of that file itself)."""
    folder = compare_folder(path)
    try:
        written = json.loads((folder / "results.json").read_text())
        table = pq.read_table(folder / "maps.parquet")
    except (OSError, ValueError, pa.ArrowException) as error:
        raise CompareError(
            f"{folder} is not a comparison folder "
            "(results.json and maps.parquet written by `featurelens compare`)"
        ) from error
    if not isinstance(written, dict) or written.get("format", "featurelens.compare") != "featurelens.compare":
        raise CompareError(
            f"{folder}/results.json is not a featurelens comparison (format {written.get('format')!r})"
        )
    try:
        result = WrittenCompare.model_validate(written)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise CompareError(
            f"{folder}/results.json is not a readable comparison: {where}: {first['msg']}"
        ) from error
    missing = [column for column in CELL_COLUMNS if column not in table.column_names]
    if missing:
        raise CompareError(
            f"{folder}/maps.parquet has no column {', '.join(missing)}; columns: {', '.join(CELL_COLUMNS)}"
        )
    return result, table.select(list(CELL_COLUMNS))


def _column(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name)
    if pa.types.is_floating(column.type):
        return column.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls become NaN
    return column.to_numpy(zero_copy_only=False)


def check_cells(folder: str, written: WrittenCompare, table: pa.Table) -> None:
    """Every cell names a map and measure of ``results.json`` and the hooks at its row and column."""
    maps = {m.name: m for m in written.maps}
    names = table.column("map").to_pylist()
    measures = table.column("measure").to_pylist()
    rows, cols = _column(table, "row"), _column(table, "col")
    hooks_a, hooks_b = table.column("hook_a").to_pylist(), table.column("hook_b").to_pylist()
    for unknown, described in (
        (set(names) - set(maps), "map"),
        (set(measures) - set(written.measures), "measure"),
    ):
        if unknown:
            raise CompareError(
                f"{folder}/maps.parquet has {described} {sorted(unknown)[0]!r} "
                "that results.json does not describe"
            )
    for name, entry in maps.items():
        mine = np.array([n == name for n in names], dtype=bool)
        for i in np.flatnonzero(mine):
            row, col = int(rows[i]), int(cols[i])
            if not (0 <= row < len(entry.hooks_a) and 0 <= col < len(entry.hooks_b)):
                raise CompareError(
                    f"{folder}/maps.parquet has cell ({row}, {col}) outside map {name!r} "
                    f"({len(entry.hooks_a)} x {len(entry.hooks_b)} hooks)"
                )
            if (hooks_a[i], hooks_b[i]) != (entry.hooks_a[row], entry.hooks_b[col]):
                raise CompareError(
                    f"{folder}/maps.parquet cell ({row}, {col}) of map {name!r} names "
                    f"{hooks_a[i]} x {hooks_b[i]}, results.json {entry.hooks_a[row]} x {entry.hooks_b[col]}"
                )


def compare_view(folder: str | Path, png_url: str = "/api/compare/png/") -> CompareView:
    """The view of the comparison ``folder``: its grids, each measure's colour range, and the URL (under
    ``png_url``) of each heatmap PNG the folder holds."""
    written, table = read_compare(folder)
    root = compare_folder(folder)
    check_cells(str(root), written, table)
    names = np.asarray(table.column("map").to_pylist(), dtype=object)
    measures = np.asarray(table.column("measure").to_pylist(), dtype=object)
    rows, cols = _column(table, "row").astype(np.int64), _column(table, "col").astype(np.int64)
    floats = {name: _column(table, name) for name in ("value", "p_value", "null_mean", "null_std")}
    significant = _column(table, "significant").astype(bool)
    value_rows = table.column("value_rows").to_pylist()

    maps = []
    for entry in written.maps:
        grids = []
        shape = (len(entry.hooks_a), len(entry.hooks_b))
        for measure in written.measures:
            mine = np.flatnonzero((names == entry.name) & (measures == measure))
            at = (rows[mine], cols[mine])
            grid = {}
            for name, column in floats.items():
                cells = np.full(shape, np.nan)
                cells[at] = column[mine]
                grid[name] = finite(cells.tolist())
            flags = np.zeros(shape, dtype=bool)
            flags[at] = significant[mine]
            counts: list[list[int | None]] = [[None] * shape[1] for _ in range(shape[0])]
            for i in mine:
                counts[rows[i]][cols[i]] = value_rows[i]
            png = f"{entry.name}_{measure}.png"
            grids.append(
                CompareGrid(
                    measure=measure,
                    significant=flags.tolist(),
                    value_rows=counts,
                    png=png_url + png if (root / png).is_file() else None,
                    **grid,
                )
            )
        maps.append(CompareMap(**entry.model_dump(), grids=grids))

    described = []
    for measure, info in written.measures.items():
        values = floats["value"][(measures == measure) & np.isin(names, [m.name for m in written.maps])]
        values = values[np.isfinite(values)]
        low, high = (float(values.min()), float(values.max())) if values.size else (None, None)
        described.append(CompareMeasure(name=measure, **info.model_dump(), low=low, high=high))
    return CompareView(
        folder=str(folder),
        job=finite(written.job),
        rows=written.rows,
        null_rows=written.null_rows,
        permutations=written.permutations,
        alpha=written.alpha,
        correction=written.correction,
        alignment=written.alignment,
        seconds=finite(written.seconds),
        measures=described,
        maps=maps,
    )


def compare_png(view: CompareView, name: str) -> Path | None:
    """The heatmap PNG ``name`` of the view's folder, or None: only ``{map}_{measure}.png`` of a map and
    measure of the view that the folder held when the view was made, so no name reaches another file."""
    known = {grid.png.rsplit("/", 1)[-1] for m in view.maps for grid in m.grids if grid.png}
    return compare_folder(view.folder) / name if name in known else None
