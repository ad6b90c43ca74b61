"""Matryoshka's nested-prefix loss against a direct computation, and its prefix validation."""

import pytest
import torch

from featurelens.dictionaries import DictionaryError, MatryoshkaDictionary
from featurelens.dictionaries.matryoshka import default_prefixes


def test_prefix_losses_match_a_direct_computation() -> None:
    d = MatryoshkaDictionary(8, 32, k=4, prefixes=[4, 16, 32])
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = d.training_forward(x, x)
        codes = d.batch_topk_codes(d.pre_activation(x))
        loss = [(x - codes[:, :p] @ d.W_dec[:p] - d.b_dec).square().sum(1).mean() / 8 for p in (4, 16)]
    assert float(out.extra_loss) == pytest.approx(float(sum(loss)), rel=1e-5)
    assert torch.allclose(out.y_hat, codes @ d.W_dec + d.b_dec, atol=1e-5)
    assert float(out.l0) == pytest.approx(4.0)


def test_default_prefixes_halve_down_from_d_latent() -> None:
    assert default_prefixes(256) == [16, 32, 64, 128, 256]
    assert default_prefixes(3) == [1, 3]
    assert MatryoshkaDictionary(8, 64, k=4).prefixes == [4, 8, 16, 32, 64]


@pytest.mark.parametrize("prefixes", [[], [0, 32], [16, 8, 32], [8, 16], [8, 16, 40]])
def test_bad_prefixes_are_refused(prefixes: list[int]) -> None:
    with pytest.raises(DictionaryError, match=r"prefixes must be .* d_latent=32"):
        MatryoshkaDictionary(8, 32, k=4, prefixes=prefixes)
