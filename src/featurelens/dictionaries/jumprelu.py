"""JumpReLU SAE (Rajamanoharan et al. 2024): codes = pre where pre exceeds a learned per-latent threshold.

The threshold theta is stored as ``log_threshold`` so it stays positive and rescales by an addition. The
step H(pre - theta) has no useful gradient, so training uses straight-through pseudo-derivatives with a
rectangle kernel of width ``bandwidth``: only rows whose pre-activation lies within ``bandwidth / 2`` of the
threshold tell it to move. The L0 penalty reaches only the thresholds; the reconstruction reaches the
encoder as through a ReLU and the thresholds through the same kernel.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from featurelens.dictionaries.base import Dictionary, DictionaryError, TrainingOutput
from featurelens.dictionaries.relu import dense_start_scale

DEFAULT_BANDWIDTH = 0.1  # kernel width, in the trainer's normalised space (pre-activations are O(1) there)
INITIAL_THRESHOLD_STDS = 2.0  # initial thresholds, in standard deviations of the initial pre-activations


def _window(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Rectangle kernel K((pre - theta) / bandwidth) / bandwidth, [n, d_latent]."""
    return ((pre - threshold).abs() < bandwidth / 2).to(pre.dtype) / bandwidth


class _JumpReLU(torch.autograd.Function):
    """pre * H(pre - theta); d/dpre = H(pre - theta), d/dtheta = -theta * K((pre - theta) / eps) / eps."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        pre, threshold = ctx.saved_tensors
        grad_pre = grad * (pre > threshold)
        grad_threshold = -(threshold * _window(pre, threshold, ctx.bandwidth) * grad).sum(0)
        return grad_pre, grad_threshold, None


class _Step(torch.autograd.Function):
    """H(pre - theta); d/dpre = 0, d/dtheta = -K((pre - theta) / eps) / eps."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        pre, threshold = ctx.saved_tensors
        return None, -(_window(pre, threshold, ctx.bandwidth) * grad).sum(0), None


def jumprelu(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """pre [n, d_latent] where pre > threshold [d_latent], else 0; threshold trainable via the kernel."""
    return _JumpReLU.apply(pre, threshold, bandwidth)


def step(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """1.0 where pre [n, d_latent] > threshold [d_latent], else 0; threshold trainable via the kernel."""
    return _Step.apply(pre, threshold, bandwidth)


class JumpReLUDictionary(Dictionary):
    """Codes = pre * H(pre - theta); penalty ``sparsity_coefficient`` * mean_rows(L0) / d_out.

    The penalty is divided by d_out like the trainer's reconstruction loss, so a latent pays for itself
    on a row when it removes more than ``sparsity_coefficient`` of the row's summed squared error (rows
    have squared norm ~d_out in the trainer's normalised space). ``sparsity_coefficient`` is the attribute
    a target-L0 controller steers during training. The start is a ReLU SAE's (:func:`dense_start_scale`)
    with thresholds at ``INITIAL_THRESHOLD_STDS`` standard deviations of the initial pre-activations.
    """

    arch = "jumprelu"
    sparsity_coefficient: float

    def __init__(
        self,
        d_in: int,
        d_latent: int,
        *,
        sparsity_coefficient: float = 1.0,
        bandwidth: float = DEFAULT_BANDWIDTH,
        **kwargs: Any,
    ) -> None:
        if sparsity_coefficient < 0:
            raise DictionaryError(f"sparsity_coefficient must be >= 0, got {sparsity_coefficient}")
        if not bandwidth > 0:
            raise DictionaryError(f"bandwidth must be > 0, got {bandwidth}")
        self.bandwidth = bandwidth
        super().__init__(d_in, d_latent, **kwargs)
        self.log_threshold = torch.nn.Parameter(torch.full((d_latent,), self._initial_log_threshold()))
        self.sparsity_coefficient = sparsity_coefficient

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        super().reset_parameters(generator)
        self.W_enc.mul_(dense_start_scale(self.d_in, self.d_latent))
        if hasattr(self, "log_threshold"):  # the base constructor resets before the threshold exists
            self.log_threshold.fill_(self._initial_log_threshold())

    def _initial_log_threshold(self) -> float:
        return math.log(INITIAL_THRESHOLD_STDS * dense_start_scale(self.d_in, self.d_latent))

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "sparsity_coefficient": self.sparsity_coefficient,
            "bandwidth": self.bandwidth,
        }

    @property
    def threshold(self) -> torch.Tensor:
        """Per-latent thresholds theta [d_latent] (in the space of the current scales)."""
        return self.log_threshold.exp()

    @torch.no_grad()
    def scale_thresholds_(self, factor: float) -> None:
        self.log_threshold.add_(math.log(factor))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return pre * (pre > self.threshold)

    def training_forward(self, x_scaled: torch.Tensor, y_scaled: torch.Tensor) -> TrainingOutput:
        pre = self.pre_activation(x_scaled)
        threshold = self.threshold
        codes = jumprelu(pre, threshold, self.bandwidth)
        y_hat = codes @ self.W_dec + self.b_dec + self.skip_term(x_scaled)
        active = codes.detach() != 0
        l0_penalty = step(pre, threshold, self.bandwidth).sum(1).mean() / self.d_out
        return TrainingOutput(
            y_hat, active.any(0), active.sum(1).float().mean(), self.sparsity_coefficient * l0_penalty
        )
