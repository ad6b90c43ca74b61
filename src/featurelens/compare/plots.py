"""Pictures of layer × layer maps: one heatmap PNG per map and measure.

The colour scale is sequential with "alike" at the same (bright) end for every measure: viridis for
similarities (higher = more alike), reversed for distances (lower = more alike). Cells without a value are
grey; cells whose permutation test did not reject (p > alpha after the Benjamini–Hochberg correction) carry
a small grey dot. Layer 0 is at the bottom left, so a map of a set against itself has its diagonal rising.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from featurelens.errors import CompareError
from featurelens.models.hook_names import layer_of, point_of

DPI = 110
CELL_INCHES = 0.26
MAX_TICKS = 32  # beyond this many hooks per side, every k-th tick is labelled
NAN_COLOUR = "#c8c8c8"
MARK_COLOUR = "#7f7f7f"
NOT_SIGNIFICANT = "not significant (p > {alpha}, BH-corrected)"
KINDS = ("similarity", "distance")


def figure_inches(rows: int, cols: int) -> tuple[float, float]:
    """Width and height in inches of the figure of a ``rows`` x ``cols`` map (room for labels, colourbar
    and the legend note around the cells, clamped so that huge maps stay readable files)."""
    width = min(14.0, max(5.5, 2.9 + cols * CELL_INCHES))
    height = min(12.0, max(4.5, 2.3 + rows * CELL_INCHES))
    return width, height


def short_labels(hooks: Sequence[str]) -> tuple[list[str], str]:
    """Tick labels and an axis title for ``hooks``: ``layers.N.point`` hooks of one point kind become
    ``N`` under the title ``layer (point)``; otherwise the names stay whole under ``hook``."""
    points = {point_of(hook) for hook in hooks if layer_of(hook) >= 0}
    if len(points) != 1:
        return list(hooks), "hook"
    (point,) = points
    return [str(layer_of(hook)) if layer_of(hook) >= 0 else hook for hook in hooks], f"layer ({point})"


def colour_limits(values: np.ndarray) -> tuple[float, float]:
    """The finite range of ``values`` (widened when it is a single value; 0..1 when there is none)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    if low == high:
        return low - 0.5, high + 0.5
    return low, high


def _ticks(labels: list[str]) -> tuple[list[int], list[str]]:
    step = max(1, math.ceil(len(labels) / MAX_TICKS))
    positions = list(range(0, len(labels), step))
    return positions, [labels[i] for i in positions]


def draw_map(
    values: np.ndarray,
    significant: np.ndarray,
    labels_a: list[str],
    labels_b: list[str],
    *,
    title: str,
    kind: str,
    path: Path,
    measure: str | None = None,
    tested: np.ndarray | None = None,
    alpha: float | None = None,
    limits: tuple[float, float] | None = None,
) -> None:
    """Draw ``values`` [HA, HB] (rows: hooks ``labels_a``, columns: ``labels_b``) as a heatmap PNG at
    ``path``, written under a temporary name and renamed into place.

    ``significant`` [HA, HB] bool: cells that are not are marked with a grey dot, except NaN cells (grey)
    and cells outside ``tested`` [HA, HB] bool when it is given (no permutation test ran there, e.g. a run
    with 0 permutations: pass ``np.isfinite(p_values)``). ``kind`` is "similarity" or "distance";
    ``measure`` names the colourbar, ``alpha`` goes into the legend note, ``limits`` fixes the colour
    range (default: the finite range of ``values``, so maps drawn to compare should share one).
    """
    values = np.asarray(values, dtype=np.float64)
    significant = np.asarray(significant, dtype=bool)
    if values.ndim != 2 or values.shape != (len(labels_a), len(labels_b)):
        raise CompareError(
            f"map values of shape {values.shape} do not match {len(labels_a)} x {len(labels_b)} hook labels"
        )
    if significant.shape != values.shape or (tested is not None and np.shape(tested) != values.shape):
        raise CompareError(
            f"significance of shape {significant.shape} does not match the values' {values.shape}"
        )
    if kind not in KINDS:
        raise CompareError(f"kind {kind!r} is not one of {', '.join(KINDS)}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows, cols = values.shape
    width, height = figure_inches(rows, cols)
    figure, axis = plt.subplots(figsize=(width, height), dpi=DPI, layout="constrained")
    colours = matplotlib.colormaps["viridis" if kind == "similarity" else "viridis_r"].with_extremes(
        bad=NAN_COLOUR
    )
    low, high = limits if limits is not None else colour_limits(values)
    image = axis.imshow(
        np.ma.masked_invalid(values),
        cmap=colours,
        vmin=low,
        vmax=high,
        origin="lower",
        interpolation="nearest",
        aspect="auto",
    )
    ticks_a, title_a = short_labels(labels_a)
    ticks_b, title_b = short_labels(labels_b)
    small = 7 if max(rows, cols) > 16 else 8
    axis.set_yticks(*_ticks(ticks_a), fontsize=small)
    axis.set_xticks(*_ticks(ticks_b), fontsize=small, rotation=90 if title_b == "hook" else 0)
    axis.set(ylabel=title_a, xlabel=title_b)
    axis.set_title(textwrap.fill(title, int(width * 72 / 6)), fontsize=10)  # ~6 points a character at 10

    alike = "higher" if kind == "similarity" else "lower"
    label = f"{kind}: {alike} = more alike"
    bar = figure.colorbar(image, ax=axis)
    bar.set_label(f"{measure} ({label})" if measure else label, fontsize=8)

    marked = np.isfinite(values) & ~significant
    if tested is not None:
        marked &= np.asarray(tested, dtype=bool)
    if tested is None or np.asarray(tested).any():
        cell_points = 72 * min((width - 2.9) / max(cols, 1), (height - 2.3) / max(rows, 1))
        dot = min(7.0, max(2.0, 0.3 * cell_points))  # diameter in points: visible, never hiding the cell
        style = {"marker": "o", "color": MARK_COLOUR, "markeredgecolor": "white", "markeredgewidth": 0.5}
        i, j = np.nonzero(marked)
        axis.plot(j, i, linestyle="none", markersize=dot, **style)  # type: ignore[arg-type]
        note = NOT_SIGNIFICANT.format(alpha=alpha if alpha is not None else "alpha")
        key = Line2D([], [], linestyle="none", markersize=6, **style)  # type: ignore[arg-type]
        figure.legend(handles=[key], labels=[note], loc="outside lower center", fontsize=8, frameon=False)
    axis.set_xlim(-0.5, cols - 0.5)
    axis.set_ylim(-0.5, rows - 0.5)

    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial.png")
    try:
        figure.savefig(temporary, dpi=DPI)
    finally:
        plt.close(figure)
    os.replace(temporary, path)
