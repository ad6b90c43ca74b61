"""What every comparison of two representations shares: the measure's contract, its result, and its null.

A :class:`Measure` compares two representations of the same ``n`` items (rows), ``x`` [n, dx] and
``y`` [n, dy]. It is split in three so that a permutation test costs one cheap ``score`` per permutation:
``prepare`` turns one representation into whatever the score needs (a Gram matrix, an RDM, neighbour
lists, a whitened basis), ``permute`` reorders a prepared representation's rows, and ``score`` compares two
prepared representations. The permutation null shuffles the rows of ``y`` only: it breaks the
correspondence between the two representations and keeps each one's own structure.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from featurelens.errors import CompareError

Kind = Literal["similarity", "distance"]

MIN_PERMUTATION_ROWS = 5


@dataclass(frozen=True)
class Measure:
    """One similarity or distance between representations [n, dx] and [n, dy] of the same n items.

    ``kind`` says which way is "more alike" (similarity: larger; distance: smaller). ``metric`` is True only
    for distances that satisfy identity, symmetry and the triangle inequality. ``min_rows`` is the fewest
    items the measure is defined for. ``options`` records the parameters it was built with.
    """

    name: str
    kind: Kind
    metric: bool
    description: str
    prepare: Callable[[torch.Tensor], Any]
    permute: Callable[[Any, torch.Tensor], Any]
    score: Callable[[Any, Any], float]
    min_rows: int = 2
    options: tuple[tuple[str, Any], ...] = ()
    permute_many: Callable[[Any, torch.Tensor], Any] | None = None
    score_many: Callable[[list[Any], Any], np.ndarray] | None = None

    def null_states(self, state: Any, orders: torch.Tensor) -> Any:
        """``state`` permuted by every row of ``orders`` [P, n], in the form :meth:`null_scores` reads
        (made once per representation, scored against many others)."""
        if self.permute_many is not None:
            return self.permute_many(state, orders)
        return [self.permute(state, order) for order in orders]

    def null_scores(self, states: list[Any], nulls: Any) -> np.ndarray:
        """The scores [A, P] of each of ``states`` against each permuted state of :meth:`null_states`
        (a layer map scores every hook of one side against one hook's nulls at once)."""
        if self.score_many is not None:
            return self.score_many(states, nulls)
        return np.array([[self.score(state, null) for null in nulls] for state in states], dtype=np.float64)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """The measure of ``x`` [n, dx] against ``y`` [n, dy] (no null)."""
        x, y = check_pair(x, y, self.min_rows)
        return float(self.score(self.prepare(x), self.prepare(y)))


def permute_rows(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``x`` with its rows in ``order``: the ``permute`` of a measure whose prepared form is rows [n, ...]."""
    return x[order]


def permute_gram(gram: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """A Gram or distance matrix [n, n] of rows reordered by ``order`` [n] (rows and columns together), or
    [P, n, n] for ``orders`` [P, n]: one gather either way."""
    n = gram.shape[-1]
    flat = order[..., :, None] * n + order[..., None, :]
    return torch.take(gram, flat)


@dataclass(frozen=True)
class Comparison:
    """A measure's value with its permutation null.

    ``p_value`` is (1 + #null at least as alike as the value) / (1 + permutations): "at least as alike" is
    null >= value for a similarity and null <= value for a distance. It is None when no permutations were
    asked for. ``null_mean``/``null_std`` summarise the null distribution (what "unrelated" scores).
    """

    measure: str
    value: float
    kind: Kind
    metric: bool
    n: int
    permutations: int
    seed: int
    p_value: float | None
    null_mean: float | None
    null_std: float | None
    options: dict[str, Any]
    description: str

    def as_dict(self) -> dict[str, Any]:
        """The comparison as plain JSON-ready values."""
        return {
            "measure": self.measure,
            "value": self.value,
            "kind": self.kind,
            "metric": self.metric,
            "n": self.n,
            "permutations": self.permutations,
            "seed": self.seed,
            "p_value": self.p_value,
            "null_mean": self.null_mean,
            "null_std": self.null_std,
            "options": self.options,
            "description": self.description,
        }


def check_pair(x: Any, y: Any, min_rows: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` and ``y`` as float64 tensors [n, d], or one clear error: not 2-D, different row counts, too
    few rows, or non-finite values (naming the first bad row)."""
    pair = []
    for name, a in (("x", x), ("y", y)):
        t = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a)
        if t.ndim == 1:
            t = t[:, None]
        if t.ndim != 2:
            raise CompareError(f"{name} must be [items, units], got shape {tuple(t.shape)}")
        if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.bool)):
            raise CompareError(f"{name} must be numeric, got {t.dtype}")
        t = t.detach().to("cpu", torch.float64)
        bad = ~torch.isfinite(t).all(dim=1)
        if bool(bad.any()):
            rows = torch.nonzero(bad).flatten()
            raise CompareError(
                f"{name} has {len(rows)} rows with NaN or infinite values (first: row {int(rows[0])}); "
                "drop them from both representations first"
            )
        pair.append(t)
    if pair[0].shape[0] != pair[1].shape[0]:
        raise CompareError(
            f"x and y must describe the same items: x has {pair[0].shape[0]} rows, y has {pair[1].shape[0]}"
        )
    if pair[0].shape[0] < min_rows:
        raise CompareError(f"this measure needs at least {min_rows} rows, got {pair[0].shape[0]}")
    return pair[0], pair[1]


