"""Circuits: a set of components, how faithfully it alone reproduces the model's behaviour, and its graph.

Faithfulness of a circuit C among all components A, for a metric m on the clean prompts:
``(m(C kept, A - C mean-ablated) - m(A mean-ablated)) / (m(nothing ablated) - m(A mean-ablated))``,
so 1 means the circuit alone does everything the model does and 0 means it does nothing; the
complement (C ablated, the rest kept) is reported on the same scale. Means are per position over the
clean prompts (aligned templates), the usual mean ablation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from featurelens.intervene.components import Component, Metric
from featurelens.intervene.context import intervening
from featurelens.intervene.edits import Edit, InterventionError, Mean, Patch
from featurelens.intervene.patching import masked_variants, metric_rows
from featurelens.models import LanguageModel


@dataclass(frozen=True)
class Faithfulness:
    """The metric with the circuit alone, its complement alone, everything ablated and nothing ablated,
    and the normalised scores."""

    circuit_metric: float
    complement_metric: float
    ablated_metric: float
    clean_metric: float

    def _normalised(self, value: float) -> float:
        gap = self.clean_metric - self.ablated_metric
        if gap == 0:
            raise InterventionError("ablating every component does not change the metric; nothing to explain")
        return (value - self.ablated_metric) / gap

    @property
    def circuit(self) -> float:
        return self._normalised(self.circuit_metric)

    @property
    def complement(self) -> float:
        return self._normalised(self.complement_metric)

    def to_dict(self) -> dict[str, float]:
        return {
            "faithfulness": self.circuit,
            "complement": self.complement,
            "circuit_metric": self.circuit_metric,
            "complement_metric": self.complement_metric,
            "ablated_metric": self.ablated_metric,
            "clean_metric": self.clean_metric,
        }


def mean_ablation(
    lm: LanguageModel, input_ids: torch.Tensor, hooks: Sequence[str]
) -> Callable[[str, torch.Tensor, Sequence[int]], Edit]:
    """``edit_for(hook, mask, chunk)``: masked entries become the hook's per-position mean over
    ``input_ids``."""
    ordered = sorted(set(hooks), key=list(lm.hook_points).index)
    captured = lm.capture(input_ids, ordered, stop_early=True)
    means = {hook: Mean.of(captured[hook], per_position=True).mean for hook in ordered}
    return lambda hook, mask, _chunk: Mean(means[hook], mask=mask)


def _ablated_metrics(
    lm: LanguageModel,
    clean_ids: torch.Tensor,
    groups: Sequence[Sequence[Component]],
    components: Sequence[Component],
    metric: Metric,
    batch_size: int,
) -> tuple[list[float], float]:
    """The mean metric with each group mean-ablated, and the clean metric."""
    ablate = mean_ablation(lm, clean_ids, [c.hook for c in components])
    values = masked_variants(lm, clean_ids, groups, ablate, metric, batch_size).tolist()
    clean_metric = float(metric_rows(lm, clean_ids, metric, torch.arange(clean_ids.shape[0])).mean())
    return values, clean_metric


def faithfulness(
    lm: LanguageModel,
    clean_ids: torch.Tensor,
    circuit: Sequence[Component],
    components: Sequence[Component],
    metric: Metric,
    *,
    batch_size: int = 64,
) -> Faithfulness:
    """How much of ``metric`` on ``clean_ids`` [n, seq] the ``circuit`` keeps when every other of
    ``components`` is mean-ablated (and how much the rest keeps without it). Circuit members outside
    ``components`` (e.g. neurons when only heads are ablated) are never ablated."""
    inside = set(circuit)
    outside = [c for c in components if c not in inside]
    within = [c for c in components if c in inside]
    (circuit_metric, complement_metric, ablated_metric), clean_metric = _ablated_metrics(
        lm, clean_ids, [outside, within, list(components)], components, metric, batch_size
    )
    return Faithfulness(circuit_metric, complement_metric, ablated_metric, clean_metric)


def faithfulness_by_size(
    lm: LanguageModel,
    clean_ids: torch.Tensor,
    ranked: Sequence[Component],
    sizes: Sequence[int],
    components: Sequence[Component],
    metric: Metric,
    *,
    batch_size: int = 64,
) -> list[tuple[int, float]]:
    """Faithfulness of the circuits made of the first k of ``ranked``, for each k in ``sizes``."""
    groups = [[c for c in components if c not in set(ranked[:k])] for k in sizes]
    (*kept, ablated), clean_metric = _ablated_metrics(
        lm, clean_ids, [*groups, list(components)], components, metric, batch_size
    )
    scores = [Faithfulness(value, float("nan"), ablated, clean_metric).circuit for value in kept]
    return list(zip(sizes, scores, strict=True))


def is_upstream(lm: LanguageModel, before: Component, after: Component) -> bool:
    """True when ``after`` reads what ``before`` writes: a later layer, or a head feeding the MLP of its
    own layer where the block is sequential (it has a ``resid_mid``)."""
    if before.kind == "resid":
        return after.layer >= before.layer and after != before
    if after.layer != before.layer:
        return after.layer > before.layer
    sequential = f"layers.{after.layer}.resid_mid" in lm.hook_points
    return sequential and before.kind == "head" and after.kind == "neuron"


def edge_effects(
    lm: LanguageModel,
    clean_ids: torch.Tensor,
    corrupt_ids: torch.Tensor,
    circuit: Sequence[Component],
    *,
    batch_size: int = 64,
) -> list[tuple[Component, Component, float]]:
    """For each pair ``u → v`` of ``circuit`` with v downstream of u: the fraction of v's clean-vs-corrupted
    change that patching u alone (clean into the corrupted run) brings about,
    ``<v(u patched) - v(corrupt), v(clean) - v(corrupt)> / |v(clean) - v(corrupt)|²`` over v's entries and
    all prompts (a total effect through every path, measured exactly)."""
    n, seq = corrupt_ids.shape
    hooks = sorted({c.hook for c in circuit}, key=list(lm.hook_points).index)
    clean_cache = lm.capture(clean_ids, hooks)
    corrupt_cache = lm.capture(corrupt_ids, hooks)
    widths = {hook: int(clean_cache[hook].shape[-1]) for hook in hooks}
    sources = [u for u in circuit if any(is_upstream(lm, u, v) for v in circuit)]
    per_batch = max(1, batch_size // n)
    edges = []
    for start in range(0, len(sources), per_batch):
        chunk = sources[start : start + per_batch]
        masks = {
            hook: torch.zeros(len(chunk) * n, seq, width, dtype=torch.bool) for hook, width in widths.items()
        }
        for g, u in enumerate(chunk):
            masks[u.hook][g * n : (g + 1) * n] |= u.mask(widths[u.hook], seq)
        edits = {
            hook: Patch(clean_cache[hook].repeat(len(chunk), 1, 1), mask=mask)
            for hook, mask in masks.items()
            if bool(mask.any())
        }
        with intervening(lm, edits):
            seen = lm.capture(corrupt_ids.repeat(len(chunk), 1), hooks)
        for g, u in enumerate(chunk):
            for v in circuit:
                if not is_upstream(lm, u, v):
                    continue
                mask = v.mask(widths[v.hook], seq)
                moved = (seen[v.hook][g * n : (g + 1) * n] - corrupt_cache[v.hook])[:, mask].double()
                wanted = (clean_cache[v.hook] - corrupt_cache[v.hook])[:, mask].double()
                norm = float(wanted.pow(2).sum())
                edges.append((u, v, float((moved * wanted).sum()) / norm if norm > 0 else 0.0))
    return edges
