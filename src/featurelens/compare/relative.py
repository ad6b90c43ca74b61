"""Relative representations (Moschella, Maiorca, Fumero, Norelli, Locatello & Rodolà 2023, "Relative
representations enable zero-shot latent space communication").

Each item is described by its cosine similarity to a set of shared anchor items, [n, m] for m anchors,
in place of its own coordinates. Two spaces whose geometries agree up to rotation and isotropic scaling give
the same relative vectors, whatever their widths; the similarity of two representations is the mean cosine
between each item's two relative vectors. Anchor items are left out of that mean: an anchor's similarity to
itself is 1 in both spaces, which would raise the score whatever the spaces look like.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from featurelens.compare.measure import Measure, check_pair
from featurelens.compare.neighbors import unit_rows
from featurelens.errors import CompareError


def check_anchors(anchors: torch.Tensor, n: int) -> torch.Tensor:
    """``anchors`` as distinct int64 item numbers [m] in [0, n), 1 ≤ m < n (one item at least is not an
    anchor), or one clear error."""
    anchors = torch.as_tensor(anchors)
    if anchors.ndim != 1 or anchors.is_floating_point() or anchors.dtype == torch.bool:
        raise CompareError(
            f"anchors must be a 1-D tensor of item numbers (integers), got {anchors.dtype} "
            f"{tuple(anchors.shape)}"
        )
    anchors = anchors.to(torch.long)
    m = len(anchors)
    if not 1 <= m < n:
        raise CompareError(f"anchors must number from 1 to {n - 1} (fewer than the {n} items), got {m}")
    if bool(((anchors < 0) | (anchors >= n)).any()):
        raise CompareError(
            f"anchors must be item numbers in [0, {n}), got values from {int(anchors.min())} "
            f"to {int(anchors.max())}"
        )
    if len(torch.unique(anchors)) != m:
        raise CompareError("anchors must be distinct items; some are repeated")
    return anchors


def relative_representation(x: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """The cosine similarity [n, m] of each row of ``x`` [n, d] to each anchor row x[anchors] (m anchors).

    Anchors are rows of x themselves, so row anchors[j] has 1 in column j."""
    x = torch.as_tensor(x, dtype=torch.float64)
    anchors = check_anchors(anchors, x.shape[0])
    unit = unit_rows(x)
    return (unit @ unit[anchors].T).clamp(-1.0, 1.0)


@dataclass(frozen=True)
class RelativeState:
    """A representation prepared for :func:`relative_similarity`: each item's relative vector scaled to unit
    length [n, m] and which items are anchors [n] (both move with the items' rows)."""

    unit: torch.Tensor
    is_anchor: torch.Tensor


def relative_state(x: torch.Tensor, anchors: torch.Tensor, name: str = "x") -> RelativeState:
    """x [n, d] with its ``anchors`` [m] prepared for :func:`relative_similarity`."""
    anchors = check_anchors(anchors, x.shape[0])
    relative = relative_representation(x, anchors)
    norms = torch.linalg.vector_norm(relative, dim=1, keepdim=True)
    flat = norms[:, 0] == 0
    if bool(flat.any()):
        row = int(torch.nonzero(flat).flatten()[0])
        raise CompareError(
            f"{name} row {row} is orthogonal to every anchor, so its relative "
            "vector has no direction; use more anchors or drop the row"
        )
    is_anchor = torch.zeros(x.shape[0], dtype=torch.bool)
    is_anchor[anchors] = True
    return RelativeState(relative / norms, is_anchor)


def _permute_relative(state: RelativeState, order: torch.Tensor) -> RelativeState:
    # The anchor columns stay the same anchor items; only which item sits in each row changes.
    return RelativeState(state.unit[order], state.is_anchor[order])


def _relative_score(a: RelativeState, b: RelativeState) -> float:
    # A row that holds an anchor on either side is left out (under a permutation they can differ).
    kept = ~(a.is_anchor | b.is_anchor)
    return float((a.unit[kept] * b.unit[kept]).sum(dim=1).mean())


def relative_similarity(x: torch.Tensor, y: torch.Tensor, anchors: torch.Tensor) -> float:
    """The mean over the non-anchor items of the cosine between each item's relative representation in
    x [n, dx] and in y [n, dy], relative to the same ``anchors`` [m] (item numbers, 1 ≤ m < n).

    In [−1, 1]; 1 when y is a rotated and isotropically rescaled copy of x (or any map that keeps the
    angles to the anchors up to a per-item scale). The anchors themselves are excluded from the mean."""
    x, y = check_pair(x, y)
    anchors = check_anchors(anchors, x.shape[0])
    return _relative_score(relative_state(x, anchors, "x"), relative_state(y, anchors, "y"))


def random_anchors(n: int, anchors: int, seed: int) -> torch.Tensor:
    """``anchors`` distinct item numbers [anchors] out of n, the same for the same (n, anchors, seed).

    Fewer than half the items may be anchors: a permuted y can move its anchors onto x's non-anchor rows,
    and the null needs rows that are anchors on neither side (at least n − 2·anchors of them)."""
    if 2 * anchors >= n:
        raise CompareError(
            f"the relative measure needs fewer than half the items as anchors: {anchors} anchors for {n} "
            "items; "
            f"lower anchors below {(n + 1) // 2} or give more than {2 * anchors} items"
        )
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:anchors]


def relative_measure(anchors: int = 64, seed: int = 0) -> Measure:
    """Relative-representation similarity as a :class:`Measure`, with ``anchors`` items drawn at random by
    ``seed`` (the same items for x and y, since both have n rows). Under the permutation null the anchor
    columns stay the same items in both and only y's rows are shuffled, so this null is not the same as
    re-preparing shuffled data (which would pick other anchor items)."""
    if isinstance(anchors, bool) or not isinstance(anchors, int) or anchors < 1:
        raise CompareError(f"anchors must be an integer >= 1, got {anchors!r}")
    return Measure(
        name="relative",
        kind="similarity",
        metric=False,
        description=f"relative representations: mean cosine between each item's cosine similarities to "
        f"{anchors} random shared anchor items (seed {seed}) in the two representations, anchors left out; "
        "similarity in [-1, 1], 1 when one is a rotated, rescaled copy of the other; not a metric",
        prepare=lambda x: relative_state(x, random_anchors(x.shape[0], anchors, seed)),
        permute=_permute_relative,
        score=_relative_score,
        min_rows=2 * anchors + 1,
        options=(("anchors", anchors), ("seed", seed)),
    )
