"""Streaming statistics of every unit (channel) of one hook point: one pass, bounded memory, exact merges.

Rows arrive in chunks [n, width] (any number of chunks, any sizes). Per unit the accumulator keeps, in
float64 where it sums:

* the count, mean and central moment sums M2, M3, M4, merged chunk by chunk with the pairwise update of
  Chan et al. / Pébay (exact up to rounding, unlike raw power sums when a unit's mean dwarfs its spread);
* min, max and the largest magnitude with the row where it occurred;
* counts of rows where the unit fires (value > ``fire_threshold``), is exactly zero, is near zero
  (|x| <= ``near_zero`` x the hook's median magnitude: the "lazy neuron" statistic), exceeds
  ``outlier_multiple`` x that median (what quantization cares about), and is massive (>= each of
  ``massive`` x that median: the "massive activations" of attention-sink rows);
* the count, sum and sum of squares of its values per position, leaving out *sink rows* (rows whose norm
  exceeds ``sink_multiple`` x the median row norm, as a store flags outlier rows): the variance explained by
  position is exact, and not decided by a few attention-sink rows that are reported apart;
* its ``top`` largest values and their rows (merged by one top-k per chunk: exact), from which the tokens
  that explain its strong activations are read at the end;
* the hook's ``massive_events`` largest-magnitude massive entries (value, row, unit).

The hook's median magnitude, which the relative thresholds use, is the median |x| over every entry of the
first chunk, and its median row norm that of the first chunk's rows, fixed from then on (both recorded in
the report), so one pass suffices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from featurelens.errors import NeuronError


@dataclass(frozen=True)
class NeuronSettings:
    """Thresholds and sizes of the neuron report (see the module docstring)."""

    fire_threshold: float = 0.0
    near_zero: float = 0.01
    outlier_multiple: float = 20.0
    outlier_rate: float = 0.001
    sink_multiple: float = 10.0
    massive: tuple[float, ...] = (100.0, 1000.0)
    always_on: float = 0.99
    top: int = 128
    massive_events: int = 2000
    token_coverage: float = 0.5
    token_lift: float = 5.0
    positional: float = 0.5
    min_firing_rows: int = 8

    def __post_init__(self) -> None:
        checks = [
            (self.near_zero >= 0, f"--near-zero must be >= 0, got {self.near_zero}"),
            (self.outlier_multiple > 1, f"--outlier-multiple must exceed 1, got {self.outlier_multiple}"),
            (0 < self.outlier_rate <= 1, f"--outlier-rate must be in (0, 1], got {self.outlier_rate}"),
            (self.sink_multiple > 1, f"--sink-multiple must exceed 1, got {self.sink_multiple}"),
            (
                len(self.massive) > 0 and all(m > 1 for m in self.massive),
                f"--massive multiples must each exceed 1, got {self.massive}",
            ),
            (0 < self.always_on <= 1, f"--always-on must be in (0, 1], got {self.always_on}"),
            (self.top >= 1, f"--top must be at least 1, got {self.top}"),
            (self.massive_events >= 0, f"massive_events must be >= 0, got {self.massive_events}"),
            (0 < self.token_coverage <= 1, f"token coverage must be in (0, 1], got {self.token_coverage}"),
            (self.token_lift >= 1, f"token lift must be >= 1, got {self.token_lift}"),
            (0 < self.positional <= 1, f"--positional must be in (0, 1], got {self.positional}"),
        ]
        for ok, message in checks:
            if not ok:
                raise NeuronError(message)


def merge_moments(
    a: tuple[float, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    b: tuple[float, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge (count, mean, M2, M3, M4) of two disjoint sets of rows; each tensor is [width], float64.

    M_p is the sum of p-th powers of deviations from the set's own mean (Pébay 2008, eq. 3.1).
    """
    n_a, mean_a, m2_a, m3_a, m4_a = a
    n_b, mean_b, m2_b, m3_b, m4_b = b
    if n_a == 0:
        return b
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = m2_a + m2_b + delta**2 * (n_a * n_b / n)
    m3 = m3_a + m3_b + delta**3 * (n_a * n_b * (n_a - n_b) / n**2) + 3 * delta * (n_a * m2_b - n_b * m2_a) / n
    m4 = (
        m4_a
        + m4_b
        + delta**4 * (n_a * n_b * (n_a**2 - n_a * n_b + n_b**2) / n**3)
        + 6 * delta**2 * (n_a**2 * m2_b + n_b**2 * m2_a) / n**2
        + 4 * delta * (n_a * m3_b - n_b * m3_a) / n
    )
    return n, mean, m2, m3, m4


