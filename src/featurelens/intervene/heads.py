"""Per-head attention outputs on any architecture and attention implementation (eager, sdpa, flash).

Attention's output projection reads every head's output concatenated, ``z`` [batch, seq, n_heads *
head_dim] (hook point ``layers.i.attn_heads``), and writes ``attn_out = z @ W_O.T + b_O``. Head h's slice
of ``z`` is its output, and ``z_h @ W_O[:, h-slice].T`` [batch, seq, d_model] its contribution to the
residual stream; the contributions plus the bias sum to ``attn_out``. Nothing needs the attention pattern,
so no eager attention and no extra memory per head inside the model. Patterns themselves are only
available from implementations that return them (eager): :func:`attention_patterns` says so otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from featurelens.intervene.edits import InterventionError, channels
from featurelens.models import LanguageModel
from featurelens.models.hook_points import text_config


def reading_weight(lm: LanguageModel, hook: str) -> torch.Tensor:
    """The weight [out, in] of the projection whose input is ``hook`` (``attn_heads``: ``W_O``;
    ``mlp_neurons``: the MLP's down projection)."""
    module = lm.hook_point(hook).module
    weight: torch.Tensor = module.weight.detach()  # type: ignore[operator]
    return weight if isinstance(module, nn.Linear) else weight.T  # GPT-2's Conv1D stores [in, out]


def output_weight(lm: LanguageModel, layer: int) -> torch.Tensor:
    """``W_O`` [d_model, n_heads * head_dim] of ``layer``'s attention output projection."""
    return reading_weight(lm, f"layers.{layer}.attn_heads")


def head_layout(lm: LanguageModel, layer: int) -> tuple[int, int]:
    """``(n_heads, head_dim)`` of ``layer``: query heads (grouped-query models share keys and values, but
    every query head writes its own slice)."""
    width = output_weight(lm, layer).shape[1]
    n_heads = int(text_config(lm.model).num_attention_heads)
    if width % n_heads:
        raise InterventionError(
            f"layer {layer}'s attention output reads {width} channels, not {n_heads} heads"
        )
    return n_heads, width // n_heads


def head_channels(lm: LanguageModel, layer: int, heads: Iterable[int]) -> torch.Tensor:
    """A bool mask [n_heads * head_dim] over ``layers.{layer}.attn_heads`` selecting ``heads``."""
    n_heads, head_dim = head_layout(lm, layer)
    heads = list(heads)
    bad = [h for h in heads if not 0 <= h < n_heads]
    if bad:
        raise InterventionError(f"head(s) {bad} out of range: layer {layer} has heads 0..{n_heads - 1}")
    return channels(n_heads * head_dim, [h * head_dim + i for h in heads for i in range(head_dim)])


def head_contributions(lm: LanguageModel, layer: int, z: torch.Tensor) -> torch.Tensor:
    """What each head adds to the residual stream: [batch, seq, n_heads, d_model] from ``z`` [batch, seq,
    n_heads * head_dim] captured at ``layers.{layer}.attn_heads`` (bias excluded)."""
    n_heads, head_dim = head_layout(lm, layer)
    weight = output_weight(lm, layer).to(z.device, z.dtype).reshape(-1, n_heads, head_dim)
    return torch.einsum("bshk,dhk->bshd", z.reshape(*z.shape[:2], n_heads, head_dim), weight)


def head_outputs(
    lm: LanguageModel, input_ids: torch.Tensor, layers: Sequence[int]
) -> dict[int, torch.Tensor]:
    """Per-head contributions [batch, seq, n_heads, d_model] of each of ``layers`` for ``input_ids``."""
    names = [f"layers.{layer}.attn_heads" for layer in layers]
    captured = lm.capture(input_ids, names)
    return {
        layer: head_contributions(lm, layer, captured[name])
        for layer, name in zip(layers, names, strict=True)
    }


def attention_patterns(lm: LanguageModel, input_ids: torch.Tensor) -> list[torch.Tensor]:
    """Attention patterns [batch, n_heads, seq, seq] of every layer, where the model's attention
    implementation returns them (eager); otherwise one line saying how to get them."""
    implementation = getattr(lm.model.config, "_attn_implementation", "eager")
    if implementation != "eager":
        raise InterventionError(
            f"this model runs {implementation!r} attention, which does not return attention patterns; "
            "load it with attn_implementation='eager' to see them (per-head outputs work either way)"
        )
    with torch.inference_mode():
        output = lm.model(input_ids=input_ids.to(lm.device), output_attentions=True)
    return [pattern.detach() for pattern in output.attentions]
