"""The map heatmap PNG: its pixel size, where a cell lands (found from a planted NaN cell's grey block), the
dot on exactly the cells that are not significant (never on NaN or untested cells), the colour scale
reversed for distances, short layer labels, one-line errors, and the write under a temporary name."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from featurelens.compare.plots import DPI, draw_map, figure_inches, short_labels
from featurelens.errors import CompareError

HOOKS = [f"layers.{i}.resid_post" for i in range(60)]
GREY_NAN = (200, 200, 200)  # #c8c8c8
GREY_DOT = (127, 127, 127)  # #7f7f7f
VIRIDIS_LOW, VIRIDIS_HIGH = (68, 1, 84), (253, 231, 37)


def ramp(rows: int = 6, cols: int = 6) -> np.ndarray:
    return np.arange(rows * cols, dtype=np.float64).reshape(rows, cols) / (rows * cols - 1)


def draw(
    tmp_path: Path, name: str, values: np.ndarray, significant: np.ndarray, **options: object
) -> np.ndarray:
    path = tmp_path / f"{name}.png"
    rows, cols = values.shape
    settings: dict[str, object] = {"title": "cka: a × a", "kind": "similarity", "measure": "cka"}
    settings.update(options)
    draw_map(values, significant, HOOKS[:rows], HOOKS[:cols], path=path, **settings)  # type: ignore[arg-type]
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def cell_grid(tmp_path: Path, **options: object) -> tuple[float, float, float, float]:
    """Pixel centre of cell (0, 0) and the cell's width and height, from a map whose cells (0, 0) and
    (5, 5) alone are NaN (drawn grey): layer 0 at the bottom left, the last at the top right. The layout
    follows the colourbar's tick labels, so the maps it locates must share ``options``' colour limits."""
    values = ramp()
    values[0, 0] = values[5, 5] = np.nan
    image = draw(tmp_path, "grid", values, np.ones((6, 6), bool), **options)
    grey = (image == GREY_NAN).all(axis=2)
    xs, ys = np.nonzero(grey.sum(0) > 10)[0], np.nonzero(grey.sum(1) > 10)[0]  # blocks, not stray pixels
    assert len(xs) > 0 and len(ys) > 0, "no grey NaN cell drawn"
    left, right = xs.min(), xs.max()  # the two grey blocks span the whole map, corner to corner
    top, bottom = ys.min(), ys.max()
    width, height = (right - left + 1) / 6, (bottom - top + 1) / 6
    return left + width / 2, bottom - height / 2, width, height


def pixel(image: np.ndarray, grid: tuple[float, float, float, float], row: int, col: int) -> tuple[int, ...]:
    x0, y0, width, height = grid
    return tuple(image[round(y0 - row * height), round(x0 + col * width)])


def test_the_png_has_the_size_of_its_figure(tmp_path: Path) -> None:
    for rows, cols in [(6, 6), (3, 5), (60, 60)]:
        image = draw(tmp_path, f"size-{rows}-{cols}", ramp(rows, cols), np.ones((rows, cols), bool))
        width, height = figure_inches(rows, cols)
        assert image.shape[:2] == (round(height * DPI), round(width * DPI))
    assert figure_inches(60, 60) == (14.0, 12.0)  # clamped
    assert figure_inches(6, 6) != figure_inches(12, 6)  # more rows, a taller figure


def test_only_finite_cells_that_are_not_significant_get_the_grey_dot(tmp_path: Path) -> None:
    grid = cell_grid(tmp_path)
    values = ramp()
    values[0, 0] = values[5, 5] = np.nan
    everything = np.ones((6, 6), bool)
    plain = draw(tmp_path, "plain", values, everything)
    nan_unmarked = everything.copy()
    nan_unmarked[0, 0] = False  # a NaN cell: nothing to mark
    assert np.array_equal(draw(tmp_path, "nan", values, nan_unmarked), plain)

    one = everything.copy()
    one[2, 3] = False
    marked = draw(tmp_path, "marked", values, one)
    changed = np.nonzero((marked != plain).any(axis=2))
    x0, y0, width, height = grid
    centre = (y0 - 2 * height, x0 + 3 * width)
    assert len(changed[0]) > 0
    assert (
        np.abs(changed[0] - centre[0]).max() < height / 2 and np.abs(changed[1] - centre[1]).max() < width / 2
    )
    assert pixel(marked, grid, 2, 3) == GREY_DOT
    assert pixel(plain, grid, 2, 3) != GREY_DOT
    assert pixel(marked, grid, 0, 0) == pixel(plain, grid, 0, 0) == GREY_NAN


def test_untested_cells_are_not_marked_and_have_no_legend(tmp_path: Path) -> None:
    values = ramp()
    untested = np.zeros((6, 6), bool)
    unmarked = draw(tmp_path, "untested-all", values, np.ones((6, 6), bool), tested=untested)
    assert np.array_equal(
        draw(tmp_path, "untested-none", values, np.zeros((6, 6), bool), tested=untested), unmarked
    )
    with_note = draw(tmp_path, "tested", values, np.ones((6, 6), bool))
    assert not np.array_equal(with_note, unmarked)  # the legend note is drawn once any cell was tested
    grid = cell_grid(tmp_path)
    tested = np.ones((6, 6), bool)
    tested[4, 1] = False
    partly = draw(tmp_path, "partly", values, np.zeros((6, 6), bool), tested=tested)
    assert pixel(partly, grid, 4, 1) != GREY_DOT and pixel(partly, grid, 4, 2) == GREY_DOT


def test_alike_has_the_same_colour_for_similarities_and_distances(tmp_path: Path) -> None:
    grid = cell_grid(tmp_path, limits=(0.0, 1.0))
    values = ramp()  # cell (0, 0) is the lowest, (5, 5) the highest
    everything = np.ones((6, 6), bool)
    similarity = draw(tmp_path, "similarity", values, everything, limits=(0.0, 1.0))
    distance = draw(tmp_path, "distance", values, everything, kind="distance", limits=(0.0, 1.0))

    def near(got: tuple[int, ...], want: tuple[int, int, int]) -> bool:
        return max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 2

    assert near(pixel(similarity, grid, 0, 0), VIRIDIS_LOW) and near(
        pixel(similarity, grid, 5, 5), VIRIDIS_HIGH
    )
    assert near(pixel(distance, grid, 0, 0), VIRIDIS_HIGH) and near(pixel(distance, grid, 5, 5), VIRIDIS_LOW)
    grid = cell_grid(tmp_path, limits=(0.0, 10.0))
    fixed = draw(tmp_path, "fixed", values, everything, limits=(0.0, 10.0))  # every value near the low end
    tenth = tuple(round(255 * c) for c in matplotlib.colormaps["viridis"](0.1)[:3])  # value 1 of 0..10
    assert near(pixel(fixed, grid, 5, 5), tenth) and not near(pixel(fixed, grid, 5, 5), VIRIDIS_HIGH)


def test_layer_hooks_of_one_kind_are_labelled_by_layer() -> None:
    assert short_labels(HOOKS[:3]) == (["0", "1", "2"], "layer (resid_post)")
    assert short_labels(["embed", "layers.0.resid_post"]) == (["embed", "0"], "layer (resid_post)")
    mixed = ["layers.0.resid_post", "layers.0.mlp_out"]
    assert short_labels(mixed) == (mixed, "hook")


def test_bad_shapes_and_kinds_are_one_line_errors_and_nothing_is_left_behind(tmp_path: Path) -> None:
    values = ramp()
    ok = np.ones((6, 6), bool)
    path = tmp_path / "map.png"
    with pytest.raises(CompareError, match="do not match 6 x 5"):
        draw_map(values, ok, HOOKS[:6], HOOKS[:5], title="t", kind="similarity", path=path)
    with pytest.raises(CompareError, match="significance of shape"):
        draw_map(values, ok[:5], HOOKS[:6], HOOKS[:6], title="t", kind="similarity", path=path)
    with pytest.raises(CompareError, match="'metric' is not one of similarity, distance"):
        draw_map(values, ok, HOOKS[:6], HOOKS[:6], title="t", kind="metric", path=path)
    assert list(tmp_path.iterdir()) == []
    path.write_text("an older map")
    draw_map(values, ok, HOOKS[:6], HOOKS[:6], title="t", kind="similarity", path=path)
    assert [p.name for p in tmp_path.iterdir()] == ["map.png"]  # replaced, no temporary file left
    assert Image.open(path).format == "PNG"
