"""Exact activation patching, batched over components: many patched variants in one forward batch.

Denoising (the default) runs the *corrupted* prompts with one component's activations taken from the
*clean* run and asks how much of the clean metric comes back; noising runs the clean prompts with one
component corrupted and asks how much is lost. Both are reported raw and normalised:
``(patched - corrupt) / (clean - corrupt)`` for denoising and ``(clean - patched) / (clean - corrupt)``
for noising, so 1 means "this component alone carries the whole effect" either way.

Every variant is a row of one batch: row ``c * n + i`` is prompt ``i`` with component ``c`` patched, and
each hook's :class:`Patch` edit carries a per-row mask, so a batch of ``batch_size`` rows patches
``batch_size // n`` components at once (tested equal to patching them one at a time).

Two exact shortcuts keep sweeps over positions cheap. A variant whose first edit is at layer L and
position p cannot change anything before either (the model is causal), so its batch runs only layers
L.. (their input taken from one cached base pass) and only positions p.. (the earlier positions' keys and
values taken from the base run's KV cache). And a patch that would write the numbers already there (the
clean and corrupted prompts agree up to that position) is not run at all: its metric is the base run's.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from featurelens.dictionaries.base import Dictionary
from featurelens.intervene.components import Component, Metric, hook_widths
from featurelens.intervene.context import intervening, model_inputs
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
    past: DynamicCache | None = None,
) -> torch.Tensor:
    """The metric [rows] of ``input_ids`` [rows, seq] (row r is prompt ``prompts[r]``) under ``edits``;
    with ``past`` the ids continue the prompts whose keys and values it holds."""
    keep: dict[str, object] = {"logits_to_keep": 1} if metric.position == -1 else {}
    if past is not None:
        keep |= {cache_keyword(lm): past, "use_cache": True}
    with torch.inference_mode(), ExitStack() as stack:
        if edits:
            stack.enter_context(intervening(lm, edits))
        logits = lm.model(input_ids=input_ids.to(lm.device), **keep).logits
    return metric(logits, prompts.to(logits.device)).double().cpu()


def cache_keyword(lm: LanguageModel) -> str:
    """The forward argument that takes a KV cache: ``cache`` (transformers >= 5.24) or ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(lm.model.forward).parameters else "past_key_values"


KeysValues = list[tuple[torch.Tensor, torch.Tensor]]


def prefix_cache(
    lm: LanguageModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> KeysValues:
    """Keys and values [n, kv_heads, seq, head_dim] of every layer for ``input_ids`` [n, seq], or none
    where the model's cache is not one plain key/value pair per layer (sliding windows, recurrent
    layers): such models recompute every position."""
    with torch.inference_mode():
        output = lm.model(**model_inputs(lm, input_ids, attention_mask), use_cache=True, logits_to_keep=1)
    cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
    layers = getattr(cache, "layers", None)
    if type(cache) is not DynamicCache or not layers or any(type(x) is not DynamicLayer for x in layers):
        return []
    return [(layer.keys, layer.values) for layer in layers]


def repeated_cache(prefix: KeysValues, length: int, times: int) -> DynamicCache:
    """A cache of the first ``length`` positions of ``prefix``, its rows repeated ``times`` (row
    ``t * n + i`` holds prompt i)."""
    return DynamicCache(
        [
            (k[:, :, :length].repeat(times, 1, 1, 1), v[:, :, :length].repeat(times, 1, 1, 1))
            for k, v in prefix
        ]
    )


def _first_position(group: Sequence[Component], seq: int) -> int:
    """The earliest position a group edits (0 when one of its components covers every position)."""
    return min((0 if c.position is None else c.position % seq for c in group), default=0)


def masked_variants(
    lm: LanguageModel,
    base_ids: torch.Tensor,
    groups: Sequence[Sequence[Component]],
    edit_for: Callable[[str, torch.Tensor, Sequence[int]], Edit],
    metric: Metric,
    batch_size: int = 64,
    on_variants: Callable[[int], None] | None = None,
    skip_unedited_layers: bool = True,
) -> torch.Tensor:
    """Mean metric [n_groups] over the prompts ``base_ids`` [n, seq] with each group's components edited.

    ``edit_for(hook, mask, chunk)`` builds the edit of one hook for a batch of the groups ``chunk`` (row
    block g is group ``chunk[g]``), ``mask`` [rows, seq, width] saying which entries each row edits.
    Groups are batched ``batch_size // n`` at a time, ordered by their first edited layer; with
    ``skip_unedited_layers`` the layers before a batch's first edit are not run again (their output is
    the base run's, from one cached forward pass), nor the positions before its first edited position
    (their keys and values come from the base run's KV cache).
    """
    n, seq = base_ids.shape
    widths = hook_widths(lm, {c.hook for group in groups for c in group})
    first_layer = [min((c.layer for c in group), default=lm.n_layers) for group in groups]
    first_position = [_first_position(group, seq) for group in groups]
    order = sorted(range(len(groups)), key=lambda g: (first_layer[g], -first_position[g]))
    skippable = sorted({first_layer[g] for g in order if 0 < first_layer[g] < lm.n_layers})
    starts = [f"layers.{layer}.resid_pre" for layer in skippable] if skip_unedited_layers else []
    cached = lm.capture(base_ids, starts) if starts else {}
    prefix = (
        prefix_cache(lm, base_ids)
        if skip_unedited_layers and metric.position == -1 and max(first_position, default=0) > 0
        else []
    )
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
            hook: [edit_for(hook, mask, chunk)] for hook, mask in masks.items() if bool(mask.any())
        }
        skip = min(first_layer[g] for g in chunk)
        start_at = min(first_position[g] for g in chunk) if prefix else 0
        entry = f"layers.{skip}.resid_pre"
        past = repeated_cache(prefix, start_at, len(chunk)) if start_at > 0 else None
        with ExitStack() as stack:
            if entry in cached:
                stack.enter_context(skipping_layers(lm.model, skip))
                edits[entry] = [Patch(cached[entry].repeat(len(chunk), 1, 1)), *edits.get(entry, [])]
            prompts = torch.arange(n).repeat(len(chunk))
            ids = base_ids[:, start_at:].repeat(len(chunk), 1)
            rows = metric_rows(lm, ids, metric, prompts, edits, past)
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


