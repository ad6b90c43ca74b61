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
from featurelens.intervene.edits import Edit, InterventionError, Mean
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
) -> Callable[[str, torch.Tensor], Edit]:
    """``edit_for(hook, mask)``: masked entries become the hook's per-position mean over ``input_ids``."""
    ordered = sorted(set(hooks), key=list(lm.hook_points).index)
    captured = lm.capture(input_ids, ordered, stop_early=True)
    means = {hook: Mean.of(captured[hook], per_position=True).mean for hook in ordered}
    return lambda hook, mask: Mean(means[hook], mask=mask)


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
    ``components`` is mean-ablated (and how much the rest keeps without it)."""
    inside = set(circuit)
    unknown = [c.label for c in inside if c not in set(components)]
    if unknown:
        raise InterventionError(f"circuit component(s) {unknown[:5]} are not among the components ablated")
    outside = [c for c in components if c not in inside]
    ablate = mean_ablation(lm, clean_ids, [c.hook for c in components])
    groups = [outside, list(circuit), list(components)]
    circuit_metric, complement_metric, ablated_metric = masked_variants(
        lm, clean_ids, groups, ablate, metric, batch_size
    ).tolist()
    clean_metric = float(metric_rows(lm, clean_ids, metric, torch.arange(clean_ids.shape[0])).mean())
    return Faithfulness(circuit_metric, complement_metric, ablated_metric, clean_metric)
