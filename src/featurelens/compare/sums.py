"""Linear CKA between every hook of one set and every hook of another, from sums added chunk by chunk.

Linear kernels need no n × n matrix: with K = xxᵀ, L = yyᵀ and K̃, L̃ the kernels with zeroed diagonals,

    tr(K̃L̃)   = ‖Σ xᵢyᵢᵀ‖²_F − Σ |xᵢ|²|yᵢ|²
    1ᵀK̃1     = |Σ xᵢ|² − Σ |xᵢ|²
    1ᵀK̃L̃1   = (Σx)ᵀ(Σ xᵢyᵢᵀ)(Σy) − (Σx)·(Σ xᵢ|yᵢ|²) − (Σy)·(Σ yᵢ|xᵢ|²) + Σ |xᵢ|²|yᵢ|²

so the unbiased HSIC (Song et al. 2012) and the plug-in one (‖x_cᵀ y_c‖²_F / (n−1)²) of a stream of any
length follow from a few sums per hook pair. The costly sum is Σ xᵢyᵢᵀ: one [dx, dy] product per pair and
chunk, n·(Σ widths)² multiply-adds for a layer map, computed as a few large matrix products.

Rows are shifted by a fixed reference (each hook's mean over the first chunk) before summing: the unbiased
HSIC is exactly translation invariant and the plug-in one is centred at the end, so the shift changes no
value and keeps the sums small. Products are taken in the chunks' dtype and summed in float64.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from featurelens.errors import CompareError

CONSTANT_MESSAGE = "CKA is undefined for a representation without variance (all rows equal)"


class CkaSums:
    """Sums for linear CKA between hooks ``a`` (widths [HA]) and hooks ``b`` (or ``a`` again: ``b=None``).

    ``add`` takes chunks as hook -> [c, width] tensors; ``cka`` gives the [HA, HB] map of everything added.
    """

    def __init__(
        self,
        shift_a: Mapping[str, torch.Tensor],
        shift_b: Mapping[str, torch.Tensor] | None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self.same = shift_b is None
        self.hooks_a = list(shift_a)
        self.hooks_b = self.hooks_a if shift_b is None else list(shift_b)
        self.shift_a = {h: s.detach().double() for h, s in shift_a.items()}
        self.shift_b = (
            self.shift_a if shift_b is None else {h: s.detach().double() for h, s in shift_b.items()}
        )
        self.slices_a = _slices([len(s) for s in self.shift_a.values()])
        self.slices_b = self.slices_a if self.same else _slices([len(s) for s in self.shift_b.values()])
        width_a, width_b = self.slices_a[-1].stop, self.slices_b[-1].stop
        self.n = 0
        self.cross = torch.zeros(width_a, width_b, dtype=dtype)  # Σ aᵢbᵢᵀ
        # Each hook's own Σ xᵢxᵢᵀ: the diagonal blocks of ``cross`` when b is a, kept apart otherwise.
        self.self_a = (
            [] if self.same else [torch.zeros(_width(s), _width(s), dtype=dtype) for s in self.slices_a]
        )
        self.self_b = (
            [] if self.same else [torch.zeros(_width(s), _width(s), dtype=dtype) for s in self.slices_b]
        )
        self.sum_a, self.sum_b = (
            torch.zeros(width_a, dtype=torch.float64),
            torch.zeros(width_b, dtype=torch.float64),
        )
        self.a_by_b_norms = torch.zeros(width_a, len(self.hooks_b), dtype=torch.float64)  # Σ aᵢ |b_hᵢ|²
        self.b_by_a_norms = torch.zeros(width_b, len(self.hooks_a), dtype=torch.float64)
        self.a_by_a_norms = torch.zeros(width_a, len(self.hooks_a), dtype=torch.float64)
        self.b_by_b_norms = torch.zeros(width_b, len(self.hooks_b), dtype=torch.float64)
        self.norms_ab = torch.zeros(len(self.hooks_a), len(self.hooks_b), dtype=torch.float64)  # Σ |aᵢ|²|bᵢ|²
        self.norms_aa = torch.zeros(len(self.hooks_a), dtype=torch.float64)  # Σ |aᵢ|⁴
        self.norms_bb = torch.zeros(len(self.hooks_b), dtype=torch.float64)
        self.squares_a = torch.zeros(len(self.hooks_a), dtype=torch.float64)  # Σ |aᵢ|²
        self.squares_b = torch.zeros(len(self.hooks_b), dtype=torch.float64)

    @classmethod
    def start(
        cls, first_a: Mapping[str, torch.Tensor], first_b: Mapping[str, torch.Tensor] | None = None
    ) -> CkaSums:
        """Empty sums shifted by the means of a first chunk (hook -> [c, width]); ``first_b=None``: b is a.

        The [width, width] product sums take the chunks' dtype: float64 chunks are summed exactly as the
        in-memory formula; float32 chunks (a store, a live model) in float32, which keeps a 30-layer map's
        sums at half the memory and adds each chunk's product in place (CKA to about 1e-5).
        """
        dtype = torch.float64 if next(iter(first_a.values())).dtype == torch.float64 else torch.float32
        shift_a = {h: x.double().mean(dim=0) for h, x in first_a.items()}
        shift_b = None if first_b is None else {h: x.double().mean(dim=0) for h, x in first_b.items()}
        return cls(shift_a, shift_b, dtype)

    def add(self, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor] | None = None) -> None:
        """Add one chunk: hook -> [c, width] for every hook of a (and of b unless b is a)."""
        za, qa = self._stack(a, self.hooks_a, self.shift_a, self.cross.dtype)
        zb, qb = (
            (za, qa) if self.same else self._stack(_required(b), self.hooks_b, self.shift_b, self.cross.dtype)
        )
        if len(zb) != len(za):
            raise CompareError(f"a chunk of a has {len(za)} rows but its chunk of b has {len(zb)}")
        self.n += len(za)
        if self.same:  # the map is symmetric: the blocks on and right of the diagonal suffice
            for part in self.slices_a:
                self.cross[part, part.start :].addmm_(za[:, part].T, za[:, part.start :])
        else:
            self.cross.addmm_(za.T, zb)
        if not self.same:
            for grams, z, slices in ((self.self_a, za, self.slices_a), (self.self_b, zb, self.slices_b)):
                for gram, part in zip(grams, slices, strict=True):
                    gram.addmm_(z[:, part].T, z[:, part])
        self.sum_a.add_(za.sum(dim=0))
        self.a_by_b_norms.add_(za.T @ qb)
        self.a_by_a_norms.add_(za.T @ qa)
        qa64, qb64 = qa.double(), qb.double()
        self.norms_ab.add_(qa64.T @ qb64)
        self.norms_aa.add_((qa64 * qa64).sum(dim=0))
        self.squares_a.add_(qa64.sum(dim=0))
        if not self.same:
            self.sum_b.add_(zb.sum(dim=0))
            self.b_by_a_norms.add_(zb.T @ qa)
            self.b_by_b_norms.add_(zb.T @ qb)
            self.norms_bb.add_((qb64 * qb64).sum(dim=0))
            self.squares_b.add_(qb64.sum(dim=0))

    @staticmethod
    def _stack(
        chunk: Mapping[str, torch.Tensor],
        hooks: list[str],
        shift: Mapping[str, torch.Tensor],
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The chunk's hooks side by side, shifted, [c, Σ widths] in ``dtype``, and their squared row norms
        [c, H]."""
        missing = [h for h in hooks if h not in chunk]
        if missing:
            raise CompareError(f"a chunk lacks hooks {missing}")
        parts = [chunk[h].to(dtype) - shift[h].to(dtype) for h in hooks]
        z = torch.cat(parts, dim=1)
        q = torch.stack([(p * p).sum(dim=1) for p in parts], dim=1)
        return z, q

    def cka(self, *, debiased: bool = True) -> torch.Tensor:
        """Linear CKA [HA, HB] (float64) of every hook pair over all rows added; NaN where a hook has no
        variance (every row equal)."""
        fewest = 4 if debiased else 2
        if self.n < fewest:
            raise CompareError(
                f"{'debiased ' if debiased else ''}CKA needs at least {fewest} rows, got {self.n}"
            )
        a = _Side(self.slices_a, self.sum_a, self.squares_a, self.a_by_a_norms)
        if self.same:
            between = hsic_blocks(
                self.n, self.cross, a, a, self.a_by_a_norms, self.a_by_a_norms, self.norms_ab, debiased
            )
            own_a = own_b = torch.diagonal(between).clone()
            upper = torch.triu(torch.ones_like(between, dtype=torch.bool))
            between = torch.where(
                upper, between, between.T
            )  # only blocks on and right of the diagonal were summed
        else:
            b = _Side(self.slices_b, self.sum_b, self.squares_b, self.b_by_b_norms)
            between = hsic_blocks(
                self.n, self.cross, a, b, self.a_by_b_norms, self.b_by_a_norms, self.norms_ab, debiased
            )
            own_a = self._own(a, self.self_a, self.norms_aa, debiased)
            own_b = self._own(b, self.self_b, self.norms_bb, debiased)
        denominator = torch.sqrt(torch.outer(own_a, own_b))
        return torch.where(denominator > 0, between / denominator, torch.nan)

    def _own(
        self, side: _Side, grams: list[torch.Tensor], fourth: torch.Tensor, debiased: bool
    ) -> torch.Tensor:
        """HSIC [H] of each hook of ``side`` with itself, from its own Σ xᵢxᵢᵀ in ``grams``."""
        values = []
        for i, (part, gram) in enumerate(zip(side.slices, grams, strict=True)):
            one = _Side(
                [slice(0, _width(part))],
                side.sums[part],
                side.squares[i : i + 1],
                side.by_own[part, i : i + 1],
            )
            norms = one.by_own
            values.append(
                hsic_blocks(self.n, gram, one, one, norms, norms, fourth[i].reshape(1, 1), debiased)[0, 0]
            )
        return torch.stack(values)


