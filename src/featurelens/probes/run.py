"""`featurelens probe` end to end: rows of one hook (store or live; neurons, residual channels or a
dictionary's features), labels, the grouped cross-validation of every target, and the output folder.

Rows are those a dictionary would train on: from a store, its rows minus its norm outliers; live, every
position but the first and no special tokens, minus rows above 10x the median norm (attention sinks).

Output folder (written under a temporary name, renamed when whole)::

    results.json        the job, and per target: balance, mean/std/per-fold scores of every probe, units
    scores.parquet      target, probe (dense, majority, shuffled, k=...), k, fold, score
    units.parquet       target, rank, unit, ranking score, folds that picked it at the largest k
    accuracy_vs_k.png   score against k per target, with the dense probe and the baselines
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from featurelens.capture.rows import Rows, live_row_chunks, store_rows
from featurelens.capture.store import ActivationStore
from featurelens.corpus import CorpusConfig
from featurelens.dictionaries import Dictionary
from featurelens.errors import FeatureLensError, ProbeError
from featurelens.folders import check_output_folder, staged_folder
from featurelens.jsonio import finite
from featurelens.models import load_model, load_tokenizer
from featurelens.probes.experiment import ProbeResult, ProbeSettings, cross_validate
from featurelens.probes.labels import Labels, contexts, file_labels, predicate_labels, target_labels

DEFAULT_PREDICATES = ("digit", "starts-word", "in-code", "in-parentheses")
OUTLIER_MULTIPLE = 10.0


@dataclass(frozen=True)
class ProbeJob:
    """What to probe; the CLI maps its flags onto these fields one to one.

    Units are ``hook``'s channels, or ``dictionary``'s features (its ``hook_in`` then). Activations come
    from the store ``acts`` or live from ``model`` on ``corpus``. Targets: ``predicates``, a ``labels``
    file aligned to the rows, and/or a continuous ``target``; none given means :data:`DEFAULT_PREDICATES`.
    """

    out: str = "runs/probe"
    hook: str = "layers.15.mlp_neurons"
    acts: str | None = None
    dictionary: str | None = None
    model: str = "smollm2"
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    tokens: int = 20_000
    seq_len: int = 256
    batch_size: int = 8
    predicates: tuple[str, ...] = ()
    labels: str | None = None
    target: str | None = None
    device: str | None = None
    overwrite: bool = False
    settings: ProbeSettings = field(default_factory=ProbeSettings)

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.seq_len < 2 or self.batch_size < 1:
            raise ProbeError("--tokens and --batch-size must be positive and --seq-len at least 2")


@dataclass
class ProbeRows:
    """Units [n, width] (float32) and per row [n]: token id, position, document; with the tokenizer.

    ``typical`` [m] marks which of the m rows read were kept (norm outliers left out); a labels file must
    hold ``label_rows`` values (the store's rows, or the m rows read live), of which the first m count.
    """

    x: np.ndarray
    tokens: np.ndarray
    positions: np.ndarray
    docs: np.ndarray
    tokenizer: Any
    hook: str
    source: dict[str, Any]
    typical: np.ndarray
    label_rows: int


def _collect(chunks: Any, limit: int) -> list[Rows]:
    parts, total = [], 0
    for chunk in chunks:
        parts.append(chunk)
        total += len(chunk.tokens)
        if total >= limit:
            break
    if not parts:
        raise ProbeError("the source held no rows to probe")
    return parts


def probe_rows(job: ProbeJob) -> ProbeRows:
    """The rows ``job`` probes (see the module docstring)."""
    dictionary = Dictionary.load(job.dictionary) if job.dictionary else None
    hook = dictionary.hook_in if dictionary is not None else job.hook
    if job.acts is not None:
        store = ActivationStore.open(job.acts)
        if hook not in store.hooks:
            raise ProbeError(f"store {store.path} has no hook {hook!r}; it holds: {', '.join(store.hooks)}")
        spec = str(store.manifest.get("model", {}).get("spec", ""))
        try:
            tokenizer = load_tokenizer(spec)
        except FeatureLensError as error:
            raise ProbeError(f"the store's tokenizer is needed for token labels: {error}") from error
        parts = _collect(store_rows(store, [hook], job.tokens, 8192), job.tokens)
        typical = np.ones(sum(len(p.tokens) for p in parts), dtype=bool)
        outliers = store.outlier_rows(hook)
        typical[outliers[outliers < len(typical)]] = False
        source: dict[str, Any] = {"source": "store", "store": str(store.path), "model": spec}
        label_rows = store.n_tokens
    else:
        lm = load_model(job.model, device=job.device)
        lm.hook_point(hook)
        tokenizer = lm.tokenizer
        chunks = live_row_chunks(
            lm,
            [hook],
            job.corpus,
            seq_len=job.seq_len,
            n_tokens=job.tokens,
            batch_size=job.batch_size,
            skip_positions=1,
            keep_special=False,
        )
        parts = _collect(chunks, job.tokens)
        norms = torch.cat([p.acts[hook] for p in parts]).norm(dim=1).numpy()
        typical = norms <= OUTLIER_MULTIPLE * np.median(norms)
        label_rows = len(typical)
        source = {"source": "live", "model": job.model, "corpus": asdict(job.corpus), "seq_len": job.seq_len}
    acts = torch.cat([p.acts[hook] for p in parts])
    if dictionary is not None:
        with torch.no_grad():
            acts = torch.cat([dictionary.encode(batch) for batch in acts.split(4096)])
        source["dictionary"] = job.dictionary
    column = {
        name: np.concatenate([getattr(p, name) for p in parts]) for name in ("tokens", "positions", "docs")
    }
    source.update(rows=int(typical.sum()), outliers_left_out=int((~typical).sum()))
    return ProbeRows(
        acts.numpy()[typical],
        column["tokens"][typical],
        column["positions"][typical],
        column["docs"][typical],
        tokenizer,
        hook,
        source,
        typical,
        label_rows,
    )


def targets(job: ProbeJob, rows: ProbeRows) -> list[Labels]:
    """Every target the job names (one clear error for each that cannot be used)."""
    chosen: list[Labels] = []
    predicates = job.predicates or (() if job.labels or job.target else DEFAULT_PREDICATES)
    if predicates:
        ids = np.unique(rows.tokens)
        texts_of = dict(
            zip(ids.tolist(), rows.tokenizer.batch_decode([[i] for i in ids.tolist()]), strict=True)
        )
        texts = [texts_of[t] for t in rows.tokens.tolist()]
        context = contexts(texts, rows.positions)
        chosen.extend(predicate_labels(spec, texts, context) for spec in predicates)
    if job.labels:
        labels = file_labels(job.labels, rows.label_rows)
        read = len(rows.typical)
        values, keep = labels.values[:read][rows.typical], labels.keep[:read][rows.typical]
        chosen.append(Labels(labels.name, values, keep, labels.kind))
    if job.target:
        chosen.append(target_labels(job.target, rows.positions))
    return chosen


def run_probe(
    job: ProbeJob, on_target: Callable[[str], None] | None = None
) -> tuple[list[ProbeResult], dict[str, Any]]:
    """Probe every target of ``job``; returns the results and the run's description."""
    started = time.perf_counter()
    rows = probe_rows(job)
    labels = targets(job, rows)
    results = []
    for target in labels:
        if on_target:
            on_target(target.name)
        results.append(cross_validate(rows.x, target, rows.docs, job.settings))
    meta = {
        **rows.source,
        "hook": rows.hook,
        "units": int(rows.x.shape[1]),
        "documents": len(np.unique(rows.docs)),
        "settings": asdict(job.settings),
        "seconds": time.perf_counter() - started,
    }
    return results, meta


def save_probe(results: list[ProbeResult], meta: dict[str, Any], out: str | Path, overwrite: bool) -> Path:
    """Write the output folder (see the module docstring)."""
    out = check_probe_out(out, overwrite)
    score_rows: list[dict[str, Any]] = []
    unit_rows: list[dict[str, Any]] = []
    for result in results:
        for probe, values in result.scores.items():
            k = int(probe[2:]) if probe.startswith("k=") else None
            score_rows.extend(
                {"target": result.name, "probe": probe, "k": k, "fold": fold, "score": value}
                for fold, value in enumerate(values)
            )
        largest = max(result.picked) if result.picked else None
        unit_rows.extend(
            {
                "target": result.name,
                "rank": rank,
                "unit": unit,
                "score": score,
                "folds_picked": result.picked.get(largest, {}).get(unit, 0) if largest else 0,
            }
            for rank, (unit, score) in enumerate(result.units)
        )
    payload = {"format": "featurelens.probe", **meta, "targets": [r.summary() for r in results]}
    with staged_folder(out) as staging:
        (staging / "results.json").write_text(json.dumps(finite(payload), indent=1))
        pq.write_table(pa.Table.from_pylist(score_rows), staging / "scores.parquet")
        pq.write_table(pa.Table.from_pylist(unit_rows), staging / "units.parquet")
        plot_scores(results, staging / "accuracy_vs_k.png")
    return out


def check_probe_out(out: str | Path, overwrite: bool) -> Path:
    """``out`` as a path, if results may be written there (call it before the work, too)."""
    return check_output_folder(out, overwrite, "results.json", "probe result folder", ProbeError)


def plot_scores(results: list[ProbeResult], path: Path) -> None:
    """Score against k per target (log-scaled k), the dense probe and the baselines as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.4), squeeze=False)
    for axis, result in zip(axes[0], results, strict=True):
        ks = sorted(int(p[2:]) for p in result.scores if p.startswith("k="))
        means = [result.mean(f"k={k}") for k in ks]
        spread = [float(np.std(result.scores[f"k={k}"])) for k in ks]
        axis.errorbar(ks, means, yerr=spread, marker="o", label="k-sparse", capsize=2)
        for probe, style in (("dense", "-"), ("majority", ":"), ("shuffled", "--")):
            axis.axhline(
                result.mean(probe), ls=style, color="grey" if probe != "dense" else "C1", label=probe
            )
        axis.set_xscale("log", base=2)
        axis.set(xlabel="k (units)", ylabel=result.metric, title=result.name)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
