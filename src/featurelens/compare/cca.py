"""Canonical correlation analysis between representations: mean CCA, regularised CCA, SVCCA and PWCCA.

- CCA (Hotelling 1936) finds pairs of directions, one in each representation, whose projections correlate
  most; the canonical correlations ρ₁ ≥ ρ₂ ≥ … are the singular values of Qxᵀ Qy for orthonormal bases Qx,
  Qy of the centred column spaces (Björck & Golub 1973), which is how they are computed here: no covariance
  matrix is ever inverted. Mean CCA, "ρ̄", is the summary of Raghu et al. 2017.
- Regularised CCA (Vinod 1976; Bilenko & Gallant 2016, pyrcca) adds a ridge to each covariance.
- SVCCA (Raghu, Gilmer, Yosinski, Sohl-Dickstein 2017, "SVCCA: Singular Vector Canonical Correlation
  Analysis for Deep Learning Dynamics and Interpretability") first keeps each representation's top singular
  directions, then takes mean CCA.
- PWCCA (Morcos, Raghu, Bengio 2018, "Insights on representational similarity in neural networks with
  canonical correlation") weights each canonical correlation by how much of x its canonical variate accounts
  for.

CCA is invariant to any invertible linear map (and translation) of either side, so it needs many more items
than units: when a representation's rank reaches n − 1 its basis spans every centred direction and the
canonical correlations are 1 whatever the data. Rank is read off the singular values of the centred data:
directions with singular value at most ``s_max · max(n, d) · eps`` (numpy's ``matrix_rank`` rule) are null
and dropped, so d > n inputs work (and return at most rank-many correlations).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from featurelens.compare.measure import Measure, check_pair, permute_rows
from featurelens.errors import CompareError


def principal_directions(x: torch.Tensor, name: str = "x") -> tuple[torch.Tensor, torch.Tensor]:
    """The centred x [n, d] as U [n, r] (orthonormal columns) and singular values s [r], descending,
    with null directions (s ≤ s_max·max(n, d)·eps) dropped; one error if x is constant."""
    centred = x - x.mean(dim=0, keepdim=True)
    u, s, _ = torch.linalg.svd(centred, full_matrices=False)
    tolerance = (s[0] if len(s) else 0.0) * max(x.shape) * torch.finfo(x.dtype).eps
    keep = s > tolerance
    if not bool(keep.any()):
        raise CompareError(f"{name} is constant (every row the same), so it has no direction to correlate")
    return u[:, keep], s[keep]


def _check_regularization(regularization: float) -> None:
    if not regularization >= 0:
        raise CompareError(f"regularization must be 0 (plain CCA) or positive, got {regularization}")


def whitened_basis(x: torch.Tensor, regularization: float = 0.0, name: str = "x") -> torch.Tensor:
    """The centred x [n, d] whitened by its (ridge-regularised) covariance, in its own principal axes: [n, r].

    Its columns are U·s/√(s² + r·c) with c = Σs²/d, the mean variance per unit: the data side of
    Σ_r^(-1/2) for Σ_r = XcᵀXc + r·(tr XcᵀXc / d)·I. At r = 0 it is an orthonormal basis of the centred
    column space; the principal axes (rotating x) leave canonical correlations unchanged.
    """
    _check_regularization(regularization)
    u, s = principal_directions(x, name)
    if regularization == 0:
        return u
    ridge = regularization * (s**2).sum() / x.shape[1]
    return u * (s / torch.sqrt(s**2 + ridge))


def correlations_of_bases(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Canonical correlations [min(ra, rb)] of whitened bases a [n, ra], b [n, rb], descending.

    Rounding can push a singular value of two orthonormal bases a hair above 1; it is clipped to 1.
    """
    return torch.linalg.svdvals(a.T @ b).clamp(0.0, 1.0)


def canonical_correlations(x: torch.Tensor, y: torch.Tensor, regularization: float = 0.0) -> torch.Tensor:
    """The canonical correlations [min(rank x, rank y)] of x [n, dx] and y [n, dy], descending, in float64.

    Columns are centred. ``regularization`` r ≥ 0 adds the ridge r·(tr Σ/d)·I to each covariance Σ (r times
    the mean variance per unit, so r is free of the data's scale): the regularised correlations are the
    singular values of Σxx_r^(-1/2) Σxy Σyy_r^(-1/2). A ridge (rather than shrinking Σ toward (tr Σ/d)·I)
    keeps every correlation in [0, 1]: shrinkage leaves Σxy as it is and lets high-variance directions
    score above 1. With r > 0 the measure is no longer invariant to every invertible map, only to
    rotation, isotropic scale and translation.
    """
    x, y = check_pair(x, y)
    return correlations_of_bases(
        whitened_basis(x, regularization, "x"), whitened_basis(y, regularization, "y")
    )


def cca_similarity(x: torch.Tensor, y: torch.Tensor, regularization: float = 0.0) -> float:
    """Mean canonical correlation ρ̄ of x [n, dx] and y [n, dy] (Raghu et al. 2017's "mean CCA").

    1 when either is an invertible linear map (plus translation) of the other; 1 − ρ̄ is the "CCA distance".
    """
    return float(canonical_correlations(x, y, regularization).mean())


def _mean_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(correlations_of_bases(a, b).mean())


