"""JumpReLU's straight-through pseudo-derivatives and L0 penalty, against hand-computed values."""

import pytest
import torch

from featurelens.dictionaries import DictionaryError, JumpReLUDictionary
from featurelens.dictionaries.jumprelu import jumprelu, step


def rows_around_threshold() -> tuple[torch.Tensor, torch.Tensor]:
    """One latent with threshold 2; rows below, just below, just above and well above it."""
    pre = torch.tensor([[1.0], [1.97], [2.04], [3.0]], requires_grad=True)
    threshold = torch.tensor([2.0], requires_grad=True)
    return pre, threshold


def test_jumprelu_passes_codes_above_threshold_and_kernel_gradient_to_it() -> None:
    pre, threshold = rows_around_threshold()
    codes = jumprelu(pre, threshold, 0.1)
    assert codes.flatten().tolist() == pytest.approx([0.0, 0.0, 2.04, 3.0])
    codes.sum().backward()
    assert pre.grad is not None and threshold.grad is not None
    assert pre.grad.flatten().tolist() == [0.0, 0.0, 1.0, 1.0]  # as through a ReLU above the threshold
    # -theta / bandwidth for each row within bandwidth / 2 of theta (rows 2 and 3): -2 / 0.1 * 2
    assert float(threshold.grad) == pytest.approx(-40.0)


def test_step_counts_active_rows_and_moves_only_the_threshold() -> None:
    pre, threshold = rows_around_threshold()
    active = step(pre, threshold, 0.1)
    assert active.flatten().tolist() == [0.0, 0.0, 1.0, 1.0]
    active.sum().backward()
    assert pre.grad is None or not pre.grad.any()
    assert float(threshold.grad) == pytest.approx(-20.0)  # -1 / bandwidth per row in the window


def test_training_penalty_is_coefficient_times_mean_l0_per_output_dimension() -> None:
    d = JumpReLUDictionary(8, 32, sparsity_coefficient=0.5)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)) * 3
    out = d.training_forward(x, x)
    codes = d.encode(x)
    l0 = (codes != 0).sum(1).float().mean()
    assert 0 < float(l0) < 32
    assert float(out.l0) == pytest.approx(float(l0))
    assert float(out.extra_loss.detach()) == pytest.approx(0.5 * float(l0) / 8)
    assert torch.allclose(out.y_hat, d(x), atol=1e-5)


def test_bad_hyper_parameters_are_refused() -> None:
    with pytest.raises(DictionaryError, match="bandwidth"):
        JumpReLUDictionary(8, 32, bandwidth=0.0)
    with pytest.raises(DictionaryError, match="sparsity_coefficient"):
        JumpReLUDictionary(8, 32, sparsity_coefficient=-1.0)
