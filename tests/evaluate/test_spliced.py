"""CE loss recovered and KL: exact reconstruction gives 1 and 0, zero ablation 0, float64 references."""

from __future__ import annotations

import pytest
import torch

import featurelens as fl
from featurelens.errors import HookError
from featurelens.evaluate import spliced_loss
from featurelens.evaluate.spliced import SplicedRun, kl_divergence, next_token_loss
from featurelens.models.hook_points import find_layers
from featurelens.models.tracing import run_with_replacement

from ..conftest import POST_NORM_FAMILIES, build_tiny_model

IDS = torch.tensor([[5, 17, 42, 8, 63, 21, 9, 30], [3, 3, 90, 14, 77, 2, 51, 6]])


@pytest.fixture(scope="module")
def lm() -> fl.LanguageModel:
    return fl.LanguageModel(build_tiny_model("llama"), None)


@pytest.mark.parametrize("hook", ["layers.1.resid_post", "layers.1.mlp_neurons", "layers.0.resid_mid"])
def test_exact_reconstruction_recovers_everything(lm: fl.LanguageModel, hook: str) -> None:
    result = spliced_loss(lm, hook, lambda x: x, IDS)
    assert result.spliced == pytest.approx(result.clean, abs=1e-6)
    assert result.kl_to_clean == pytest.approx(0.0, abs=1e-6)
    assert result.ce_loss_recovered == pytest.approx(1.0, abs=1e-4)
    assert abs(result.zero_ablated - result.clean) > 1e-5  # the point matters, so recovery is meaningful


def test_zero_reconstruction_recovers_nothing(lm: fl.LanguageModel) -> None:
    result = spliced_loss(lm, "layers.1.resid_post", torch.zeros_like, IDS)
    assert result.ce_loss_recovered == pytest.approx(0.0, abs=1e-6)
    assert result.kl_to_clean > 0


def test_a_noisy_reconstruction_lies_between(lm: fl.LanguageModel) -> None:
    generator = torch.Generator().manual_seed(0)
    noisy = spliced_loss(
        lm, "layers.1.resid_post", lambda x: x + 0.5 * torch.randn(x.shape, generator=generator), IDS
    )
    assert noisy.kl_to_clean > 0 and noisy.spliced != noisy.clean


def test_the_mask_keeps_unmasked_positions_clean(lm: fl.LanguageModel) -> None:
    mask = torch.zeros_like(IDS, dtype=torch.bool)
    result = spliced_loss(lm, "layers.1.resid_post", torch.zeros_like, IDS, splice_mask=mask)
    assert result.spliced == pytest.approx(result.clean, abs=1e-6) and result.kl_to_clean == pytest.approx(
        0, abs=1e-6
    )
    mask[:, -1] = True  # the last position predicts nothing and changes no earlier logit
    result = spliced_loss(lm, "layers.1.resid_post", torch.zeros_like, IDS, splice_mask=mask)
    assert result.spliced == pytest.approx(result.clean, abs=1e-6)


def test_losses_match_a_float64_reference() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 11, generator=generator)
    other = torch.randn(2, 5, 11, generator=generator)
    ids = torch.randint(0, 11, (2, 5), generator=generator)
    p = torch.softmax(logits.double(), -1)
    expected_ce = -torch.log(p[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1))
    expected_kl = (p * (torch.log(p) - torch.log_softmax(other.double(), -1))).sum(-1)
    torch.testing.assert_close(next_token_loss(logits, ids).double(), expected_ce, atol=1e-5, rtol=0)
    torch.testing.assert_close(kl_divergence(logits, other).double(), expected_kl, atol=1e-5, rtol=0)
    assert torch.all(kl_divergence(logits, logits).abs() < 1e-6)


def test_the_run_losses_equal_the_reference_functions_on_its_logits(lm: fl.LanguageModel) -> None:
    """The run takes each log-softmax once for both loss and KL; that must change no figure."""
    noise = torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(2))
    run = SplicedRun(lm, "layers.1.resid_post", IDS)
    result = run.loss(lambda x: x + noise.reshape(-1, 32))
    spliced = run.logits_with(lambda x: x + noise)
    zeroed = run.logits_with(torch.zeros_like)
    reference = torch.log_softmax(run.clean_logits.double(), -1)
    assert result.clean == pytest.approx(
        next_token_loss(run.clean_logits.double(), IDS).mean().item(), abs=1e-5
    )
    assert result.spliced == pytest.approx(next_token_loss(spliced.double(), IDS).mean().item(), abs=1e-5)
    assert result.zero_ablated == pytest.approx(next_token_loss(zeroed.double(), IDS).mean().item(), abs=1e-5)
    expected_kl = (reference.exp() * (reference - torch.log_softmax(spliced.double(), -1))).sum(-1).mean()
    assert result.kl_to_clean == pytest.approx(expected_kl.item(), abs=1e-5) and expected_kl > 1e-3


def test_unknown_hook_is_refused(lm: fl.LanguageModel) -> None:
    with pytest.raises(HookError, match="unknown hook point"):
        spliced_loss(lm, "layers.5.resid_post", lambda x: x, IDS)


@pytest.mark.parametrize("hook", ["layers.2.resid_post", "layers.1.mlp_out", "layers.1.resid_pre"])
def test_edited_passes_start_at_the_hooks_layer_and_equal_whole_ones(tiny_family: str, hook: str) -> None:
    if tiny_family in POST_NORM_FAMILIES:
        pytest.skip("an encoder has no next-token loss")
    lm = fl.LanguageModel(build_tiny_model(tiny_family), None)
    if hook not in lm.hook_points:
        pytest.skip(f"{tiny_family} has no {hook}")
    first = find_layers(lm.model)[1][0]
    calls: list[int] = []
    handle = first.register_forward_hook(lambda *_: calls.append(1))
    try:
        run = SplicedRun(lm, hook, IDS)
        generator = torch.Generator().manual_seed(2)
        noise = 0.3 * torch.randn(run.acts[hook].shape, generator=generator)
        edited = run.logits_with(lambda x: x + noise)
    finally:
        handle.remove()
    whole = run_with_replacement(lm.model, lm.hook_point(hook), lambda x: x + noise, IDS)
    torch.testing.assert_close(edited, whole, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(edited, run.clean_logits, atol=1e-3)  # the edit mattered
    assert len(calls) == 1  # layer 0 ran in the clean pass only
