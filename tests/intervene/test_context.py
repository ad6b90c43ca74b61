"""The intervention API: known answers for each edit, positions that mean the same under padding and a
KV cache, no-op edits that are bit-identical, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import featurelens as fl
from featurelens.dictionaries import TopKDictionary
from featurelens.dictionaries.identity import IdentityDictionary
from featurelens.errors import HookError
from featurelens.intervene import (
    Add,
    FeatureEdit,
    InterventionError,
    Mean,
    Patch,
    Positions,
    Resample,
    Zero,
    channels,
    generate_with_edits,
    intervening,
    run_with_edits,
)
from tests.conftest import build_tiny_model


@pytest.fixture(scope="module")
def lm() -> fl.LanguageModel:
    return fl.LanguageModel(build_tiny_model("llama"), None, spec="tiny-llama")


def ids(batch: int = 2, seq: int = 9, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 96, (batch, seq), generator=torch.Generator().manual_seed(seed))


def plain_logits(lm: fl.LanguageModel, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return lm.model(input_ids=input_ids).logits


def test_edits_that_change_nothing_leave_logits_bit_identical(lm: fl.LanguageModel) -> None:
    x = ids()
    clean = plain_logits(lm, x)
    torch.manual_seed(0)
    sae = TopKDictionary(32, 128, k=8, hook_in="layers.1.resid_post")
    no_ops = {
        "layers.0.mlp_neurons": Zero(mask=channels(64, [])),
        "layers.1.resid_post": [Add(torch.randn(32), strength=0.0), FeatureEdit(sae, scale={3: 1.0, 9: 1.0})],
        "layers.2.attn_heads": Patch(lm.capture(x, ["layers.2.attn_heads"])["layers.2.attn_heads"]),
    }
    assert torch.equal(run_with_edits(lm, x, no_ops), clean)
    assert torch.equal(run_with_edits(lm, x, {"layers.1.resid_post": Zero()}, positions=[]), clean)


def test_zero_ablating_every_neuron_removes_the_mlp(lm: fl.LanguageModel) -> None:
    x = ids()
    names = ["layers.1.resid_mid", "layers.1.mlp_out", "layers.1.resid_post"]
    with intervening(lm, {"layers.1.mlp_neurons": Zero()}):
        seen = lm.capture(x, names)
    assert torch.count_nonzero(seen["layers.1.mlp_out"]) == 0  # llama's down projection has no bias
    torch.testing.assert_close(seen["layers.1.resid_post"], seen["layers.1.resid_mid"])


def test_patching_the_whole_stream_gives_the_source_run(lm: fl.LanguageModel) -> None:
    a, b = ids(seed=1), ids(seed=2)
    source = lm.capture(b, ["layers.0.resid_pre"])["layers.0.resid_pre"]
    patched = run_with_edits(lm, a, {"layers.0.resid_pre": Patch(source)})
    torch.testing.assert_close(patched, plain_logits(lm, b), atol=1e-5, rtol=1e-5)
    # one position only: earlier positions cannot see it (causal), later ones change
    one = run_with_edits(lm, a, {"layers.0.resid_pre": Patch(source)}, positions=[4])
    clean = plain_logits(lm, a)
    assert torch.equal(one[:, :4], clean[:, :4]) and not torch.allclose(one[:, 4:], clean[:, 4:])


def test_feature_edits_on_neurons_equal_direct_edits(lm: fl.LanguageModel) -> None:
    x = ids()
    neurons = IdentityDictionary(64, "layers.1.mlp_neurons")
    zeroed = run_with_edits(lm, x, {"layers.1.mlp_neurons": Zero(mask=channels(64, [5, 11]))})
    clamped = run_with_edits(lm, x, {"layers.1.mlp_neurons": FeatureEdit(neurons, clamp={5: 0.0, 11: 0.0})})
    torch.testing.assert_close(clamped, zeroed, atol=1e-6, rtol=1e-6)
    with intervening(lm, {"layers.1.mlp_neurons": FeatureEdit(neurons, scale={5: 3.0})}):
        doubled = lm.capture(x, ["layers.1.mlp_neurons"])["layers.1.mlp_neurons"]
    clean = lm.capture(x, ["layers.1.mlp_neurons"])["layers.1.mlp_neurons"]
    torch.testing.assert_close(doubled[..., 5], 3 * clean[..., 5])
    torch.testing.assert_close(doubled[..., :5], clean[..., :5])


def test_feature_clamp_keeps_the_reconstruction_error(lm: fl.LanguageModel) -> None:
    x = ids()
    torch.manual_seed(0)
    sae = TopKDictionary(32, 128, k=8, hook_in="layers.1.resid_post")
    with intervening(lm, {"layers.1.resid_post": FeatureEdit(sae, clamp={7: 4.0})}):
        edited = lm.capture(x, ["layers.1.resid_post"])["layers.1.resid_post"]
    clean = lm.capture(x, ["layers.1.resid_post"])["layers.1.resid_post"]
    codes = sae.encode(clean.reshape(-1, 32))
    expected = clean.reshape(-1, 32) + (4.0 - codes[:, 7:8]) * sae.W_dec[7].detach()
    torch.testing.assert_close(edited.reshape(-1, 32), expected, atol=1e-5, rtol=1e-5)


def test_mean_and_resample_ablation(lm: fl.LanguageModel) -> None:
    x, other = ids(seed=3), ids(batch=5, seed=4)
    pool = lm.capture(other, ["layers.1.attn_out"])["layers.1.attn_out"]
    mean = Mean.of(pool)
    torch.testing.assert_close(mean.mean, pool.reshape(-1, 32).double().mean(0).float())
    with intervening(lm, {"layers.1.attn_out": mean}):
        seen = lm.capture(x, ["layers.1.attn_out"])["layers.1.attn_out"]
    torch.testing.assert_close(seen, mean.mean.expand_as(seen))
    per_position = Mean.of(pool, per_position=True)
    with intervening(lm, {"layers.1.attn_out": per_position}):
        seen = lm.capture(x, ["layers.1.attn_out"])["layers.1.attn_out"]
    torch.testing.assert_close(seen, per_position.mean.expand_as(seen))
    # resample: each row takes one random other input's activations at the same positions, seeded
    with intervening(lm, {"layers.1.attn_out": Resample(pool, seed=7)}):
        first = lm.capture(x, ["layers.1.attn_out"])["layers.1.attn_out"]
    with intervening(lm, {"layers.1.attn_out": Resample(pool, seed=7)}):
        again = lm.capture(x, ["layers.1.attn_out"])["layers.1.attn_out"]
    assert torch.equal(first, again)
    for row in first:
        assert any(torch.equal(row, candidate) for candidate in pool)


def test_mean_from_a_store_leaves_outliers_out(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = fl.CaptureConfig(
        out=str(tmp_path / "acts"), model=str(tiny_model_dir), hooks=("layers.1.resid_post",), n_tokens=640
    )
    fl.run_capture(config)
    store = fl.ActivationStore.open(config.out)
    data = np.asarray(store.activations("layers.1.resid_post")[np.arange(store.n_tokens)], dtype=np.float64)
    keep = np.setdiff1d(np.arange(store.n_tokens), store.outlier_rows("layers.1.resid_post"))
    mean = Mean.from_store(config.out, "layers.1.resid_post", batch_size=100)
    np.testing.assert_allclose(mean.mean.numpy(), data[keep].mean(0), rtol=1e-5, atol=1e-6)


def test_right_padded_rows_equal_unpadded_rows(lm: fl.LanguageModel) -> None:
    short, long = ids(1, 5, seed=5), ids(1, 9, seed=6)
    batch = torch.cat([torch.cat([short, torch.zeros(1, 4, dtype=torch.long)], 1), long])
    mask = torch.tensor([[1] * 5 + [0] * 4, [1] * 9])
    edits = {"layers.1.resid_post": Add(torch.ones(32), strength=3.0)}
    logits = run_with_edits(lm, batch, edits, positions=[1, -1], attention_mask=mask)
    alone = [run_with_edits(lm, row, edits, positions=[1, -1]) for row in (short, long)]
    torch.testing.assert_close(logits[0, :5], alone[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[1], alone[1][0], atol=1e-5, rtol=1e-5)


def test_left_padded_rows_equal_unpadded_rows(lm: fl.LanguageModel) -> None:
    short, long = ids(1, 5, seed=5), ids(1, 9, seed=6)
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])
    mask = torch.tensor([[0] * 4 + [1] * 5, [1] * 9])
    edits = {"layers.1.resid_post": Add(torch.ones(32), strength=3.0)}
    logits = run_with_edits(lm, batch, edits, positions=[1], attention_mask=mask)
    alone = run_with_edits(lm, short, edits, positions=[1])
    torch.testing.assert_close(logits[0, 4:], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions", ["all", "prompt", "generated", [2], Positions((1, -1), generated=True)])
def test_kv_cache_generation_equals_full_recomputation(lm: fl.LanguageModel, positions: object) -> None:
    x = ids(2, 6, seed=8)
    edits = {"layers.1.resid_post": Add(torch.randn(32, generator=torch.Generator().manual_seed(0)), 4.0)}
    cached = generate_with_edits(lm, x, 8, edits, positions)  # type: ignore[arg-type]
    recomputed = generate_with_edits(lm, x, 8, edits, positions, use_cache=False)  # type: ignore[arg-type]
    assert torch.equal(cached, recomputed)
    assert not torch.equal(cached, generate_with_edits(lm, x, 8))  # the edit does change the continuation


def test_generation_positions_are_per_row_under_left_padding(lm: fl.LanguageModel) -> None:
    short, long = ids(1, 4, seed=9), ids(1, 7, seed=10)
    batch = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1), long])
    mask = torch.tensor([[0] * 3 + [1] * 4, [1] * 7])
    edits = {"layers.0.resid_post": Add(torch.randn(32, generator=torch.Generator().manual_seed(1)), 5.0)}
    for positions in ([0, 2], "generated"):
        together = generate_with_edits(lm, batch, 6, edits, positions, attention_mask=mask)
        for row, alone_ids, pad in ((0, short, 3), (1, long, 0)):
            alone = generate_with_edits(lm, alone_ids, 6, edits, positions)
            assert torch.equal(together[row, pad:], alone[0]), (positions, row)


def test_bad_interventions_are_one_line_errors(lm: fl.LanguageModel) -> None:
    x = ids()
    with pytest.raises(HookError, match=r"unknown hook point 'layers\.9\.resid_post'"):
        run_with_edits(lm, x, {"layers.9.resid_post": Zero()})
    with pytest.raises(InterventionError, match="outside a prompt of 9 tokens"):
        run_with_edits(lm, x, {"layers.1.resid_post": Zero()}, positions=[9])
    with pytest.raises(InterventionError, match="width 31"):
        run_with_edits(lm, x, {"layers.1.resid_post": Add(torch.ones(31))})
    with pytest.raises(InterventionError, match=r"units 0\.\.63"):
        channels(64, [64])
    with pytest.raises(InterventionError, match="covers 3 positions"):
        run_with_edits(lm, x, {"layers.1.resid_post": Patch(torch.zeros(1, 3, 32))})
    with pytest.raises(InterventionError, match="unknown positions"):
        run_with_edits(lm, x, {"layers.1.resid_post": Zero()}, positions="middle")
    never = intervening(lm, {"layers.2.resid_post": Zero()})
    with pytest.raises(HookError, match=r"layers\.2\.resid_post never fired"), never:
        lm.capture(x, ["layers.0.resid_post"])  # stops after layer 0
