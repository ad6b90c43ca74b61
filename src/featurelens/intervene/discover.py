"""Find a circuit for a task, end to end: attribution over every head and neuron, exact patching of every
head and of the neurons attribution ranks highest, the circuit (top heads and neurons by exact effect),
its faithfulness, the edges between its nodes, and files a person or a web page can read.

Outputs in ``out``: ``components.parquet`` (every component: attribution effect, exact effect where
measured, rank), ``circuit.json`` (nodes, edges with their exact weight and
edge attribution, faithfulness, baselines, the options), both written
under temporary names and renamed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from featurelens.dictionaries.base import Dictionary
from featurelens.intervene.attribution import attribution_patching, edge_attribution
from featurelens.intervene.circuits import edge_effects, faithfulness, faithfulness_by_size
from featurelens.intervene.components import Component, feature_components, head_components, neuron_components
from featurelens.intervene.edits import InterventionError
from featurelens.intervene.patching import PatchingResult, activation_patching
from featurelens.intervene.tasks import PromptPairs, ioi_texts, read_prompt_file, tokenize_pairs
from featurelens.models import LanguageModel

KINDS = ("heads", "neurons")
SIZES = (1, 2, 4, 8, 16, 32, 64)  # circuit sizes (top heads) whose faithfulness is reported


@dataclass(frozen=True)
class CircuitJob:
    """Options of one circuit search (``featurelens circuit`` maps its flags onto these one to one)."""

    out: str = "runs/circuit"
    model: str = "smollm2"
    task: str = "ioi"  # "ioi" or a JSON-lines prompt file
    components: tuple[str, ...] = KINDS
    exact_prompts: int = 8
    exact_neurons: int = 32
    top_heads: int = 8
    top_neurons: int = 8
    ablate: tuple[str, ...] = ("heads",)
    dictionary: str | None = None  # an SAE folder: its features (and error term) are scored by attribution
    top_features: int = 8
    exact_features: int = 32  # top features by attribution (and the error term) patched exactly
    batch_size: int = 64
    device: str | None = None

    def __post_init__(self) -> None:
        for name in ("components", "ablate"):
            kinds = getattr(self, name)
            unknown = [kind for kind in kinds if kind not in KINDS]
            if unknown or not kinds:
                raise InterventionError(f"unknown {name} kind(s) {unknown}; accepted: {', '.join(KINDS)}")
        for name in ("exact_prompts", "batch_size"):
            if getattr(self, name) < 1:
                raise InterventionError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("exact_neurons", "top_heads", "top_neurons", "top_features", "exact_features"):
            if getattr(self, name) < 0:
                raise InterventionError(f"{name} must be 0 or more, not {getattr(self, name)}")


@dataclass
class CircuitReport:
    """What a search found; ``seconds`` per stage."""

    pairs: PromptPairs
    attribution: PatchingResult
    exact: PatchingResult | None
    circuit: list[Component]
    features: list[Component]
    faithfulness: dict[str, float]
    faithfulness_by_heads: list[tuple[int, float]]
    edges: list[tuple[Component, Component, float]]
    head_rank_correlation: float | None
    rank_correlations: dict[str, float] = field(default_factory=dict)  # per kind: attribution vs exact
    edge_attributions: list[tuple[Component, Component, float]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two vectors [n] (ties broken by order; float64)."""
    if a.numel() != b.numel() or a.numel() < 2:
        raise InterventionError("rank correlation needs two vectors of the same length, at least 2")
    ranks = [torch.argsort(torch.argsort(v.double(), stable=True)).double() for v in (a, b)]
    centred = [r - r.mean() for r in ranks]
    return float((centred[0] * centred[1]).sum() / (centred[0].norm() * centred[1].norm()))


def load_pairs(lm: LanguageModel, task: str) -> PromptPairs:
    """The prompt pairs of ``task``: ``ioi`` or a JSON-lines file."""
    texts = ioi_texts() if task == "ioi" else read_prompt_file(task)
    return tokenize_pairs(lm.tokenizer, texts)


