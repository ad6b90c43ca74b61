"""The probe view's data: probe result folders (from `featurelens probe`) as typed API models, each target's
mean scores per probe and its best units, linked to their pages in the served atlas when the atlas maps
them (a neuron atlas of the probe's hook for neurons or residual channels; an atlas of the probe's
dictionary for its features).

The folder's ``results.json`` is read through :class:`WrittenProbe`, so a folder that is not a probe result
(or an unreadable one) is one :class:`~featurelens.errors.ProbeError` line naming it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from featurelens.errors import ProbeError
from featurelens.jsonio import finite
from featurelens.serve.pages import atlas_page

TOP_UNITS = 16
BASELINES = ("dense", "majority", "shuffled")  # shown first, then the k-sparse probes by k


class WrittenTarget(BaseModel):
    """One entry of ``targets`` in ``results.json`` (the fields the view reads)."""

    model_config = ConfigDict(extra="ignore")

    name: str
    kind: str
    metric: str
    rows: int
    balance: dict[str, int]
    scores: dict[str, list[float | None]]  # results.json writes NaN as null
    mean: dict[str, float | None]
    std: dict[str, float | None]
    units: list[tuple[int, float | None]]
    picked: dict[int, dict[int, int]]
    skipped_folds: list[str] = []


class WrittenProbe(BaseModel):
    """``results.json`` of a probe result folder (the fields the view reads)."""

    model_config = ConfigDict(extra="ignore")

    format: Literal["featurelens.probe"]
    hook: str
    units: int
    source: str | dict[str, Any] = "unknown"  # store or live
    model: str = ""
    dictionary: str | None = None  # set when the units are this dictionary's features
    rows: int = 0
    documents: int = 0
    settings: dict[str, Any] = {}
    targets: list[WrittenTarget]


class ProbeScore(BaseModel):
    """One probe's score over the folds: ``probe`` is dense, majority, shuffled or k=K."""

    probe: str
    k: int | None  # the number of units of a k-sparse probe
    mean: float | None
    std: float | None


class ProbeUnit(BaseModel):
    rank: int  # 0 = the best unit by the ranking score on all labelled rows
    unit: int  # channel of the hook, or feature id of the dictionary
    score: float | None  # its ranking score
    folds_picked: int  # how many folds picked it for the k-sparse probe of the largest k
    page: int | None  # feature id of this unit in the served atlas, when it has one


class ProbeTarget(BaseModel):
    name: str
    kind: str  # classification or regression
    metric: str  # balanced accuracy or R²
    rows: int
    balance: dict[str, int]  # rows per class (classification)
    folds: int  # folds scored
    skipped_folds: list[str]
    scores: list[ProbeScore]  # dense, majority, shuffled, then each k ascending
    largest_k: int | None
    units: list[ProbeUnit]  # the best TOP_UNITS


class ProbeView(BaseModel):
    folder: str
    hook: str
    source: str  # store or live (what gave the rows)
    model: str
    dictionary: str | None  # the dictionary whose features were probed, if any
    unit_kind: Literal["neuron", "feature"]
    units: int  # width probed
    rows: int
    documents: int
    settings: dict[str, Any]
    targets: list[ProbeTarget]


class ProbeViews(BaseModel):
    """Every probe result folder served (``--probe``, in order), beside the atlas's hook and kind."""

    probes: list[ProbeView]
    atlas_hook: str
    atlas_kind: str


def read_probe(path: str | Path) -> WrittenProbe:
    """The ``results.json`` of the probe result folder ``path`` (or of that file itself)."""
    folder = Path(path)
    if folder.is_file() and folder.name == "results.json":
        folder = folder.parent
    try:
        written = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError) as error:
        raise ProbeError(
            f"{folder} is not a probe result folder (results.json written by `featurelens probe`)"
        ) from error
    if not isinstance(written, dict) or written.get("format") != "featurelens.probe":
        raise ProbeError(
            f"{folder}/results.json is not a featurelens probe result (no format 'featurelens.probe')"
        )
    try:
        return WrittenProbe.model_validate(written)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ProbeError(
            f"{folder}/results.json is not a readable probe result: {where}: {first['msg']}"
        ) from error


def same_dictionary(probed: str | None, mapped: str | None) -> bool:
    """Whether the probed dictionary can be the atlas's: the same folder, or either cannot be found here
    (then the hook decides, as it does for the circuit view)."""
    if not probed or not mapped or not Path(probed).exists() or not Path(mapped).exists():
        return True
    return Path(probed).resolve() == Path(mapped).resolve()


def _k(probe: str) -> int | None:
    return int(probe[2:]) if probe.startswith("k=") and probe[2:].isdigit() else None


def target_view(target: WrittenTarget, page: Any) -> ProbeTarget:
    ks = sorted(k for probe in target.scores if (k := _k(probe)) is not None)
    names = [p for p in BASELINES if p in target.scores] + [f"k={k}" for k in ks]
    names += [p for p in target.scores if p not in names]  # any probe a newer version adds
    scores = [
        ProbeScore(probe=p, k=_k(p), mean=finite(target.mean.get(p)), std=finite(target.std.get(p)))
        for p in names
    ]
    picked_keys = sorted(target.picked)
    largest = picked_keys[-1] if picked_keys else None
    picked = target.picked.get(largest, {}) if largest is not None else {}
    units = [
        ProbeUnit(
            rank=rank, unit=unit, score=finite(score), folds_picked=picked.get(unit, 0), page=page(unit)
        )
        for rank, (unit, score) in enumerate(target.units[:TOP_UNITS])
    ]
    return ProbeTarget(
        name=target.name,
        kind=target.kind,
        metric=target.metric,
        rows=target.rows,
        balance=target.balance,
        folds=len(target.scores.get("dense", [])),
        skipped_folds=target.skipped_folds,
        scores=scores,
        largest_k=largest,
        units=units,
    )


def probe_view(written: WrittenProbe, folder: str, atlas_meta: dict[str, Any]) -> ProbeView:
    source = written.source if isinstance(written.source, dict) else {"source": written.source}
    dictionary = written.dictionary or source.get("dictionary")
    kind: Literal["neuron", "feature"] = "feature" if dictionary else "neuron"
    linked = kind == "neuron" or same_dictionary(dictionary, atlas_meta.get("dictionary"))

    def page(unit: int) -> int | None:
        return atlas_page(kind, written.hook, unit, atlas_meta) if linked else None

    return ProbeView(
        folder=folder,
        hook=written.hook,
        source=str(source.get("source", "unknown")),
        model=written.model or str(source.get("model", "")),
        dictionary=dictionary,
        unit_kind=kind,
        units=written.units,
        rows=written.rows,
        documents=written.documents,
        settings=finite(written.settings),
        targets=[target_view(target, page) for target in written.targets],
    )


def probe_views(folders: Sequence[str | Path], atlas_meta: dict[str, Any]) -> ProbeViews:
    """The views of the probe result ``folders`` beside the atlas described by ``atlas_meta``."""
    return ProbeViews(
        probes=[probe_view(read_probe(folder), str(folder), atlas_meta) for folder in folders],
        atlas_hook=atlas_meta["hook_in"],
        atlas_kind=atlas_meta["kind"],
    )
