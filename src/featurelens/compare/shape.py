"""Procrustes and generalized shape metrics (Williams, Kunz, Kornblith, Linderman 2021, "Generalized Shape
Metrics on Neural Representations", NeurIPS; their library is netrep).

Each representation x [n, d] is centred (translation removed), scaled to unit Frobenius norm (isotropic
scale removed) and, for the shape metrics, partially whitened; two are then compared after the best
orthogonal alignment, which needs only the nuclear norm (sum of singular values) of their cross product:
max over orthogonal Q of ⟨X, Y Q⟩ = ‖Xᵀ Y‖_*. Both distances are metrics on representations modulo those
transformations: d(x, x) = 0, symmetric, and the triangle inequality holds.

Unequal widths dx ≠ dy: ‖Xᵀ Y‖_* is defined for any widths and equals the value after zero-padding the
narrower representation with zero columns to the wider width, so that is what every distance here
means for unequal widths (netrep pads silently; we say so). The triangle inequality holds across widths
because padding never changes the value.

Items: a prepared representation is stored in its own principal axes, x's centred values rotated to
U·s [n, rank], so a permutation costs an SVD of a [rank x, rank y] matrix (rank ≤ n), not [dx, dy].
"""

from __future__ import annotations

import math

import torch

from featurelens.compare.cca import principal_directions
from featurelens.compare.measure import Measure, check_pair, permute_rows
from featurelens.errors import CompareError


def _nuclear_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖aᵀ b‖_* for unit-Frobenius a [n, ra], b [n, rb]: the cosine of their angle after the best rotation.

    It lies in [0, 1] in exact arithmetic; rounding can overshoot 1 by ~1e-16 (e.g. identical inputs), which
    would make arccos NaN and 2 − 2·cos negative, so it is clipped.
    """
    return min(max(float(torch.linalg.svdvals(a.T @ b).sum()), 0.0), 1.0)


def procrustes_state(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """x [n, d] centred, scaled to unit Frobenius norm and rotated to its principal axes: [n, rank]."""
    u, s = principal_directions(x, name)
    return u * (s / torch.linalg.vector_norm(s))


def procrustes_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Orthogonal Procrustes distance of x [n, dx] and y [n, dy], in [0, √2].

    With X, Y centred and scaled to unit Frobenius norm: min over orthogonal Q of ‖X − Y Q‖_F
    = √(2 − 2‖Xᵀ Y‖_*). 0 exactly when y is a rotation/reflection, isotropic scaling and translation of x.
    Unequal widths: the narrower side is (equivalently) zero-padded to the wider width.
    """
    x, y = check_pair(x, y)
    return _procrustes_score(procrustes_state(x, "x"), procrustes_state(y, "y"))


def _procrustes_score(a: torch.Tensor, b: torch.Tensor) -> float:
    return math.sqrt(2.0 - 2.0 * _nuclear_cosine(a, b))


def orthogonal_procrustes(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The orthonormal map Q [dx, dy] for which (x − mean) Q best matches (y − mean) in Frobenius norm.

    Q = U Vᵀ from the SVD of x_cᵀ y_c (Schönemann 1966); scaling x or y does not change it. For dx = dy it
    is orthogonal; otherwise its rows (dx < dy) or columns (dx > dy) are orthonormal: the block of the
    orthogonal map between zero-padded representations that reaches y's real columns. Not unique when
    x_cᵀ y_c is rank-deficient.
    """
    x, y = check_pair(x, y)
    cross = (x - x.mean(dim=0, keepdim=True)).T @ (y - y.mean(dim=0, keepdim=True))
    u, _, vt = torch.linalg.svd(cross, full_matrices=False)
    return u @ vt


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise CompareError(
            f"alpha must be in [0, 1] (1: rotations only, 0: any invertible linear map), got {alpha}"
        )


def shape_state(x: torch.Tensor, alpha: float = 1.0, name: str = "x") -> torch.Tensor:
    """x [n, d] prepared for :func:`angular_shape_distance`: partially whitened, unit Frobenius norm, in its
    principal axes [n, rank].

    X̃ = Xc (α I + (1 − α) Σ)^(−1/2), Σ = XcᵀXc/n, after first scaling Xc so that tr Σ = 1. That scaling
    makes α weigh the identity against a covariance of fixed total size, so the distance ignores isotropic
    scale for every α (not just 0 and 1) and zero-padding leaves it unchanged. At α = 0 the null directions
    (dropped with the rank tolerance of :func:`~featurelens.compare.cca.principal_directions`) are left out
    of the inverse rather than inverted.
    """
    _check_alpha(alpha)
    u, s = principal_directions(x, name)
    variance = s**2 / (s**2).sum()  # eigenvalues of Σ after scaling to tr Σ = 1
    whitened = u * (s / torch.sqrt(alpha + (1.0 - alpha) * variance))
    return whitened / torch.linalg.vector_norm(whitened)


def _angular_score(a: torch.Tensor, b: torch.Tensor) -> float:
    return math.acos(_nuclear_cosine(a, b))


def angular_shape_distance(x: torch.Tensor, y: torch.Tensor, alpha: float = 1.0) -> float:
    """Angular shape distance of x [n, dx] and y [n, dy] (Williams et al. 2021), in [0, π/2].

    arccos(‖X̃ᵀỸ‖_* / (‖X̃‖_F ‖Ỹ‖_F)) for the partially whitened X̃, Ỹ of :func:`shape_state`. α = 1: angular
    Procrustes (0 under rotation, isotropic scale, translation); α = 0: full whitening, 0 under any invertible
    linear map (arccos of the sum of canonical correlations over √(rank x · rank y)), so like CCA it needs
    items well above units: at rank n − 1 on both sides it is 0 for any data. A metric for every α in
    [0, 1]. Unequal widths: the narrower side is (equivalently) zero-padded to the wider width.
    """
    x, y = check_pair(x, y)
    _check_alpha(alpha)
    return _angular_score(shape_state(x, alpha, "x"), shape_state(y, alpha, "y"))


def procrustes_measure() -> Measure:
    """The Procrustes distance as a :class:`Measure` (prepare: centred, unit-norm principal coordinates)."""
    return Measure(
        name="procrustes",
        kind="distance",
        metric=True,
        description="orthogonal Procrustes distance after centring and unit Frobenius scaling: distance in "
        "[0, sqrt 2], 0 when one representation is a rotation, scaling and translation of the other; "
        "a metric (unequal widths: the narrower one zero-padded)",
        prepare=procrustes_state,
        permute=permute_rows,
        score=_procrustes_score,
        options=(),
    )


def shape_measure(alpha: float = 1.0) -> Measure:
    """The angular shape metric with partial whitening ``alpha`` as a :class:`Measure`."""
    _check_alpha(alpha)
    invariance = "an invertible linear map" if alpha == 0 else "a rotation, scaling"
    return Measure(
        name="shape",
        kind="distance",
        metric=True,
        description=f"angular shape distance (Williams et al. 2021, alpha {alpha}): distance in [0, pi/2], "
        f"0 when one representation is {invariance} and translation of the other; a metric "
        "(unequal widths: the narrower one zero-padded)",
        prepare=lambda x: shape_state(x, alpha),
        permute=permute_rows,
        score=_angular_score,
        options=(("alpha", alpha),),
    )