def find_circuit(
    job: CircuitJob,
    lm: LanguageModel,
    on_stage: Callable[[str], None] | None = None,
    on_variants: Callable[[int, int], None] | None = None,
) -> CircuitReport:
    """Run every stage of the search on ``lm``; ``on_stage(name)`` is called as each stage starts and
    ``on_variants(done, total)`` as exact patching goes."""
    seconds: dict[str, float] = {}

    def stage(name: str) -> None:
        seconds[name] = time.perf_counter()
        if on_stage is not None:
            on_stage(name)

    pairs = load_pairs(lm, job.task)
    subset = pairs.subset(job.exact_prompts)
    heads = head_components(lm) if "heads" in job.components else []
    neurons = neuron_components(lm) if "neurons" in job.components else []
    every = heads + neurons
    dictionaries = [Dictionary.load(job.dictionary)] if job.dictionary else []
    features = [c for d in dictionaries for c in feature_components(d)]

    stage("attribution")
    attribution = attribution_patching(
        lm, pairs.clean, pairs.corrupt, every + features, pairs.metric, dictionaries=dictionaries
    )
    checked = heads + _top(attribution, "neuron", job.exact_neurons)
    if dictionaries and job.exact_features:
        checked += _top(attribution, "feature", job.exact_features) + _top(attribution, "error", 1)
    exact, correlation, correlations = None, None, {}
    if checked:
        stage("exact patching")
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            if on_variants is not None:
                on_variants(done, len(checked))

        exact = activation_patching(
            lm,
            subset.clean,
            subset.corrupt,
            checked,
            subset.metric,
            batch_size=job.batch_size,
            on_variants=advance,
            dictionaries=dictionaries,
        )
        on_subset = attribution_patching(
            lm, subset.clean, subset.corrupt, checked, subset.metric, dictionaries=dictionaries
        )
        for kind in ("head", "neuron", "feature"):
            rows = torch.tensor([c.kind == kind for c in checked])
            if int(rows.sum()) > 1:
                correlations[kind] = rank_correlation(on_subset.effect[rows], exact.effect[rows])
        correlation = correlations.get("head")
    ranked = exact or attribution
    circuit = _top(ranked, "head", job.top_heads) + _top(ranked, "neuron", job.top_neurons)
    if not circuit:
        raise InterventionError("the circuit is empty: ask for --top-heads or --top-neurons above 0")

    stage("faithfulness")
    ablated = [c for c in every if f"{c.kind}s" in job.ablate] or every
    score = faithfulness(lm, pairs.clean, circuit, ablated, pairs.metric, batch_size=job.batch_size).to_dict()
    ranked_heads = _top(ranked, "head", len(heads))
    sizes = [k for k in SIZES if k < len(ranked_heads)] + [len(ranked_heads)] if ranked_heads else []
    by_heads = faithfulness_by_size(
        lm, pairs.clean, ranked_heads, sizes, ablated, pairs.metric, batch_size=job.batch_size
    )
    stage("edges")
    edges = edge_effects(lm, subset.clean, subset.corrupt, circuit, batch_size=job.batch_size)
    estimated = edge_attribution(lm, subset.clean, subset.corrupt, circuit, subset.metric)
    starts = list(seconds.items())
    durations = {
        name: (starts[i + 1][1] if i + 1 < len(starts) else time.perf_counter()) - began
        for i, (name, began) in enumerate(starts)
    }
    features_by = (
        exact if exact is not None and any(c.kind == "feature" for c in exact.components) else attribution
    )
    top_features = _top(features_by, "feature", job.top_features)
    return CircuitReport(
        pairs,
        attribution,
        exact,
        circuit,
        top_features,
        score,
        by_heads,
        edges,
        correlation,
        correlations,
        estimated,
        durations,
    )