def permutation_orders(n: int, permutations: int, seed: int) -> torch.Tensor:
    """``permutations`` random orders [permutations, n] of n rows, the same for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    if not permutations:
        return torch.empty(0, n, dtype=torch.long)
    return torch.stack([torch.randperm(n, generator=generator) for _ in range(permutations)])


def compare_prepared(measure: Measure, a: Any, b: Any, n: int, *, permutations: int, seed: int) -> Comparison:
    """:func:`compare` on representations already ``prepare``-d."""
    value = float(measure.score(a, b))
    null = np.empty(0)
    if permutations:
        null = measure.null_scores([a], measure.null_states(b, permutation_orders(n, permutations, seed)))[0]
    return comparison_of(measure, value, null, n, seed)


def p_value_of(value: float, null: np.ndarray, kind: Kind) -> float:
    """(1 + #null at least as alike as ``value``) / (1 + len(null)); ties (to rounding) count as alike."""
    tolerance = 1e-12 * max(abs(value), 1.0)
    alike = null >= value - tolerance if kind == "similarity" else null <= value + tolerance
    return float((1 + alike.sum()) / (1 + len(null)))


def comparison_of(measure: Measure, value: float, null: np.ndarray, n: int, seed: int) -> Comparison:
    """The :class:`Comparison` of ``value`` with its permutation ``null`` [P] (empty: no test)."""
    permutations = len(null)
    p_value = null_mean = null_std = None
    if permutations:
        p_value = p_value_of(value, null, measure.kind)
        null_mean = float(null.mean())
        null_std = float(null.std(ddof=1)) if permutations > 1 else math.nan
    return Comparison(
        measure=measure.name,
        value=value,
        kind=measure.kind,
        metric=measure.metric,
        n=n,
        permutations=permutations,
        seed=seed,
        p_value=p_value,
        null_mean=null_mean,
        null_std=null_std,
        options=dict(measure.options),
        description=measure.description,
    )


def compare(x: Any, y: Any, measure: Measure, *, permutations: int = 1000, seed: int = 0) -> Comparison:
    """``measure`` of ``x`` [n, dx] against ``y`` [n, dy] (numpy or torch; computed in float64) with a
    permutation p-value from ``permutations`` shuffles of y's rows (reproducible by ``seed``; 0: none)."""
    if permutations < 0:
        raise CompareError(f"permutations must be 0 (no test) or more, got {permutations}")
    x, y = check_pair(x, y, measure.min_rows)
    n = x.shape[0]
    if permutations and n < MIN_PERMUTATION_ROWS:
        raise CompareError(
            f"a permutation test needs at least {MIN_PERMUTATION_ROWS} rows "
            f"({math.factorial(MIN_PERMUTATION_ROWS)} orders), got {n}; give more rows or permutations=0"
        )
    return compare_prepared(
        measure, measure.prepare(x), measure.prepare(y), n, permutations=permutations, seed=seed
    )