def chunk_moments(x: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(count, mean, M2, M3, M4) per column of ``x`` [n, width], returned in float64.

    Deviations are taken from the chunk's own mean (computed in float64), so float32 arithmetic over one
    chunk loses nothing that matters; chunks are merged in float64 by :func:`merge_moments`.
    """
    mean = x.sum(0, dtype=torch.float64) / len(x)
    d = x - mean.float()
    d2 = d * d
    sums = (d2.sum(0), (d2 * d).sum(0), (d2 * d2).sum(0))
    return float(len(x)), mean, *(part.double() for part in sums)  # type: ignore[return-value]


Moments = tuple[float, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _counts(mask: torch.Tensor) -> torch.Tensor:
    """Per-column count [width] of a bool mask [n, width] (a float sum: faster than a bool sum on CPU)."""
    return mask.float().sum(0).long()


class UnitStatistics:
    """The running statistics of one hook's ``width`` units (see the module docstring)."""

    def __init__(self, width: int, settings: NeuronSettings) -> None:
        self.width = width
        self.settings = settings
        self.median_abs: float | None = None
        self.median_norm: float | None = None
        self.sink_rows = 0
        zeros = torch.zeros(width, dtype=torch.float64)
        self.moments: Moments = (0.0, zeros, zeros, zeros, zeros)
        self.minimum = torch.full((width,), float("inf"), dtype=torch.float64)
        self.maximum = torch.full((width,), float("-inf"), dtype=torch.float64)
        self.max_abs = torch.zeros(width, dtype=torch.float64)
        self.max_abs_row = torch.full((width,), -1, dtype=torch.int64)
        counts = ("fires", "zeros", "near_zero", "outliers")
        self.counts = {name: torch.zeros(width, dtype=torch.int64) for name in counts}
        self.massive_counts = torch.zeros(len(settings.massive), width, dtype=torch.int64)
        # per position and unit, over the unit's entries below the first massive multiple; values are
        # taken relative to the first chunk's mean (``shift``) so float32 chunk sums lose nothing
        self.position_sums = torch.zeros(0, width, dtype=torch.float64)
        self.position_counts = torch.zeros(0, width, dtype=torch.float64)
        self.position_squares = torch.zeros(width, dtype=torch.float64)
        self.shift: torch.Tensor | None = None
        self.top_values = torch.full((settings.top, width), float("-inf"))
        self.top_rows = torch.full((settings.top, width), -1, dtype=torch.int64)
        self.events = (torch.empty(0), torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64))

    @property
    def n_rows(self) -> int:
        return int(self.moments[0])

    TENSORS = (
        "minimum", "maximum", "max_abs", "max_abs_row", "massive_counts", "position_sums", "position_counts",
        "position_squares", "top_values", "top_rows",
    )  # fmt: skip

    def state(self) -> dict[str, torch.Tensor]:
        """Every running value as a tensor (for a checkpoint); :meth:`load_state` restores it exactly."""
        tensors = {name: getattr(self, name) for name in self.TENSORS}
        tensors.update({f"count.{name}": value for name, value in self.counts.items()})
        tensors.update({f"moment.{i}": value for i, value in enumerate(self.moments[1:])})
        tensors.update({f"event.{i}": value for i, value in enumerate(self.events)})
        medians = [float("nan") if m is None else m for m in (self.median_abs, self.median_norm)]
        scalars = [self.moments[0], *medians, float(self.sink_rows)]
        tensors["scalars"] = torch.tensor(scalars, dtype=torch.float64)
        if self.shift is not None:
            tensors["shift"] = self.shift
        return {name: tensor.contiguous() for name, tensor in tensors.items()}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        for name in self.TENSORS:
            setattr(self, name, tensors[name])
        self.counts = {name: tensors[f"count.{name}"] for name in self.counts}
        n, median, median_norm, sinks = tensors["scalars"].tolist()
        self.moments = (n, *(tensors[f"moment.{i}"] for i in range(4)))
        self.events = (tensors["event.0"], tensors["event.1"], tensors["event.2"])
        self.median_abs = None if median != median else median
        self.median_norm = None if median_norm != median_norm else median_norm
        self.sink_rows = int(sinks)
        self.shift = tensors.get("shift")

    def update(self, x: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> None:
        """Add rows ``x`` [n, width] (float32); ``rows`` are their ids (0, 1, ... over the stream) and
        ``positions`` their positions in their sequences, both int64 [n]."""
        if len(x) == 0:
            return
        s = self.settings
        x = x.float().contiguous()
        magnitude = x.abs()
        if self.median_abs is None:
            self.median_abs = float(magnitude.reshape(-1).median())
        median = max(self.median_abs, torch.finfo(torch.float32).tiny)
        moments = chunk_moments(x)
        if not torch.isfinite(moments[1]).all():  # a NaN or Inf anywhere makes its column's sum so
            bad = torch.nonzero(~torch.isfinite(x).all(1)).flatten()[:5]
            raise NeuronError(f"NaN/Inf activations at rows {rows[bad].tolist()}")
        self.moments = merge_moments(self.moments, moments)
        self.minimum = torch.minimum(self.minimum, x.amin(0).double())
        self.maximum = torch.maximum(self.maximum, x.amax(0).double())
        chunk_max = magnitude.amax(0).double()
        better = torch.nonzero(chunk_max > self.max_abs).flatten()
        if len(better):  # the row of a new maximum is looked up only for the columns that have one
            self.max_abs[better] = chunk_max[better]
            self.max_abs_row[better] = rows[magnitude[:, better].argmax(0)]
        self.counts["fires"] += _counts(x > s.fire_threshold)
        near_zero = magnitude <= s.near_zero * median
        self.counts["near_zero"] += _counts(near_zero)
        self.counts["zeros"] += _counts(near_zero & (x == 0)) if bool(near_zero.any()) else 0
        self._count_tails(x, magnitude, rows, median)
        norms = x.norm(dim=1)
        if self.median_norm is None:
            self.median_norm = float(norms.median())
        typical = norms <= s.sink_multiple * self.median_norm
        self.sink_rows += int((~typical).sum())
        if typical.all():
            self._add_positions(x, positions)
        elif typical.any():
            self._add_positions(x[typical], positions[typical])
        self._merge_top(x, rows)

    def _add_positions(self, x: torch.Tensor, positions: torch.Tensor) -> None:
        """Per-position counts and sums [positions, width], and the sum of squares [width], of rows ``x``."""
        if self.shift is None:
            self.shift = x.mean(0)
        needed = int(positions.max()) + 1
        if needed > len(self.position_counts):
            grow = needed - len(self.position_counts)
            self.position_sums = torch.cat(
                [self.position_sums, self.position_sums.new_zeros(grow, self.width)]
            )
            self.position_counts = torch.cat(
                [self.position_counts, self.position_counts.new_zeros(grow, self.width)]
            )
        shifted = x - self.shift
        # a one-hot [positions, n] matrix product sums rows per position ~7x faster than index_add_
        one_hot = torch.zeros(needed, len(x))
        one_hot[positions, torch.arange(len(x))] = 1.0
        self.position_counts[:needed] += torch.bincount(positions, minlength=needed)[:needed, None].double()
        self.position_sums[:needed] += (one_hot @ shifted).double()
        self.position_squares += (shifted * shifted).sum(0).double()

    def _merge_top(self, x: torch.Tensor, rows: torch.Tensor) -> None:
        """Merge the chunk into the ``top`` largest values per unit. Only entries above a unit's current
        ``top``-th value can enter; once few do, they are ranked sparsely (two stable sorts) instead of by
        a dense top-k over the whole chunk."""
        k, width = self.settings.top, self.width
        row, unit = torch.nonzero(x > self.top_values[-1], as_tuple=True)
        if len(row) == 0:
            return
        if len(row) > x.numel() // 64:  # a dense top-k costs about as much as sorting 1/64 of the entries
            values = torch.cat([self.top_values, x])
            ids = torch.cat([self.top_rows, rows[:, None].expand(-1, width)])
        else:
            value = x[row, unit]
            order = torch.argsort(value, descending=True, stable=True)
            order = order[torch.argsort(unit[order], stable=True)]
            grouped = unit[order]
            counts = torch.bincount(grouped, minlength=width)
            rank = torch.arange(len(order)) - (torch.cumsum(counts, 0) - counts)[grouped]
            keep = rank < k
            slot, column = rank[keep], grouped[keep]
            values = torch.cat([self.top_values, torch.full((k, width), float("-inf"))])
            ids = torch.cat([self.top_rows, torch.full((k, width), -1, dtype=torch.int64)])
            values[k + slot, column] = value[order][keep]
            ids[k + slot, column] = rows[row[order][keep]]
        self.top_values, best = values.topk(k, dim=0)
        self.top_rows = ids.gather(0, best)

    def _count_tails(
        self, x: torch.Tensor, magnitude: torch.Tensor, rows: torch.Tensor, median: float
    ) -> None:
        """Outlier and massive counts, and the largest massive entries, from one list of the (rare) entries
        beyond the smallest of those limits."""
        s = self.settings
        row, unit = torch.nonzero(magnitude >= min(s.outlier_multiple, *s.massive) * median, as_tuple=True)
        if len(row) == 0:
            return
        values = x[row, unit]
        size = values.abs()
        self.counts["outliers"] += torch.bincount(
            unit[size > s.outlier_multiple * median], minlength=self.width
        )
        for i, multiple in enumerate(s.massive):
            self.massive_counts[i] += torch.bincount(unit[size >= multiple * median], minlength=self.width)
        massive = size >= min(s.massive) * median
        if s.massive_events == 0 or not massive.any():
            return
        values = torch.cat([self.events[0], values[massive]])
        event_rows = torch.cat([self.events[1], rows[row[massive]]])
        units = torch.cat([self.events[2], unit[massive]])
        if len(values) > s.massive_events:
            order = values.abs().topk(s.massive_events).indices
            values, event_rows, units = values[order], event_rows[order], units[order]
        self.events = (values, event_rows, units)

    # ---- results, all per unit [width] -------------------------------------------------------------
    def mean(self) -> torch.Tensor:
        return self.moments[1]

    def variance(self) -> torch.Tensor:
        """Population variance (divided by n)."""
        return self.moments[2] / max(self.moments[0], 1.0)

    def skewness(self) -> torch.Tensor:
        n, _, m2, m3, _ = self.moments
        return torch.where(m2 > 0, (n**0.5) * m3 / m2.clamp(min=1e-300) ** 1.5, torch.zeros_like(m2))

    def kurtosis(self) -> torch.Tensor:
        """Pearson kurtosis n·M4 / M2² (3 for a normal distribution; 0 where a unit is constant)."""
        n, _, m2, _, m4 = self.moments
        return torch.where(m2 > 0, n * m4 / (m2 * m2).clamp(min=1e-300), torch.zeros_like(m2))

    def pooled_kurtosis(self) -> float:
        """Kurtosis of every entry of the hook pooled together: each unit's central moments shifted to the
        pooled mean (Σ(x - μ)⁴ = M4 + 4δ·M3 + 6δ²·M2 + n·δ⁴ for δ = unit mean - μ)."""
        n, mean, m2, m3, m4 = self.moments
        delta = mean - mean.mean()
        pooled_m2 = (m2 + n * delta**2).sum()
        pooled_m4 = (m4 + 4 * delta * m3 + 6 * delta**2 * m2 + n * delta**4).sum()
        total = n * self.width
        return float(total * pooled_m4 / pooled_m2**2) if float(pooled_m2) > 0 else 0.0

    def rate(self, name: str) -> torch.Tensor:
        return self.counts[name].double() / max(self.n_rows, 1)

    def massive_rates(self) -> torch.Tensor:
        """[len(massive), width] fraction of rows at or above each massive multiple."""
        return self.massive_counts.double() / max(self.n_rows, 1)

    def position_variance_explained(self) -> torch.Tensor:
        """η² of position per unit: between-position sum of squares / total sum of squares, over rows that
        are not sink rows (a few attention-sink rows would otherwise explain it)."""
        counts, sums = self.position_counts, self.position_sums
        total = counts.sum(0).clamp(min=1)
        grand = sums.sum(0) ** 2 / total
        between = (sums**2 / counts.clamp(min=1)).sum(0) - grand
        spread = self.position_squares - grand
        return torch.where(
            spread > 0, (between / spread.clamp(min=1e-300)).clamp(0, 1), torch.zeros_like(spread)
        )

    def position_means(self) -> torch.Tensor:
        """Mean value per position [positions, width], sink rows left out (NaN where none)."""
        shift = self.shift.double() if self.shift is not None else 0.0
        counts = self.position_counts
        return torch.where(counts > 0, self.position_sums / counts.clamp(min=1) + shift, torch.nan)
