"""Exact activation patching, batched over components: many patched variants in one forward batch.

Denoising (the default) runs the *corrupted* prompts with one component's activations taken from the
*clean* run and asks how much of the clean metric comes back; noising runs the clean prompts with one
component corrupted and asks how much is lost. Both are reported raw and normalised:
``(patched - corrupt) / (clean - corrupt)`` for denoising and ``(clean - patched) / (clean - corrupt)``
for noising, so 1 means "this component alone carries the whole effect" either way.

Every variant is a row of one batch: row ``c * n + i`` is prompt ``i`` with component ``c`` patched, and
each hook's :class:`Patch` edit carries a per-row mask, so a batch of ``batch_size`` rows patches
``batch_size // n`` components at once (tested equal to patching them one at a time).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Literal

import torch

from featurelens.intervene.components import Component, Metric, hook_widths
from featurelens.intervene.context import intervening
from featurelens.intervene.edits import Edit, InterventionError, Patch
from featurelens.models import LanguageModel
from featurelens.models.tracing import skipping_layers

Direction = Literal["denoise", "noise"]


@dataclass(frozen=True)
class PatchingResult:
    """Per component, the metric (mean over prompts) with it patched; the clean and corrupted baselines."""

    components: list[Component]
    patched: torch.Tensor  # float64 [n_components]
    clean: float
    corrupt: float
    direction: Direction
    method: str  # "exact" or "attribution"

    @property
    def effect(self) -> torch.Tensor:
        """Normalised effect [n_components]: 1 = the component carries the whole clean-corrupt gap."""
        gap = self.clean - self.corrupt
        if gap == 0:
            raise InterventionError("clean and corrupted prompts give the same metric; nothing to patch")
        moved = self.patched - self.corrupt if self.direction == "denoise" else self.clean - self.patched
        return moved / gap

    def ranked(self, limit: int | None = None) -> list[tuple[Component, float]]:
        """Components by decreasing absolute normalised effect."""
        effect = self.effect
        order = torch.argsort(effect.abs(), descending=True, stable=True)[:limit]
        return [(self.components[int(i)], float(effect[i])) for i in order]

    def rows(self) -> list[dict[str, object]]:
        """One record per component, ranked (for tables and Parquet)."""
        patched = {c: float(v) for c, v in zip(self.components, self.patched, strict=True)}
        return [
            {
                "rank": rank,
                "component": component.label,
                "kind": component.kind,
                "layer": component.layer,
                "index": component.index,
                "position": component.position,
                "effect": effect,
                "patched_metric": patched[component],
                "method": self.method,
                "direction": self.direction,
            }
            for rank, (component, effect) in enumerate(self.ranked(), start=1)
        ]


def check_pair(clean_ids: torch.Tensor, corrupt_ids: torch.Tensor) -> int:
    """The number of prompts; clean and corrupted prompts must align token by token."""
    if clean_ids.ndim != 2 or clean_ids.shape != corrupt_ids.shape:
        raise InterventionError(
            f"clean {list(clean_ids.shape)} and corrupted {list(corrupt_ids.shape)} prompts must have the "
            "same shape [n_prompts, seq]: patching aligns them position by position"
        )
    return int(clean_ids.shape[0])


def metric_rows(
    lm: LanguageModel,
    input_ids: torch.Tensor,
    metric: Metric,
    prompts: torch.Tensor,
    edits: Mapping[str, Edit | Sequence[Edit]] | None = None,
) -> torch.Tensor:
    """The metric [rows] of ``input_ids`` [rows, seq] (row r is prompt ``prompts[r]``) under ``edits``."""
    keep = {"logits_to_keep": 1} if metric.position == -1 else {}
    with torch.inference_mode():
        if edits:
            with intervening(lm, edits):
                logits = lm.model(input_ids=input_ids.to(lm.device), **keep).logits
        else:
            logits = lm.model(input_ids=input_ids.to(lm.device), **keep).logits
    return metric(logits, prompts.to(logits.device)).double().cpu()


def masked_variants(
    lm: LanguageModel,
    base_ids: torch.Tensor,
    groups: Sequence[Sequence[Component]],
    edit_for: Callable[[str, torch.Tensor], Edit],
    metric: Metric,
    batch_size: int = 64,
    on_variants: Callable[[int], None] | None = None,
    skip_unedited_layers: bool = True,
) -> torch.Tensor:
    """Mean metric [n_groups] over the prompts ``base_ids`` [n, seq] with each group's components edited.

    ``edit_for(hook, mask)`` builds the edit of one hook for a batch, ``mask`` [rows, seq, width] saying
    which entries each row edits. Groups are batched ``batch_size // n`` at a time, ordered by their
    first edited layer; with ``skip_unedited_layers`` the layers before a batch's first edit are not run
    again: their output is the base run's, taken from one cached forward pass.
    """
    n, seq = base_ids.shape
    widths = hook_widths(lm, {c.hook for group in groups for c in group})
    first_layer = [min((c.layer for c in group), default=lm.n_layers) for group in groups]
    order = sorted(range(len(groups)), key=lambda g: first_layer[g])
    skippable = sorted({first_layer[g] for g in order if 0 < first_layer[g] < lm.n_layers})
    starts = [f"layers.{layer}.resid_pre" for layer in skippable] if skip_unedited_layers else []
    cached = lm.capture(base_ids, starts) if starts else {}
    per_batch = max(1, batch_size // n)
    values = torch.zeros(len(groups), dtype=torch.float64)
    for start in range(0, len(order), per_batch):
        chunk = order[start : start + per_batch]
        masks = {
            hook: torch.zeros(len(chunk) * n, seq, width, dtype=torch.bool) for hook, width in widths.items()
        }
        for g, group in enumerate(chunk):
            for component in groups[group]:
                masks[component.hook][g * n : (g + 1) * n] |= component.mask(widths[component.hook], seq)
        edits: dict[str, list[Edit]] = {
            hook: [edit_for(hook, mask)] for hook, mask in masks.items() if bool(mask.any())
        }
        skip = min(first_layer[g] for g in chunk)
        entry = f"layers.{skip}.resid_pre"
        with ExitStack() as stack:
            if entry in cached:
                stack.enter_context(skipping_layers(lm.model, skip))
                edits[entry] = [Patch(cached[entry].repeat(len(chunk), 1, 1)), *edits.get(entry, [])]
            prompts = torch.arange(n).repeat(len(chunk))
            rows = metric_rows(lm, base_ids.repeat(len(chunk), 1), metric, prompts, edits)
        values[chunk] = rows.reshape(len(chunk), n).mean(1)
        if on_variants is not None:
            on_variants(len(chunk))
    return values


def baselines(
    lm: LanguageModel, clean_ids: torch.Tensor, corrupt_ids: torch.Tensor, metric: Metric
) -> tuple[float, float]:
    """Mean metric of the clean and of the corrupted prompts."""
    prompts = torch.arange(clean_ids.shape[0])
    clean = metric_rows(lm, clean_ids, metric, prompts).mean()
    corrupt = metric_rows(lm, corrupt_ids, metric, prompts).mean()
    return float(clean), float(corrupt)


def activation_patching(
    lm: LanguageModel,
    clean_ids: torch.Tensor,
    corrupt_ids: torch.Tensor,
    components: Sequence[Component],
    metric: Metric,
    *,
    direction: Direction = "denoise",
    batch_size: int = 64,
    on_variants: Callable[[int], None] | None = None,
) -> PatchingResult:
    """Patch each of ``components`` alone between ``clean_ids`` and ``corrupt_ids`` [n, seq] (aligned
    prompts) and measure ``metric``; ``batch_size`` rows per forward pass."""
    check_pair(clean_ids, corrupt_ids)
    if direction not in ("denoise", "noise"):
        raise InterventionError(f"unknown direction {direction!r}; accepted: denoise, noise")
    if not components:
        raise InterventionError("no components to patch")
    base, source = (corrupt_ids, clean_ids) if direction == "denoise" else (clean_ids, corrupt_ids)
    hooks = sorted({c.hook for c in components}, key=list(lm.hook_points).index)
    cache = lm.capture(source, hooks, stop_early=True)

    def patch(hook: str, mask: torch.Tensor) -> Edit:
        return Patch(cache[hook].repeat(mask.shape[0] // clean_ids.shape[0], 1, 1), mask=mask)

    patched = masked_variants(lm, base, [[c] for c in components], patch, metric, batch_size, on_variants)
    clean, corrupt = baselines(lm, clean_ids, corrupt_ids, metric)
    return PatchingResult(list(components), patched, clean, corrupt, direction, "exact")
