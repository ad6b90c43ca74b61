"""The neuron view's data: a neuron report (from `featurelens neurons`) as typed API models, each unit
linked to its page in the served atlas when the atlas maps that unit (a neuron atlas of the same hook).

The report's units table has a row for every channel of every hook (tens of thousands), so the view sends
summaries of it: the layer x statistic rows, the notable units of each kind, the largest massive
activations, and per hook point kind a layer x channel map of max |x| / median |x| over only the channels
that are among the largest of some layer.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from pydantic import BaseModel

from featurelens.jsonio import finite
from featurelens.neurons import NeuronReport, notable_units
from featurelens.serve.pages import atlas_page

NOTABLE_LIMIT = 20
MASSIVE_LIMIT = 50
MAP_CHANNELS_PER_HOOK = 8  # each layer's largest channels by max |x| / median |x| ...
MAP_CHANNELS = 32  # ... of which at most this many (the largest anywhere) become the map's columns
MASSIVE_ENTRIES = re.compile(r"^massive_(.+)_entries$")


class NeuronMeta(BaseModel):
    source: str  # live, store (or whatever made the rows)
    model: str
    rows: int
    hooks: list[str]
    settings: dict[str, Any]


class LayerSummary(BaseModel):
    """One hook's row of the layer x statistic table (fractions are of all its entries)."""

    hook: str
    layer: int
    point: str  # hook point kind: mlp_neurons, resid_post, ...
    width: int
    rows: int
    median_abs: float | None
    dead: int
    always_on: int
    fire_rate: float | None
    zero_fraction: float | None
    near_zero_fraction: float | None
    kurtosis: float | None  # of all entries pooled
    median_unit_kurtosis: float | None
    max_over_median: float | None
    outlier_units: int
    massive_entries: dict[str, int]  # per multiple of the median ("100x"): entries at least that large
    massive_units: int
    positional_units: int
    token_units: int
    previous_token_units: int
    bigram_units: int
    position_r2_chance: float | None


class NeuronUnit(BaseModel):
    hook: str
    layer: int
    unit: int
    fire_rate: float | None
    kurtosis: float | None
    max_over_median: float | None
    position_r2: float | None
    token_text: str
    token_coverage: float | None
    token_lift: float | None
    previous_token_text: str
    previous_lift: float | None
    bigram_text: str
    bigram_lift: float | None
    page: int | None  # feature id of this unit in the served atlas, when it has one


class NotableUnits(BaseModel):
    kind: str  # dead, always on, massive, outlier, positional, token, previous token, bigram
    units: list[NeuronUnit]


class MassiveActivation(BaseModel):
    hook: str
    layer: int
    unit: int
    value: float
    multiple_of_median: float | None
    position: int
    token_text: str
    page: int | None


class MassiveMap(BaseModel):
    """Layer x channel heat map of one hook point kind: ``ratio[i][j]`` is max |x| / median |x| of the
    layer's hook for channel ``channels[j]`` of ``hooks[i]``."""

    point: str
    hooks: list[str]
    layers: list[int]
    channels: list[int]
    ratio: list[list[float | None]]


class NeuronView(BaseModel):
    meta: NeuronMeta
    layers: list[LayerSummary]
    maps: list[MassiveMap]
    massive: list[MassiveActivation]
    notable: list[NotableUnits]
    atlas_hook: str
    atlas_kind: str


def layer_summary(row: dict[str, Any]) -> LayerSummary:
    entries = {m.group(1): int(v) for k, v in row.items() if (m := MASSIVE_ENTRIES.match(k))}
    return LayerSummary(**finite(row), massive_entries=entries)


def massive_maps(report: NeuronReport) -> list[MassiveMap]:
    """Per hook point kind, the layer x channel map over the channels that are among the
    :data:`MAP_CHANNELS_PER_HOOK` largest of some layer (at most :data:`MAP_CHANNELS`, the largest)."""
    hooks = np.asarray(report.units.column("hook").to_pylist(), dtype=object)
    units = report.units.column("unit").to_numpy()
    ratios = report.units.column("max_over_median").to_numpy(zero_copy_only=False)
    ratios = np.where(np.isnan(ratios), 0.0, ratios)  # inf (a hook whose median |x| is 0) is kept: null
    summary = sorted(report.layers.to_pylist(), key=lambda row: row["layer"])
    maps = []
    for point in dict.fromkeys(row["point"] for row in summary):
        rows = [row for row in summary if row["point"] == point]
        per_hook = []
        for row in rows:
            mine = hooks == row["hook"]
            ratio = np.zeros(int(row["width"]))
            ratio[units[mine]] = ratios[mine]
            per_hook.append(ratio)
        best: dict[int, float] = {}
        for ratio in per_hook:
            for channel in np.argsort(-ratio, kind="stable")[:MAP_CHANNELS_PER_HOOK]:
                best[int(channel)] = max(best.get(int(channel), 0.0), float(ratio[channel]))
        channels = sorted(sorted(best, key=lambda c: -best[c])[:MAP_CHANNELS])
        grid = [[float(r[c]) if c < len(r) else None for c in channels] for r in per_hook]
        maps.append(
            MassiveMap(
                point=point,
                hooks=[row["hook"] for row in rows],
                layers=[row["layer"] for row in rows],
                channels=channels,
                ratio=finite(grid),
            )
        )
    return maps


def neuron_view(report: NeuronReport, atlas_meta: dict[str, Any]) -> NeuronView:
    def page(hook: str, unit: int) -> int | None:
        return atlas_page("neuron", hook, unit, atlas_meta)

    meta = report.meta
    notable = [
        NotableUnits(kind=kind, units=[NeuronUnit(**r, page=page(r["hook"], r["unit"])) for r in records])
        for kind, records in notable_units(report.units, NOTABLE_LIMIT).items()
    ]
    massive = [
        MassiveActivation(**finite(r), page=page(r["hook"], r["unit"]))
        for r in report.massive.sort_by([("multiple_of_median", "descending")])
        .slice(0, MASSIVE_LIMIT)
        .to_pylist()
    ]
    return NeuronView(
        meta=NeuronMeta(
            source=str(meta.get("source", "unknown")),
            model=str(meta.get("model", "")),
            rows=int(meta.get("rows", 0)),
            hooks=list(meta.get("hooks", [])),
            settings=finite(meta.get("settings", {})),
        ),
        layers=[layer_summary(row) for row in report.layers.to_pylist()],
        maps=massive_maps(report),
        massive=massive,
        notable=notable,
        atlas_hook=atlas_meta["hook_in"],
        atlas_kind=atlas_meta["kind"],
    )
