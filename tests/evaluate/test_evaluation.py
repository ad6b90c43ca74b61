"""Evaluation metrics: streamed equals one-shot float64 references; exact dictionaries score perfectly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import featurelens as fl
from featurelens.dictionaries import DictionaryError
from featurelens.dictionaries.topk import TopKDictionary
from featurelens.evaluate import evaluate_in_model, reconstruction_metrics
from featurelens.evaluate.reconstruction import ReconstructionAccumulator

from ..conftest import build_tiny_model


def exact_dictionary(weight: torch.Tensor, hook_in: str, hook_out: str | None = None) -> TopKDictionary:
    """A TopK dictionary computing x @ weight [d_in, d_out] exactly: codes relu(x), relu(-x); k = d_in."""
    d_in, d_out = weight.shape
    dictionary = TopKDictionary(d_in, 2 * d_in, k=d_in, hook_in=hook_in, hook_out=hook_out, d_out=d_out)
    with torch.no_grad():
        eye = torch.eye(d_in)
        dictionary.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        dictionary.b_enc.zero_()
        dictionary.W_dec.copy_(torch.cat([weight, -weight]))
        dictionary.b_dec.zero_()
    return dictionary


def test_streamed_metrics_equal_one_shot_float64_references() -> None:
    generator = torch.Generator().manual_seed(0)
    y = torch.randn(300, 8, generator=generator) * 3 + 1
    y_hat = y + torch.randn(300, 8, generator=generator)
    codes = torch.zeros(300, 20)
    codes[:, 0] = 1.0  # dense: fires everywhere
    codes[::50, 1] = 2.0  # fires on 2% of rows
    codes[:150, 2] = 0.5  # fires on half the rows: dense
    accumulator = ReconstructionAccumulator(20)
    for part in range(0, 300, 64):
        accumulator.update(y[part : part + 64], y_hat[part : part + 64], codes[part : part + 64])
    metrics = accumulator.result()
    y64, hat64 = y.double(), y_hat.double()
    fvu = (y64 - hat64).square().sum() / (y64 - y64.mean(0)).square().sum()
    assert metrics.n_tokens == 300
    assert metrics.fvu == pytest.approx(float(fvu), rel=1e-9)
    assert metrics.cosine_similarity == pytest.approx(float(F.cosine_similarity(y64, hat64).mean()), rel=1e-9)
    assert metrics.l2_ratio == pytest.approx(float((hat64.norm(dim=1) / y64.norm(dim=1)).mean()), rel=1e-9)
    assert metrics.l0 == pytest.approx(1 + 6 / 300 + 0.5)
    assert metrics.dead_fraction == pytest.approx(17 / 20)
    assert metrics.dense_fraction == pytest.approx(2 / 20)


def test_an_exact_dictionary_has_zero_fvu_and_the_mean_has_one() -> None:
    x = torch.randn(500, 6, generator=torch.Generator().manual_seed(1))
    exact = exact_dictionary(torch.eye(6), "h")
    metrics = reconstruction_metrics(exact, [x[:200], x[200:]])
    assert metrics.fvu == pytest.approx(0.0, abs=1e-10)
    assert metrics.cosine_similarity == pytest.approx(1.0) and metrics.l2_ratio == pytest.approx(1.0)
    mean_only = exact_dictionary(torch.zeros(6, 6), "h")
    with torch.no_grad():
        mean_only.b_dec.copy_(x.mean(0))
    assert reconstruction_metrics(mean_only, [x]).fvu == pytest.approx(1.0, rel=1e-6)


@pytest.fixture(scope="module")
def lm() -> fl.LanguageModel:
    return fl.LanguageModel(build_tiny_model("llama"), None)


IDS = torch.randint(4, 90, (6, 16), generator=torch.Generator().manual_seed(2))


def test_an_exact_sae_in_the_model_recovers_all_the_loss(lm: fl.LanguageModel) -> None:
    d = lm.d_model
    result = evaluate_in_model(exact_dictionary(torch.eye(d), "layers.1.resid_post"), lm, IDS, batch_size=4)
    assert result.loss is not None
    assert result.loss.ce_loss_recovered == pytest.approx(1.0, abs=1e-4)
    assert result.loss.kl_to_clean == pytest.approx(0.0, abs=1e-6)
    assert result.reconstruction.fvu == pytest.approx(0.0, abs=1e-9)
    assert result.reconstruction.n_tokens == 6 * 15  # position 0 is left out, as in a store


def test_a_zero_dictionary_recovers_nothing(lm: fl.LanguageModel) -> None:
    d = lm.d_model
    result = evaluate_in_model(exact_dictionary(torch.zeros(d, d), "layers.1.resid_post"), lm, IDS)
    assert result.loss is not None and result.loss.ce_loss_recovered == pytest.approx(0.0, abs=1e-6)
    assert result.reconstruction.dead_fraction == 0.0  # codes fire; the decoder maps them to nothing


def test_an_exact_transcoder_of_the_down_projection_recovers_all_the_loss(lm: fl.LanguageModel) -> None:
    down = lm.model.model.layers[0].mlp.down_proj.weight.detach()  # [d_model, d_mlp]
    transcoder = exact_dictionary(down.T.contiguous(), "layers.0.mlp_neurons", "layers.0.mlp_out")
    result = evaluate_in_model(transcoder, lm, IDS)
    assert result.loss is not None
    assert result.loss.ce_loss_recovered == pytest.approx(1.0, abs=1e-4)
    assert result.reconstruction.fvu == pytest.approx(0.0, abs=1e-8)
    assert result.loss.zero_ablated != pytest.approx(result.loss.clean)


def test_a_dictionary_of_the_wrong_width_is_refused(lm: fl.LanguageModel) -> None:
    with pytest.raises(DictionaryError, match="expects width 5"):
        evaluate_in_model(exact_dictionary(torch.eye(5), "layers.1.resid_post"), lm, IDS)