def cca_measure(regularization: float = 0.0) -> Measure:
    """Mean CCA as a :class:`Measure`: prepare whitens once, each permutation costs one small SVD."""
    _check_regularization(regularization)
    ridge = f"ridge {regularization} x mean unit variance" if regularization else "unregularised"
    return Measure(
        name="cca" if regularization == 0 else "rcca",
        kind="similarity",
        metric=False,
        description=f"mean canonical correlation ({ridge}): similarity in [0, 1], 1 when one representation "
        "is an invertible linear map of the other"
        + ("" if regularization else "; needs items well above units, since rank n-1 scores 1 on any data")
        + "; not a metric",
        prepare=lambda x: whitened_basis(x, regularization),
        permute=permute_rows,
        score=_mean_correlation,
        min_rows=3,
        options=(("regularization", regularization),),
    )


def _check_keep(keep: float) -> None:
    if isinstance(keep, bool) or not (
        (isinstance(keep, int) and keep >= 1) or (isinstance(keep, float) and 0 < keep <= 1)
    ):
        raise CompareError(
            f"keep must be a fraction of variance in (0, 1] (a float) or a number of directions >= 1 "
            f"(an int), got {keep!r}"
        )


def top_singular_basis(x: torch.Tensor, keep: float = 0.99, name: str = "x") -> torch.Tensor:
    """An orthonormal basis [n, k] of x's top singular directions (centred): the fewest that explain at
    least ``keep`` of the variance (a float in (0, 1]), or ``keep`` of them (an int, at most the rank)."""
    _check_keep(keep)
    u, s = principal_directions(x, name)
    if isinstance(keep, int):
        k = min(keep, len(s))
    else:
        explained = torch.cumsum(s**2, dim=0) / (s**2).sum()
        # The small slack keeps keep=1.0 (or a fraction hit exactly) from missing by a rounding error.
        k = int((explained < keep - 1e-12).sum()) + 1
    return u[:, : min(k, len(s))]


def svcca(x: torch.Tensor, y: torch.Tensor, keep: float = 0.99) -> float:
    """SVCCA (Raghu et al. 2017) of x [n, dx] and y [n, dy]: mean CCA after reducing each to its top
    singular directions (those explaining ``keep`` of the variance, or an int number of them)."""
    x, y = check_pair(x, y)
    return _mean_correlation(top_singular_basis(x, keep, "x"), top_singular_basis(y, keep, "y"))


def svcca_measure(keep: float = 0.99) -> Measure:
    """SVCCA as a :class:`Measure` (prepare: the top singular basis; score: one small SVD)."""
    _check_keep(keep)
    kept = (
        f"top {keep} singular directions"
        if isinstance(keep, int)
        else f"directions explaining {keep:g} of variance"
    )
    return Measure(
        name="svcca",
        kind="similarity",
        metric=False,
        description=f"SVCCA, mean canonical correlation of each side's {kept}: similarity in [0, 1], "
        "1 for identical subspaces; not a metric",
        prepare=lambda x: top_singular_basis(x, keep),
        permute=permute_rows,
        score=_mean_correlation,
        min_rows=3,
        options=(("keep", keep),),
    )


@dataclass(frozen=True)
class PwccaState:
    """A representation prepared for PWCCA: an orthonormal basis [n, r] of its centred columns and the
    centred columns in that basis, basisᵀ·Xc [r, d] (unchanged when rows are permuted together)."""

    basis: torch.Tensor
    coordinates: torch.Tensor


def pwcca_state(x: torch.Tensor) -> PwccaState:
    """x [n, d] prepared for :func:`pwcca`."""
    u, _ = principal_directions(x)
    centred = x - x.mean(dim=0, keepdim=True)
    return PwccaState(u, u.T @ centred)


def _pwcca_score(a: PwccaState, b: PwccaState) -> float:
    u, rho, _ = torch.linalg.svd(a.basis.T @ b.basis, full_matrices=False)
    # The canonical variates of x are a.basis @ u (orthonormal); each one's weight is the summed absolute
    # projection of x's centred units onto it, |uᵀ (basisᵀ Xc)| summed over units.
    weights = (u.T @ a.coordinates).abs().sum(dim=1)
    return float((weights * rho.clamp(0.0, 1.0)).sum() / weights.sum())


def _permute_pwcca(state: PwccaState, order: torch.Tensor) -> PwccaState:
    return PwccaState(state.basis[order], state.coordinates)


def pwcca(x: torch.Tensor, y: torch.Tensor) -> float:
    """Projection-weighted CCA (Morcos et al. 2018) of x [n, dx] and y [n, dy].

    Σᵢ αᵢ ρᵢ / Σᵢ αᵢ, where ρᵢ are the canonical correlations and αᵢ = Σⱼ |⟨hᵢ, xⱼ⟩| sums the absolute
    projections of x's centred units xⱼ onto x's i-th canonical variate hᵢ (unit length): canonical
    directions that carry more of x count more. Asymmetric: the weights come from x, the first argument.
    (Morcos et al.'s code weights by whichever side has fewer units; pass that side as x to match it.)
    """
    x, y = check_pair(x, y)
    return _pwcca_score(pwcca_state(x), pwcca_state(y))


def pwcca_measure() -> Measure:
    """PWCCA as a :class:`Measure`; weights come from x (the first representation), whose rows stay put."""
    return Measure(
        name="pwcca",
        kind="similarity",
        metric=False,
        description="projection-weighted CCA: canonical correlations weighted by how much of x (the first "
        "representation) each canonical variate accounts for; similarity in [0, 1], asymmetric, not a metric",
        prepare=pwcca_state,
        permute=_permute_pwcca,
        score=_pwcca_score,
        min_rows=3,
        options=(("weights_from", "x"),),
    )
