"""Reconstruction and sparsity metrics: pure functions on tensors, shared by training and evaluation."""

from __future__ import annotations

import torch


def fraction_variance_unexplained(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over rows of x, x_hat [n, d]: a scalar (0 = perfect)."""
    residual = (x - x_hat).square().sum()
    total = (x - x.mean(dim=0)).square().sum()
    return residual / total


def l0(codes: torch.Tensor) -> torch.Tensor:
    """Mean number of non-zero latents per row of codes [n, d_latent]: a scalar."""
    return (codes != 0).sum(dim=1).float().mean()


def dead_fraction(fire_counts: torch.Tensor) -> torch.Tensor:
    """Fraction of latents that never fired, from per-latent activation counts [d_latent]: a scalar."""
    return (fire_counts == 0).float().mean()