def _feature_changes(
    dictionary: Dictionary, components: Sequence[Component], source: torch.Tensor, base: torch.Tensor
) -> dict[Component, torch.Tensor]:
    """What patching each feature (or the error term) of ``dictionary`` from ``source`` into ``base``
    [n, seq, d] adds to the base activations: ``decode(c with c_j from source) - decode(c)``, and for
    the error ``Δ(x - decode(c))``; each [n, seq, d]."""
    flat_source, flat_base = (t.reshape(-1, t.shape[-1]).float() for t in (source, base))
    with torch.no_grad():
        codes_source, codes_base = dictionary.encode(flat_source), dictionary.encode(flat_base)
        decoded_base = dictionary.decode(codes_base)
        changes = {}
        for component in components:
            if component.kind == "error":
                change = flat_source - dictionary.decode(codes_source) - (flat_base - decoded_base)
            else:
                edited = codes_base.clone()
                edited[:, component.index] = codes_source[:, component.index]
                change = dictionary.decode(edited) - decoded_base
            changes[component] = change.reshape(base.shape).to(base.dtype)
    return changes


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
    dictionaries: Sequence[Dictionary] = (),
) -> PatchingResult:
    """Patch each of ``components`` alone between ``clean_ids`` and ``corrupt_ids`` [n, seq] (aligned
    prompts) and measure ``metric``; ``batch_size`` rows per forward pass. Feature and error components
    need their SAE in ``dictionaries``: patching feature j moves only its code to the source run's
    (``decode`` of the edited codes), the error term moves only what the SAE leaves out."""
    n = check_pair(clean_ids, corrupt_ids)
    if direction not in ("denoise", "noise"):
        raise InterventionError(f"unknown direction {direction!r}; accepted: denoise, noise")
    if not components:
        raise InterventionError("no components to patch")
    by_hook = {d.hook_in: d for d in dictionaries}
    missing = sorted({c.hook for c in components if c.kind in ("feature", "error")} - set(by_hook))
    if missing:
        raise InterventionError(f"feature components at {', '.join(missing)} need their dictionary")
    base, source = (corrupt_ids, clean_ids) if direction == "denoise" else (clean_ids, corrupt_ids)
    hooks = sorted({c.hook for c in components}, key=list(lm.hook_points).index)
    cache = lm.capture(source, hooks, stop_early=True)
    base_cache = lm.capture(base, hooks, stop_early=True)
    added: dict[Component, torch.Tensor] = {}
    for hook, dictionary in by_hook.items():
        features = [c for c in components if c.kind in ("feature", "error") and c.hook == hook]
        if features:
            added |= _feature_changes(dictionary, features, cache[hook], base_cache[hook])
    seq = base.shape[1]

    def changes(c: Component) -> bool:
        if c in added:
            return bool(added[c].abs().max() > 0)
        mask = c.mask(cache[c.hook].shape[-1], seq)
        return not torch.equal(cache[c.hook][:, mask], base_cache[c.hook][:, mask])

    changed = [changes(c) for c in components]
    run = [c for c, change in zip(components, changed, strict=True) if change]

    def patch(hook: str, mask: torch.Tensor, chunk: Sequence[int]) -> Edit:
        source = cache[hook].repeat(mask.shape[0] // n, 1, 1)
        for g, group in enumerate(chunk):
            if run[group] in added and run[group].hook == hook:  # the base run plus one feature's change
                source[g * n : (g + 1) * n] = base_cache[hook] + added[run[group]]
        return Patch(source, mask=mask)

    clean, corrupt = baselines(lm, clean_ids, corrupt_ids, metric)
    patched = torch.full(
        (len(components),), corrupt if direction == "denoise" else clean, dtype=torch.float64
    )
    if on_variants is not None and len(run) < len(components):
        on_variants(len(components) - len(run))  # patches that change nothing: the base run's metric
    if run:
        values = masked_variants(lm, base, [[c] for c in run], patch, metric, batch_size, on_variants)
        patched[torch.tensor(changed)] = values
    return PatchingResult(list(components), patched, clean, corrupt, direction, "exact")
