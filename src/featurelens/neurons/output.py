"""Write and read a neuron report folder: Parquet tables, report.json, PNG plots and a standalone HTML page.

Layout::

    report.json         source, model, settings, rows, timing, and the layer x statistic summary
    layers.parquet      one row per hook (the summary)
    units.parquet       one row per unit of every hook: every statistic and flag
    massive.parquet     the largest massive activations: hook, unit, value, multiple of the median, row,
                        position, token
    positional.parquet  mean per position of every positional unit
    sparsity.png, kurtosis.png, massive.png, firing.png, report.html

The folder is written under a temporary name and renamed when whole.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from featurelens.errors import NeuronError
from featurelens.folders import check_output_folder, staged_folder
from featurelens.jsonio import finite
from featurelens.models.hook_names import point_of
from featurelens.neurons.report import NeuronReport

TABLES = ("layers", "units", "massive", "positional")
PLOTS = ("sparsity", "kurtosis", "massive", "firing")
NOTABLE = {
    "dead": ("dead", "fire_rate"),
    "always on": ("always_on", "fire_rate"),
    "massive": ("massive", "max_over_median"),
    "outlier": ("outlier", "max_over_median"),
    "positional": ("positional", "position_r2"),
    "token": ("token_specific", "token_lift"),
    "previous token": ("previous_token_specific", "previous_lift"),
    "bigram": ("bigram_specific", "bigram_lift"),
}


def save_report(report: NeuronReport, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``report`` into the folder ``out`` (see the module docstring); returns the folder."""
    out = check_out(out, overwrite)
    with staged_folder(out) as staging:
        for name in TABLES:
            pq.write_table(getattr(report, name), staging / f"{name}.parquet")
        payload = {"format": "featurelens.neurons", **report.meta, "layers": report.layers.to_pylist()}
        (staging / "report.json").write_text(json.dumps(finite(payload), indent=1))
        draw_plots(report, staging)
        (staging / "report.html").write_text(report_html(report, staging))
    return out


def check_out(out: str | Path, overwrite: bool) -> Path:
    """``out`` as a path, if a report may be written there (call it before a long pass, too)."""
    return check_output_folder(out, overwrite, "report.json", "neuron report", NeuronError)


def load_report(path: str | Path) -> NeuronReport:
    """A folder written by :func:`save_report`."""
    folder = Path(path)
    if folder.is_file() and folder.name == "report.json":
        folder = folder.parent
    try:
        meta = json.loads((folder / "report.json").read_text())
        tables = {name: pq.read_table(folder / f"{name}.parquet") for name in TABLES}
    except (OSError, ValueError) as error:
        raise NeuronError(f"{folder} is not a neuron report folder (report.json + Parquet tables)") from error
    if meta.get("format") != "featurelens.neurons":
        raise NeuronError(f"{folder}/report.json is not a featurelens neuron report")
    meta = {k: v for k, v in meta.items() if k not in ("format", "layers")}
    return NeuronReport(meta=meta, **tables)


def _by_point(layers: pa.Table) -> dict[str, dict[str, np.ndarray]]:
    """Summary columns grouped by hook point kind (mlp_neurons, resid_post, ...), ordered by layer."""
    rows = layers.to_pylist()
    grouped: dict[str, dict[str, np.ndarray]] = {}
    for point in dict.fromkeys(r["point"] for r in rows):
        mine = sorted((r for r in rows if r["point"] == point), key=lambda r: r["layer"])
        grouped[point] = {k: np.array([r[k] for r in mine]) for k in mine[0]}
    return grouped


