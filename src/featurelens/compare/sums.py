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

import torch

from featurelens.errors import CompareError

CONSTANT_MESSAGE = "CKA is undefined for a representation without variance (all rows equal)"


class CkaSums:
    """Sums for linear CKA between hooks ``a`` (widths [HA]) and hooks ``b`` (or ``a`` again: ``b=None``).

    ``add`` takes chunks as hook -> [c, width] tensors; ``cka`` gives the [HA, HB] map of everything added.
    """

    def __init__(
        self, shift_a: Mapping[str, torch.Tensor], shift_b: Mapping[str, torch.Tensor] | None
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
        self.cross = torch.zeros(width_a, width_b, dtype=torch.float64)  # Σ aᵢbᵢᵀ
        # Each hook's own Σ xᵢxᵢᵀ: the diagonal blocks of ``cross`` when b is a, kept apart otherwise.
        self.self_a = (
            []
            if self.same
            else [torch.zeros(_width(s), _width(s), dtype=torch.float64) for s in self.slices_a]
        )
        self.self_b = (
            []
            if self.same
            else [torch.zeros(_width(s), _width(s), dtype=torch.float64) for s in self.slices_b]
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
        """Empty sums shifted by the means of a first chunk (hook -> [c, width]); ``first_b=None``: b is a."""
        shift_a = {h: x.double().mean(dim=0) for h, x in first_a.items()}
        shift_b = None if first_b is None else {h: x.double().mean(dim=0) for h, x in first_b.items()}
        return cls(shift_a, shift_b)

    def add(self, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor] | None = None) -> None:
        """Add one chunk: hook -> [c, width] for every hook of a (and of b unless b is a)."""
        za, qa = self._stack(a, self.hooks_a, self.shift_a)
        zb, qb = (za, qa) if self.same else self._stack(_required(b), self.hooks_b, self.shift_b)
        if len(zb) != len(za):
            raise CompareError(f"a chunk of a has {len(za)} rows but its chunk of b has {len(zb)}")
        self.n += len(za)
        for part in self.slices_a:
            if self.same:  # the map is symmetric: the blocks on and right of the diagonal suffice
                self.cross[part, part.start :].add_(za[:, part].T @ za[:, part.start :])
            else:
                self.cross[part].add_(za[:, part].T @ zb)
        if not self.same:
            for grams, z, slices in ((self.self_a, za, self.slices_a), (self.self_b, zb, self.slices_b)):
                for gram, part in zip(grams, slices, strict=True):
                    gram.add_(z[:, part].T @ z[:, part])
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
        chunk: Mapping[str, torch.Tensor], hooks: list[str], shift: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The chunk's hooks side by side, shifted, [c, Σ widths], and their squared row norms [c, H]."""
        missing = [h for h in hooks if h not in chunk]
        if missing:
            raise CompareError(f"a chunk lacks hooks {missing}")
        parts = [chunk[h] - shift[h].to(chunk[h].dtype) for h in hooks]
        z = torch.cat(parts, dim=1)
        q = torch.stack([(p * p).sum(dim=1) for p in parts], dim=1)
        return z, q

    def _side_b(self) -> tuple[torch.Tensor, ...]:
        if self.same:
            return self.sum_a, self.a_by_a_norms, self.a_by_b_norms, self.norms_aa, self.squares_a
        return self.sum_b, self.b_by_b_norms, self.b_by_a_norms, self.norms_bb, self.squares_b

    def cka(self, *, debiased: bool = True) -> torch.Tensor:
        """Linear CKA [HA, HB] (float64) of every hook pair over all rows added; NaN where a hook has no
        variance (every row equal)."""
        if self.n < (4 if debiased else 2):
            fewest = 4 if debiased else 2
            raise CompareError(
                f"{'debiased ' if debiased else ''}CKA needs at least {fewest} rows, got {self.n}"
            )
        sum_b, b_by_b, b_by_a, norms_bb, squares_b = self._side_b()
        pairs = [
            (i, j)
            for i in range(len(self.hooks_a))
            for j in range(len(self.hooks_b))
            if not self.same or j >= i  # only the blocks on and right of the diagonal were summed
        ]
        self_a = [self.cross[s, s] for s in self.slices_a] if self.same else self.self_a
        self_b = self_a if self.same else self.self_b

        def hsic(block, sa, sb, sq_a, sq_b, x_by_y, y_by_x, norms) -> torch.Tensor:
            if not debiased:
                centered = block - torch.outer(sa, sb) / self.n
                return (centered * centered).sum() / (self.n - 1) ** 2
            return unbiased_hsic(self.n, block, sa, sb, sq_a, sq_b, x_by_y, y_by_x, norms)

        def own(i: int, side: str) -> torch.Tensor:
            if side == "a":
                s = self.slices_a[i]
                return hsic(
                    self_a[i],
                    self.sum_a[s],
                    self.sum_a[s],
                    self.squares_a[i],
                    self.squares_a[i],
                    self.a_by_a_norms[s, i],
                    self.a_by_a_norms[s, i],
                    self.norms_aa[i],
                )
            s = self.slices_b[i]
            return hsic(
                self_b[i],
                sum_b[s],
                sum_b[s],
                squares_b[i],
                squares_b[i],
                b_by_b[s, i],
                b_by_b[s, i],
                norms_bb[i],
            )

        own_a = torch.stack([own(i, "a") for i in range(len(self.hooks_a))])
        own_b = own_a if self.same else torch.stack([own(j, "b") for j in range(len(self.hooks_b))])
        result = torch.full((len(self.hooks_a), len(self.hooks_b)), float("nan"), dtype=torch.float64)
        for i, j in pairs:
            sa, sb = self.slices_a[i], self.slices_b[j]
            value = hsic(
                self.cross[sa, sb],
                self.sum_a[sa],
                sum_b[sb],
                self.squares_a[i],
                squares_b[j],
                self.a_by_b_norms[sa, j],
                b_by_a[sb, i],
                self.norms_ab[i, j],
            )
            denominator = torch.sqrt(own_a[i] * own_b[j])
            if bool(denominator > 0):
                result[i, j] = value / denominator
        if self.same:
            lower = ~torch.triu(torch.ones_like(result, dtype=torch.bool))
            result[lower] = result.T[lower]
        return result


def unbiased_hsic(
    n: int,
    xy: torch.Tensor,
    sum_x: torch.Tensor,
    sum_y: torch.Tensor,
    squares_x: torch.Tensor,
    squares_y: torch.Tensor,
    x_by_y_norms: torch.Tensor,
    y_by_x_norms: torch.Tensor,
    norms_xy: torch.Tensor,
) -> torch.Tensor:
    """The unbiased HSIC of linear kernels from sums: Σ xᵢyᵢᵀ [dx, dy], Σx [dx], Σy [dy], Σ|xᵢ|², Σ|yᵢ|²,
    Σ xᵢ|yᵢ|² [dx], Σ yᵢ|xᵢ|² [dy] and Σ |xᵢ|²|yᵢ|² (see the module docstring)."""
    trace = (xy * xy).sum() - norms_xy
    total_k = sum_x @ sum_x - squares_x
    total_l = sum_y @ sum_y - squares_y
    cross = sum_x @ xy @ sum_y - sum_x @ x_by_y_norms - sum_y @ y_by_x_norms + norms_xy
    return (trace + total_k * total_l / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (n * (n - 3))


def _width(part: slice) -> int:
    return part.stop - part.start


def _slices(widths: list[int]) -> list[slice]:
    ends = torch.tensor(widths).cumsum(0).tolist()
    return [slice(end - w, end) for w, end in zip(widths, ends, strict=True)]


def _required(b: Mapping[str, torch.Tensor] | None) -> Mapping[str, torch.Tensor]:
    if b is None:
        raise CompareError("these sums compare two hook sets: give the chunk of b too")
    return b
