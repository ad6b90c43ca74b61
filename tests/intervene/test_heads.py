"""Per-head outputs on every tiny family, with sdpa attention: contributions sum to attn_out, and
ablating a head's slice equals removing its contribution."""

from __future__ import annotations

import pytest
import torch

import featurelens as fl
from featurelens.intervene import (
    InterventionError,
    Patch,
    Zero,
    attention_patterns,
    head_channels,
    head_contributions,
    head_layout,
    run_with_edits,
)
from tests.conftest import POST_NORM_FAMILIES, TINY_FAMILIES, build_tiny_model

CAUSAL_FAMILIES = sorted(set(TINY_FAMILIES) - POST_NORM_FAMILIES)


def ids(batch: int = 2, seq: int = 7) -> torch.Tensor:
    return torch.randint(3, 96, (batch, seq), generator=torch.Generator().manual_seed(0))


def test_head_contributions_sum_to_attn_out(tiny_lm: fl.LanguageModel) -> None:
    x = ids()
    for layer in range(tiny_lm.n_layers):
        seen = tiny_lm.capture(
            x, [f"layers.{layer}.attn_heads", f"layers.{layer}.attn_out"], stop_early=False
        )
        per_head = head_contributions(tiny_lm, layer, seen[f"layers.{layer}.attn_heads"])
        n_heads, _ = head_layout(tiny_lm, layer)
        assert per_head.shape == (*x.shape, n_heads, tiny_lm.d_model)
        bias = getattr(tiny_lm.hook_point(f"layers.{layer}.attn_heads").module, "bias", None)
        total = per_head.sum(2) + (0 if bias is None else bias.detach())
        torch.testing.assert_close(total, seen[f"layers.{layer}.attn_out"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_ablating_a_head_removes_exactly_its_contribution(family: str) -> None:
    lm = fl.LanguageModel(build_tiny_model(family), None)
    assert lm.model.config._attn_implementation == "sdpa"  # no eager attention needed
    x, layer, head = ids(), 1, 2
    z = lm.capture(x, [f"layers.{layer}.attn_heads"])[f"layers.{layer}.attn_heads"]
    attn_out = lm.capture(x, [f"layers.{layer}.attn_out"])[f"layers.{layer}.attn_out"]
    without = attn_out - head_contributions(lm, layer, z)[:, :, head]
    ablated = run_with_edits(
        lm, x, {f"layers.{layer}.attn_heads": Zero(mask=head_channels(lm, layer, [head]))}
    )
    expected = run_with_edits(lm, x, {f"layers.{layer}.attn_out": Patch(without)})
    torch.testing.assert_close(ablated, expected, atol=1e-5, rtol=1e-5)
    clean = run_with_edits(lm, x, {f"layers.{layer}.attn_heads": Zero(mask=head_channels(lm, layer, []))})
    assert not torch.allclose(ablated, clean)


def test_grouped_query_heads_are_query_heads() -> None:
    lm = fl.LanguageModel(build_tiny_model("llama"), None)  # 4 query heads share 2 key/value heads
    assert head_layout(lm, 0) == (4, 8)
    mask = head_channels(lm, 0, [1, 3])
    assert mask.nonzero().flatten().tolist() == [*range(8, 16), *range(24, 32)]
    with pytest.raises(InterventionError, match=r"heads 0\.\.3"):
        head_channels(lm, 0, [4])


def test_patterns_only_where_the_implementation_gives_them() -> None:
    lm = fl.LanguageModel(build_tiny_model("llama"), None)
    lm.model.config._attn_implementation = "sdpa"
    with pytest.raises(InterventionError, match="load it with attn_implementation='eager'"):
        attention_patterns(lm, ids())
    lm.model.config._attn_implementation = "eager"
    patterns = attention_patterns(lm, ids())
    assert len(patterns) == lm.n_layers and patterns[0].shape == (2, 4, 7, 7)
    torch.testing.assert_close(patterns[0].sum(-1), torch.ones(2, 4, 7))
    assert torch.count_nonzero(torch.triu(patterns[0], diagonal=1)) == 0  # causal
