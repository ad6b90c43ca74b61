"""Attribution patching: a first-order estimate of every component's patching effect from one forward and
one backward pass, ``grad(metric) · (source activation - base activation)`` summed over the component.

Denoising takes the gradient on the corrupted run and the clean-minus-corrupted difference, so the
estimate of the patched metric is ``corrupt + attribution``; noising the reverse. The result is a
:class:`PatchingResult` like exact patching's, so the two rank side by side.

Only activations need gradients: parameters are frozen for the pass, and the gradient enters at the
embedding output, so the cost is one forward and one backward however many components are scored.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch

from featurelens.dictionaries.base import Dictionary
from featurelens.intervene.circuits import is_upstream
from featurelens.intervene.components import Component, Metric
from featurelens.intervene.edits import InterventionError
from featurelens.intervene.heads import reading_weight
from featurelens.intervene.patching import Direction, PatchingResult, check_pair, metric_rows
from featurelens.models import LanguageModel
from featurelens.models.tracing import recording, replacing


@contextmanager
def _frozen(lm: LanguageModel) -> Iterator[None]:
    flags = [(p, p.requires_grad) for p in lm.model.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


@contextmanager
def _metric_graph(
    lm: LanguageModel,
    input_ids: torch.Tensor,
    hooks: Sequence[str],
    metric: Metric,
    *,
    retain_grad: bool = False,
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """While open: the tensors [n, seq, width] at ``hooks`` and the metric per prompt [n] of one forward
    pass of ``input_ids`` [n, seq] whose graph starts at the embedding output (parameters frozen), ready
    for ``backward`` or ``autograd.grad``."""
    with ExitStack() as stack, _frozen(lm), torch.enable_grad():
        stack.enter_context(replacing(lm.hook_point("embed"), lambda x: x.detach().requires_grad_(True)))
        kept = stack.enter_context(recording([lm.hook_point(h) for h in hooks], retain_grad=retain_grad))
        keep_last = {"logits_to_keep": 1} if metric.position == -1 else {}
        logits = lm.model(input_ids=input_ids.to(lm.device), **keep_last).logits
        yield kept, metric(logits, torch.arange(input_ids.shape[0], device=logits.device))


def gradients(
    lm: LanguageModel, input_ids: torch.Tensor, hooks: Sequence[str], metric: Metric
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """Activations and gradients of the mean metric at ``hooks`` for ``input_ids`` [n, seq]: two dicts
    hook -> [n, seq, width], and the metric per prompt [n]."""
    with _metric_graph(lm, input_ids, hooks, metric, retain_grad=True) as (kept, values):
        values.mean().backward()
    grads = {}
    for hook in hooks:
        grad = kept[hook].grad
        grads[hook] = torch.zeros_like(kept[hook]) if grad is None else grad.detach()
    return {hook: x.detach() for hook, x in kept.items()}, grads, values.detach()


@torch.no_grad()
def _feature_scores(
    dictionary: Dictionary, grad: torch.Tensor, source: torch.Tensor, base: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """Per-feature scores [d_latent] and the error term's score for one SAE; inputs [n, seq, d]."""
    flat_grad, flat_source, flat_base = (t.reshape(-1, t.shape[-1]).float() for t in (grad, source, base))
    codes_source, codes_base = dictionary.encode(flat_source), dictionary.encode(flat_base)
    along = flat_grad @ dictionary.W_dec.T  # [rows, d_latent]: the gradient along each decoder row
    per_feature = (along * (codes_source - codes_base)).double().sum(0)
    source_error = flat_source - dictionary.decode(codes_source)
    error_change = source_error - (flat_base - dictionary.decode(codes_base))
    return per_feature, float((flat_grad * error_change).double().sum())