@dataclass(frozen=True)
class _Side:
    """One hook set's sums: column ``slices`` per hook, Σx [D], Σ|x_h|² [H], Σ x|x_h|² [D, H]."""

    slices: list[slice]
    sums: torch.Tensor
    squares: torch.Tensor
    by_own: torch.Tensor


def hsic_blocks(
    n: int,
    cross: torch.Tensor,
    a: _Side,
    b: _Side,
    a_by_b_norms: torch.Tensor,
    b_by_a_norms: torch.Tensor,
    norms_ab: torch.Tensor,
    debiased: bool,
) -> torch.Tensor:
    """HSIC [HA, HB] of linear kernels for every hook pair, from Σ aᵢbᵢᵀ ``cross`` [DA, DB], Σ aᵢ|b_hᵢ|²
    [DA, HB], Σ bᵢ|a_hᵢ|² [DB, HA] and Σ |a_hᵢ|²|b_gᵢ|² [HA, HB] (see the module docstring): one row
    block (hook of a) at a time, every column block (hook of b) at once."""
    count_b = len(b.slices)
    column_hook = torch.cat([torch.full((_width(s),), j) for j, s in enumerate(b.slices)])

    def per_hook(values: torch.Tensor) -> torch.Tensor:  # [DB] -> [HB], summed within each hook of b
        return torch.zeros(count_b, dtype=torch.float64).index_add_(0, column_hook, values)

    totals_b = per_hook(b.sums * b.sums)  # |Σ b_h|²
    result = torch.empty(len(a.slices), count_b, dtype=torch.float64)
    for i, part in enumerate(a.slices):
        rows = cross[part].double()  # [d_i, DB]
        sums_i = a.sums[part]
        frobenius = per_hook((rows * rows).sum(dim=0))  # ‖Σ aᵢbᵢᵀ‖²_F per hook of b
        through = per_hook((sums_i @ rows) * b.sums)  # (Σa)ᵀ (Σ abᵀ) (Σb)
        total_a = sums_i @ sums_i
        if not debiased:  # ‖Σ abᵀ − (Σa)(Σb)ᵀ/n‖²_F / (n−1)²
            result[i] = (frobenius - 2 * through / n + total_a * totals_b / n**2) / (n - 1) ** 2
            continue
        trace = frobenius - norms_ab[i]
        total_k, total_l = total_a - a.squares[i], totals_b - b.squares
        cross_term = (
            through - sums_i @ a_by_b_norms[part] - per_hook(b.sums * b_by_a_norms[:, i]) + norms_ab[i]
        )
        result[i] = (trace + total_k * total_l / ((n - 1) * (n - 2)) - 2.0 * cross_term / (n - 2)) / (
            n * (n - 3)
        )
    return result


def _width(part: slice) -> int:
    return part.stop - part.start


def _slices(widths: list[int]) -> list[slice]:
    ends = torch.tensor(widths).cumsum(0).tolist()
    return [slice(end - w, end) for w, end in zip(widths, ends, strict=True)]


def _required(b: Mapping[str, torch.Tensor] | None) -> Mapping[str, torch.Tensor]:
    if b is None:
        raise CompareError("these sums compare two hook sets: give the chunk of b too")
    return b
