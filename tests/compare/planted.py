"""Planted test data shared by the measure tests: two representations of one latent, and rotated copies."""

from __future__ import annotations

import numpy as np


def shared_latent(
    rng: np.random.Generator, n: int, dx: int, dy: int, *, latent: int, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """x [n, dx] and y [n, dy]: random linear maps of one Gaussian latent [n, latent] plus noise."""
    z = rng.normal(size=(n, latent))
    x = z @ rng.normal(size=(latent, dx)) + noise * rng.normal(size=(n, dx))
    y = z @ rng.normal(size=(latent, dy)) + noise * rng.normal(size=(n, dy))
    return x, y


def rotate_and_scale(rng: np.random.Generator, x: np.ndarray, scale: float) -> np.ndarray:
    """x [n, d] rotated by a random orthogonal matrix and scaled by ``scale``."""
    return scale * x @ np.linalg.qr(rng.normal(size=(x.shape[1], x.shape[1])))[0]