def attribution_patching(
    lm: LanguageModel,
    clean_ids: torch.Tensor,
    corrupt_ids: torch.Tensor,
    components: Sequence[Component],
    metric: Metric,
    *,
    direction: Direction = "denoise",
    dictionaries: Sequence[Dictionary] = (),
) -> PatchingResult:
    """Estimated patching effect of every one of ``components`` between aligned ``clean_ids`` and
    ``corrupt_ids`` [n, seq], from one forward and backward pass on the base run. Feature and error
    components need their SAE in ``dictionaries``: feature i scores ``grad · W_dec[i] x Δcode_i``, the
    error term ``grad · Δ(x - x_hat)``, so features plus error sum to the whole hook's score."""
    check_pair(clean_ids, corrupt_ids)
    by_hook = {d.hook_in: d for d in dictionaries}
    missing = sorted({c.hook for c in components if c.kind in ("feature", "error")} - set(by_hook))
    if missing:
        raise InterventionError(f"feature components at {', '.join(missing)} need their dictionary")
    base, source = (corrupt_ids, clean_ids) if direction == "denoise" else (clean_ids, corrupt_ids)
    hooks = sorted({c.hook for c in components}, key=list(lm.hook_points).index)
    activations, grads, base_values = gradients(lm, base, hooks, metric)
    with recording([lm.hook_point(h) for h in hooks]) as source_activations:
        source_value = float(metric_rows(lm, source, metric, torch.arange(source.shape[0])).mean())
    # the gradients are of the mean over prompts, so summing over prompts gives the mean effect
    scores = {
        hook: (grads[hook] * (source_activations[hook] - activations[hook])).sum(0).double() for hook in hooks
    }
    features = {
        hook: _feature_scores(by_hook[hook], grads[hook], source_activations[hook], activations[hook])
        for hook in {c.hook for c in components if c.kind in ("feature", "error")}
    }
    estimates = []
    for component in components:
        if component.kind in ("feature", "error"):
            per_feature, error = features[component.hook]
            estimates.append(error if component.kind == "error" else float(per_feature[component.index]))
            continue
        at = (
            scores[component.hook]
            if component.position is None
            else scores[component.hook][component.position]
        )
        estimates.append(float(at.sum() if component.units is None else at[..., list(component.units)].sum()))
    base_value = float(base_values.double().mean())
    clean, corrupt = (source_value, base_value) if direction == "denoise" else (base_value, source_value)
    patched = base_value + torch.tensor(estimates, dtype=torch.float64)
    return PatchingResult(list(components), patched, clean, corrupt, direction, "attribution")


def _input_hook(lm: LanguageModel, node: Component) -> str:
    """The residual stream a head or neuron reads: ``resid_mid`` for an MLP of a sequential block."""
    mid = f"layers.{node.layer}.resid_mid"
    return mid if node.kind == "neuron" and mid in lm.hook_points else f"layers.{node.layer}.resid_pre"


def edge_attribution(
    lm: LanguageModel,
    clean_ids: torch.Tensor,
    corrupt_ids: torch.Tensor,
    nodes: Sequence[Component],
    metric: Metric,
    *,
    direction: Direction = "denoise",
) -> list[tuple[Component, Component, float]]:
    """Edge attribution patching between ``nodes`` (heads and neurons): for each pair ``u → v`` with v
    downstream of u, ``Δ(what u writes to the residual stream) · ∂metric/∂(v's input, through v alone)``,
    summed over positions, averaged over the aligned prompts [n, seq] and divided by the clean-corrupted
    gap: the first-order share of the gap that flows along the direct path from u into v. One forward
    pass with gradients on the base run, one backward per receiving node, one forward of the source."""
    n = check_pair(clean_ids, corrupt_ids)
    unsupported = sorted({c.kind for c in nodes} - {"head", "neuron"})
    if unsupported:
        raise InterventionError(
            f"edge attribution runs between heads and neurons, not {', '.join(unsupported)}"
        )
    base, source = (corrupt_ids, clean_ids) if direction == "denoise" else (clean_ids, corrupt_ids)
    receivers = [v for v in nodes if any(is_upstream(lm, u, v) for u in nodes)]
    node_hooks = sorted({c.hook for c in nodes}, key=list(lm.hook_points).index)
    hooks = sorted(set(node_hooks) | {_input_hook(lm, v) for v in receivers}, key=list(lm.hook_points).index)
    seq = base.shape[1]
    with _metric_graph(lm, base, hooks, metric) as (kept, values):
        targets = sorted({v.hook for v in receivers}, key=list(lm.hook_points).index)
        grads = dict(
            zip(
                targets,
                torch.autograd.grad(values.mean(), [kept[h] for h in targets], retain_graph=True),
                strict=True,
            )
        )
        inputs_grad = {}
        for v in receivers:
            mask = v.mask(kept[v.hook].shape[-1], seq).to(grads[v.hook].device)
            (inputs_grad[v],) = torch.autograd.grad(
                kept[v.hook], kept[_input_hook(lm, v)], grad_outputs=grads[v.hook] * mask, retain_graph=True
            )
        base_activations = {h: kept[h].detach() for h in node_hooks}
    with recording([lm.hook_point(h) for h in node_hooks]) as source_activations:
        source_value = float(metric_rows(lm, source, metric, torch.arange(n)).mean())
    base_value = float(values.detach().double().mean())
    gap = source_value - base_value
    if gap == 0:
        raise InterventionError("clean and corrupted prompts give the same metric; nothing to attribute")
    edges = []
    for u in nodes:
        downstream = [v for v in receivers if is_upstream(lm, u, v)]
        if not downstream:
            continue
        mask = u.mask(base_activations[u.hook].shape[-1], seq).to(base_activations[u.hook].device)
        change = (source_activations[u.hook] - base_activations[u.hook]) * mask
        written = change @ reading_weight(lm, u.hook).to(change).T  # [n, seq, d_model]
        for v in downstream:
            share = float((written.double() * inputs_grad[v].double()).sum()) / gap
            edges.append((u, v, share))
    return edges