def _top(result: PatchingResult, kind: str, k: int) -> list[Component]:
    return [c for c, _ in result.ranked() if c.kind == kind][:k]


def component_table(report: CircuitReport) -> pa.Table:
    """Every component with its attribution effect, exact effect (NaN where not measured) and rank."""
    exact = {}
    if report.exact is not None:
        exact = dict(zip(report.exact.components, report.exact.effect.tolist(), strict=True))
    inside = set(report.circuit) | set(report.features)
    rows = []
    for rank, (component, effect) in enumerate(report.attribution.ranked(), start=1):
        rows.append(
            {
                "component": component.label,
                "kind": component.kind,
                "layer": component.layer,
                "index": component.index,
                "attribution_effect": effect,
                "attribution_rank": rank,
                "exact_effect": exact.get(component, float("nan")),
                "in_circuit": component in inside,
            }
        )
    return pa.Table.from_pylist(rows)


def circuit_graph(report: CircuitReport, job: CircuitJob, model: str) -> dict[str, Any]:
    """The circuit as JSON: nodes by layer with their effects, weighted edges, faithfulness, baselines."""
    exact = (
        dict(zip(report.exact.components, report.exact.effect.tolist(), strict=True)) if report.exact else {}
    )
    attribution = dict(zip(report.attribution.components, report.attribution.effect.tolist(), strict=True))
    nodes = [
        {
            "id": c.label,
            "kind": c.kind,
            "layer": c.layer,
            "index": c.index,
            "hook": c.hook,
            "exact_effect": exact.get(c),
            "attribution_effect": attribution.get(c),
        }
        for c in [*report.circuit, *report.features]
    ]
    estimated = {(u, v): w for u, v, w in report.edge_attributions}
    edges = [
        {"source": u.label, "target": v.label, "weight": w, "attribution": estimated.get((u, v))}
        for u, v, w in report.edges
    ]
    edges += [
        {"source": c.label, "target": "logits", "weight": exact.get(c, attribution[c])}
        for c in [*report.circuit, *report.features]
    ]
    return {
        "kind": "featurelens.circuit",
        "version": 1,
        "model": model,
        "task": job.task,
        "metric": "logit difference (correct - wrong) at the last position",
        "prompts": len(report.pairs),
        "exact_prompts": min(job.exact_prompts, len(report.pairs)),
        "clean_metric": report.attribution.clean,
        "corrupt_metric": report.attribution.corrupt,
        "faithfulness": report.faithfulness,
        "faithfulness_by_heads": [{"heads": k, "faithfulness": f} for k, f in report.faithfulness_by_heads],
        "head_rank_correlation": report.head_rank_correlation,
        "rank_correlations": report.rank_correlations,
        "nodes": nodes,
        "edges": edges,
        "options": asdict(job),
        "seconds": report.seconds,
        "example": report.pairs.texts[0],
    }


def write_outputs(report: CircuitReport, job: CircuitJob, model: str) -> Path:
    """``components.parquet`` and ``circuit.json`` in ``job.out`` (each renamed into place when whole)."""
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    table_path, graph_path = out / "components.parquet", out / "circuit.json"
    partial = table_path.with_name(".components.parquet.partial")
    pq.write_table(component_table(report), partial)
    os.replace(partial, table_path)
    partial = graph_path.with_name(".circuit.json.partial")
    partial.write_text(json.dumps(circuit_graph(report, job, model), indent=1))
    os.replace(partial, graph_path)
    return graph_path


def read_circuit(path: str | Path) -> dict[str, Any]:
    """A ``circuit.json`` written by :func:`write_outputs` (or its folder); anything else is an error."""
    path = Path(path)
    if path.is_dir():
        path = path / "circuit.json"
    try:
        graph = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise InterventionError(f"{path} is not a circuit file; make one with featurelens circuit") from None
    if not isinstance(graph, dict) or graph.get("kind") != "featurelens.circuit":
        raise InterventionError(f"{path} is not a circuit file; make one with featurelens circuit")
    return graph