def draw_plots(report: NeuronReport, folder: Path) -> None:
    """sparsity.png, kurtosis.png, massive.png and firing.png into ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = _by_point(report.layers)
    figure, axis = plt.subplots(figsize=(7, 4))
    for point, c in points.items():
        axis.plot(c["layer"], c["zero_fraction"], "o-", label=f"{point}: exactly 0")
        axis.plot(c["layer"], c["near_zero_fraction"], "s--", label=f"{point}: near 0")
        axis.plot(c["layer"], 1 - c["fire_rate"], ":", label=f"{point}: not firing (<= threshold)")
    axis.set(xlabel="layer", ylabel="fraction of entries", title="activation sparsity per layer", ylim=(0, 1))
    axis.legend(fontsize=7)
    _save(figure, folder / "sparsity.png")

    figure, axis = plt.subplots(figsize=(7, 4))
    for point, c in points.items():
        axis.semilogy(c["layer"], c["kurtosis"], "o-", label=f"{point}: all entries pooled")
        axis.semilogy(
            c["layer"], np.maximum(c["median_unit_kurtosis"], 1e-3), "s--", label=f"{point}: median unit"
        )
    axis.axhline(3, color="grey", lw=0.8, ls=":", label="normal distribution (3)")
    axis.set(xlabel="layer", ylabel="kurtosis", title="kurtosis per layer")
    axis.legend(fontsize=7)
    _save(figure, folder / "kurtosis.png")

    units = report.units
    point_of_unit = np.array([point_of(hook) for hook in units["hook"].to_pylist()])
    layer = units["layer"].to_numpy()
    unit = units["unit"].to_numpy()
    ratio = units["max_over_median"].to_numpy()
    figure, axes = plt.subplots(len(points), 1, figsize=(9, 2.6 * len(points)), squeeze=False)
    for axis, point in zip(axes[:, 0], points, strict=True):
        mine = point_of_unit == point
        layers = np.unique(layer[mine])
        grid = np.full((len(layers), int(unit[mine].max()) + 1), np.nan)
        grid[np.searchsorted(layers, layer[mine]), unit[mine]] = np.log10(np.maximum(ratio[mine], 1e-3))
        image = axis.imshow(
            grid,
            aspect="auto",
            interpolation="nearest",
            cmap="magma",
            origin="lower",
            extent=(-0.5, grid.shape[1] - 0.5, layers[0] - 0.5, layers[-1] + 0.5),
        )
        axis.set(xlabel="channel", ylabel="layer", title=f"{point}: log10(max |x| / median |x| of the layer)")
        figure.colorbar(image, ax=axis)
    _save(figure, folder / "massive.png")

    bins = np.concatenate([[0.0], np.logspace(-5, 0, 11)])
    figure, axes = plt.subplots(1, len(points), figsize=(5 * len(points), 3.6), squeeze=False)
    fire = units["fire_rate"].to_numpy()
    for axis, point in zip(axes[0], points, strict=True):
        mine = point_of_unit == point
        layers = np.unique(layer[mine])
        grid = np.stack([np.histogram(fire[mine & (layer == i)], bins=bins)[0] for i in layers])
        axis.imshow(grid, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest")
        axis.set_xticks(range(len(bins) - 1), ["0"] + [f"{b:.0e}" for b in bins[2:]], rotation=90, fontsize=6)
        axis.set_yticks(range(len(layers)), [str(i) for i in layers], fontsize=6)
        axis.set(
            xlabel="firing rate (upper bin edge)", ylabel="layer", title=f"{point}: units per firing rate"
        )
    _save(figure, folder / "firing.png")


def _save(figure: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def notable_units(units: pa.Table, limit: int = 20) -> dict[str, list[dict[str, Any]]]:
    """Per kind of notable unit, the ``limit`` most notable (by the kind's score), as records."""
    found: dict[str, list[dict[str, Any]]] = {}
    for kind, (flag, score) in NOTABLE.items():
        mask = units.column(flag).to_numpy(zero_copy_only=False)
        picked = units.filter(pa.array(mask))
        if picked.num_rows == 0:
            continue
        values = np.nan_to_num(picked.column(score).to_numpy(zero_copy_only=False), nan=0.0)
        order = np.argsort(-values if kind not in ("dead",) else values, kind="stable")[:limit]
        found[kind] = [finite(r) for r in picked.take(pa.array(order)).to_pylist()]
    return found


NOTABLE_COLUMNS = (
    "hook",
    "unit",
    "fire_rate",
    "kurtosis",
    "max_over_median",
    "position_r2",
    "token_text",
    "token_coverage",
    "token_lift",
    "previous_token_text",
    "previous_lift",
    "bigram_text",
)


def report_html(report: NeuronReport, folder: Path) -> str:
    """A standalone page: the layer x statistic table, the plots (embedded) and the notable units."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if not np.isfinite(value) else f"{value:.4g}"
        return html.escape(repr(value)[1:-1] if isinstance(value, str) else str(value))

    rows = report.layers.to_pylist()
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0]) if rows else ""
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    images = "".join(
        f'<img alt="{name}" src="data:image/png;base64,'
        f'{base64.b64encode((folder / f"{name}.png").read_bytes()).decode()}">'
        for name in PLOTS
    )
    sections = []
    for kind, records in notable_units(report.units).items():
        cols = [c for c in NOTABLE_COLUMNS if c in records[0]]
        table_rows = "".join(
            "<tr>" + "".join(f"<td>{cell(r[c])}</td>" for c in cols) + "</tr>" for r in records
        )
        sections.append(
            f"<h3>{html.escape(kind)} ({len(records)} shown)</h3><table><tr>"
            + "".join(f"<th>{c}</th>" for c in cols)
            + f"</tr>{table_rows}</table>"
        )
    source = html.escape(
        f"{report.meta.get('source')}: {report.meta.get('store') or report.meta.get('model')}"
    )
    return (
        "<!doctype html><meta charset='utf-8'><title>featurelens neuron report</title>"
        "<style>body{font:13px sans-serif;margin:1.5em}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:2px 5px;text-align:right}"
        "img{max-width:100%;display:block}</style>"
        f"<h1>Neuron report</h1><p>{source}; {report.meta.get('rows', 0):,} rows</p>"
        f"<h2>Layer x statistic</h2><table><tr>{head}</tr>{body}</table>{images}"
        f"<h2>Notable units</h2>{''.join(sections)}"
    )
