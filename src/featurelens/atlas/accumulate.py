"""One streaming pass over sparse codes: every per-latent statistic of the atlas, chunk by chunk.

A chunk is dense codes [n, L] for n consecutive rows made of whole sequences (the caller's unit of work);
nothing larger than a chunk, and no [tokens x L] matrix, is ever held. A latent *fires* on a row when its
activation is > 0 (dictionary codes are never negative; raw neurons can be, and their negative values do
not count as firing).

Per latent the accumulator keeps:

* count of rows where it fired, the sum and the maximum of its activations, and a histogram of its
  non-zero activations on fixed log-spaced bins (:data:`HISTOGRAM_EDGES`, 20 per decade from 1e-4 to 1e5;
  values beyond either end fall in the end bins);
* a :class:`Selection` of the ``top_k`` rows with the largest activations, each with the activations of a
  window of rows around it (``before`` rows before, ``after`` after, never crossing a sequence boundary);
* a uniform random sample of ``quantile_bins * per_bin`` firing rows (bottom-k of a random key per
  firing row, which is a uniform sample without replacement), later cut into equal-count activation bins;
* a uniform random sample of ``negatives`` rows whose whole window is silent for the latent, drawn from a
  few random candidate rows per chunk;
* co-occurrence counts (rows where both of two latents fired), exact, while L x L int32 fits the limit.

Per chunk, candidates are ranked for all latents at once (a sort of the non-zero entries by latent then
score) and merged with the running selection by one top-k over [2k, L]: the merge is exact, so the chunked
result equals a dense top-k over all rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

BINS_PER_DECADE = 20
LOG10_MIN, LOG10_MAX = -4, 5
N_BINS = (LOG10_MAX - LOG10_MIN) * BINS_PER_DECADE
HISTOGRAM_EDGES: list[float] = [10.0 ** (LOG10_MIN + i / BINS_PER_DECADE) for i in range(N_BINS + 1)]
SCATTER_COST = 64  # one scattered add costs about this many dense matmul flops (decides co-occurrence)


@dataclass(frozen=True)
class AtlasSettings:
    """What the atlas keeps per latent (see the module docstring)."""

    top_k: int = 20
    before: int = 16
    after: int = 4
    quantile_bins: int = 10
    per_bin: int = 5
    negatives: int = 20
    n_tokens_effects: int = 10
    n_neighbours: int = 10
    seed: int = 0
    chunk_tokens: int = 4096
    cooccurrence_max_latents: int = 16_384

    @property
    def window(self) -> int:
        return self.before + 1 + self.after

    @property
    def samples(self) -> int:
        return self.quantile_bins * self.per_bin


@dataclass(frozen=True)
class Chunk:
    """Codes [n, L] of n consecutive rows, with each row's global row index and sequence bounds [n].

    ``start``/``stop`` are chunk-local: row i's sequence spans rows ``start[i] .. stop[i] - 1``.
    """

    codes: torch.Tensor
    first_row: int
    start: torch.Tensor
    stop: torch.Tensor

    def windows(self, rows: torch.Tensor, latents: torch.Tensor, before: int, after: int) -> torch.Tensor:
        """Activations [m, W] of ``latents`` [m] on the rows around chunk-local ``rows`` [m] (0 outside
        the row's sequence)."""
        n, d_latent = self.codes.shape
        around = rows[:, None] + torch.arange(-before, after + 1)
        inside = (around >= self.start[rows][:, None]) & (around < self.stop[rows][:, None])
        flat = around.clamp(0, n - 1) * d_latent + latents[:, None]
        return torch.where(inside, self.codes.reshape(-1)[flat], 0.0)


@dataclass
class Selection:
    """Up to k chosen rows per latent, best score first: score (float64), row, activation [k, L]; windows
    [k, L, W].

    An empty slot has score -inf and row -1. ``window[j, l]`` holds latent l's activations on the rows
    ``row - before .. row + after`` (0 outside the row's sequence).
    """

    score: torch.Tensor
    row: torch.Tensor
    value: torch.Tensor
    window: torch.Tensor

    @classmethod
    def empty(cls, k: int, d_latent: int, width: int) -> Selection:
        return cls(
            torch.full((k, d_latent), -math.inf, dtype=torch.float64),
            torch.full((k, d_latent), -1, dtype=torch.long),
            torch.zeros(k, d_latent),
            torch.zeros(k, d_latent, width),
        )

    def merged(
        self,
        score: torch.Tensor,
        row: torch.Tensor,
        value: torch.Tensor,
        chunk: Chunk,
        before: int,
        after: int,
    ) -> Selection:
        """The best k per latent of this selection and a chunk's candidates (score, chunk-local row,
        value [k', L]; row -1 = none). Windows are cut only for the candidates that make it in; ties keep
        the earlier selection first."""
        k = self.score.shape[0]
        scores = torch.cat([self.score, score])
        best = scores.topk(k, dim=0).indices
        global_row = torch.where(row >= 0, row + chunk.first_row, -1)
        merged_row = torch.cat([self.row, global_row]).gather(0, best)
        width = self.window.shape[2]
        window = self.window.gather(0, best.clamp(max=k - 1)[:, :, None].expand(-1, -1, width))
        arrived = (best >= k) & (merged_row >= 0)
        if width and arrived.any():
            slots, latents = arrived.nonzero(as_tuple=True)
            local = merged_row[slots, latents] - chunk.first_row
            window[slots, latents] = chunk.windows(local, latents, before, after)
        value = torch.cat([self.value, value]).gather(0, best)
        return Selection(scores.gather(0, best), merged_row, value, window)


def sequence_bounds(sequences: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunk-local (start, stop) [n] of each row's run of equal sequence ids."""
    n = len(sequences)
    change = np.flatnonzero(np.diff(sequences)) + 1
    edges = np.concatenate([[0], change, [n]])
    run = np.repeat(np.arange(len(edges) - 1), np.diff(edges))
    return torch.from_numpy(edges[:-1][run]).long(), torch.from_numpy(edges[1:][run]).long()


def best_per_latent(latents: torch.Tensor, order_key: torch.Tensor, k: int, d_latent: int) -> torch.Tensor:
    """Indices [k, L] into entries (``latents`` [m]) of each latent's k entries with the smallest
    ``order_key`` [m] (int64, 0 <= key < 2**32), -1 where a latent has fewer. One int64 sort; equal keys
    keep entry order."""
    order = torch.sort(latents * 2**32 + order_key, stable=True).indices
    grouped = latents[order]
    counts = torch.bincount(grouped, minlength=d_latent)
    group_start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order)) - group_start[grouped]
    keep = rank < k
    slots = torch.full((k, d_latent), -1, dtype=torch.long)
    slots[rank[keep], grouped[keep]] = order[keep]
    return slots


def descending_key(values: torch.Tensor) -> torch.Tensor:
    """int64 keys in [0, 2**31) that sort positive float32 ``values`` from largest to smallest (the bit
    pattern of a positive float grows with its value)."""
    return (2**31 - 1) - values.contiguous().view(torch.int32).long()


def candidates(
    rows: torch.Tensor, latents: torch.Tensor, values: torch.Tensor, score: torch.Tensor, slot: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(score, chunk-local row, value) [k, L] of the entries in ``slot`` [k, L] (-1: score -inf, row -1)."""
    filled = slot >= 0
    safe = slot.clamp_min(0)
    return (
        torch.where(filled, score[safe], -math.inf),
        torch.where(filled, rows[safe], -1),
        torch.where(filled, values[safe], 0.0),
    )


class AtlasAccumulator:
    """Streaming per-latent statistics; feed chunks with :meth:`add` (see the module docstring)."""

    def __init__(self, d_latent: int, settings: AtlasSettings) -> None:
        self.d_latent = d_latent
        self.settings = settings
        self.rows = 0
        self.count = torch.zeros(d_latent, dtype=torch.long)
        self.total = torch.zeros(d_latent, dtype=torch.float64)
        self.max = torch.full((d_latent,), -math.inf)
        self.histogram = torch.zeros(d_latent * N_BINS, dtype=torch.long)
        width = settings.window
        self.top = Selection.empty(settings.top_k, d_latent, width)
        self.samples = Selection.empty(settings.samples, d_latent, width)
        self.negatives = Selection.empty(settings.negatives, d_latent, 0)
        self.cooccurrence: torch.Tensor | None = None
        if d_latent <= settings.cooccurrence_max_latents:
            self.cooccurrence = torch.zeros(d_latent, d_latent, dtype=torch.int32)
        self.generator = torch.Generator().manual_seed(settings.seed)

    @torch.no_grad()
    def add(self, codes: torch.Tensor, sequences: np.ndarray) -> None:
        """Take codes [n, L] (float32, CPU) of the next n rows; ``sequences`` [n] their sequence ids.

        A chunk must hold whole sequences (windows never look into the neighbouring chunks).
        """
        start, stop = sequence_bounds(sequences)
        chunk = Chunk(codes.float().contiguous(), self.rows, start, stop)
        fired = chunk.codes > 0
        rows, latents = fired.nonzero(as_tuple=True)
        values = chunk.codes[rows, latents]
        self.count += torch.bincount(latents, minlength=self.d_latent)
        self.total.index_add_(0, latents, values.double())
        self.max = torch.maximum(self.max, chunk.codes.amax(0))
        self._histogram(latents, values)
        s, d = self.settings, self.d_latent
        top = best_per_latent(latents, descending_key(values), s.top_k, d)
        self.top = self.top.merged(
            *candidates(rows, latents, values, values.double(), top), chunk, s.before, s.after
        )
        keys = torch.randint(0, 2**31, (len(values),), generator=self.generator)
        sampled = best_per_latent(latents, keys, s.samples, d)
        sample = candidates(rows, latents, values, -keys.double(), sampled)
        self.samples = self.samples.merged(*sample, chunk, s.before, s.after)
        self.negatives = self.negatives.merged(*self._negative_candidates(chunk, fired), chunk, 0, 0)
        if self.cooccurrence is not None:
            self._cooccur(rows, latents, len(codes))
        self.rows += len(codes)

    def _histogram(self, latents: torch.Tensor, values: torch.Tensor) -> None:
        bins = ((values.double().log10() - LOG10_MIN) * BINS_PER_DECADE).floor().clamp(0, N_BINS - 1).long()
        self.histogram.index_add_(0, latents * N_BINS + bins, torch.ones_like(bins))

    def _negative_candidates(
        self, chunk: Chunk, fired: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A few random rows per chunk; each latent may take those whose whole window is silent for it."""
        n, s = len(fired), self.settings
        n_candidates = min(n, max(4 * s.negatives, 64))
        rows = torch.randperm(n, generator=self.generator)[:n_candidates]
        around = rows[:, None] + torch.arange(-s.before, s.after + 1)
        inside = (around >= chunk.start[rows][:, None]) & (around < chunk.stop[rows][:, None])
        silent = ~(fired[around.clamp(0, n - 1)] & inside[:, :, None]).any(1)  # [candidates, L]
        keys = torch.rand(silent.shape, generator=self.generator, dtype=torch.float64)
        score = torch.where(silent, -keys, -math.inf)
        best = score.topk(min(s.negatives, n_candidates), dim=0)
        row = torch.where(best.values > -math.inf, rows[best.indices], -1)
        return best.values, row, torch.zeros(best.values.shape)

    def _cooccur(self, rows: torch.Tensor, latents: torch.Tensor, n: int) -> None:
        """Count the chunk's pairs a < b of co-firing latents (entries ``rows``, ``latents`` [m] in row
        order) into the upper triangle of :attr:`cooccurrence`."""
        assert self.cooccurrence is not None
        per_row = torch.bincount(rows, minlength=n)
        widest = int(per_row.max()) if n else 0
        if widest * widest * SCATTER_COST > self.d_latent * self.d_latent:
            dense = torch.zeros(n, self.d_latent)
            dense[rows, latents] = 1.0
            self.cooccurrence += torch.triu(dense.T @ dense, diagonal=1).round().int()
            return
        first = torch.cumsum(per_row, 0) - per_row
        padded = torch.full((n, widest), -1, dtype=torch.long)
        padded[rows, torch.arange(len(rows)) - first[rows]] = latents
        upper = torch.ones(widest, widest, dtype=torch.bool).triu(diagonal=1)  # latents ascend along a row
        both = (padded[:, :, None] >= 0) & (padded[:, None, :] >= 0) & upper
        pairs = (padded[:, :, None] * self.d_latent + padded[:, None, :])[both]
        self.cooccurrence.view(-1).index_add_(0, pairs, torch.ones_like(pairs, dtype=torch.int32))

    def quantile_order(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The sample cut into equal-count activation bins: (slot order, bin) [S, L], lowest first.

        ``order[:, l]`` lists latent l's sample slots by increasing activation (empty slots last, bin -1).
        """
        filled = self.samples.row >= 0
        order = torch.where(filled, self.samples.value, math.inf).argsort(dim=0, stable=True)
        n_filled = filled.sum(0, keepdim=True)
        rank = torch.arange(order.shape[0])[:, None].expand_as(order)
        bins = torch.div(rank * self.settings.quantile_bins, n_filled.clamp_min(1), rounding_mode="floor")
        return order, torch.where(rank < n_filled, bins, -1)

    def pair_counts(self, first: int, stop: int) -> torch.Tensor:
        """Rows ``first:stop`` of the symmetric co-occurrence counts [b, L] (diagonal: own counts)."""
        assert self.cooccurrence is not None
        stop = min(stop, self.d_latent)
        counts = self.cooccurrence[first:stop] + self.cooccurrence[:, first:stop].T
        counts[torch.arange(stop - first), torch.arange(first, stop)] = self.count[first:stop].int()
        return counts

    def cooccurring(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Each latent's ``n`` most co-occurring others by Jaccard index: (ids, jaccard, counts) [L, n].

        Jaccard = both fired / either fired. Slots without a co-occurring latent hold id -1.
        None when the counts were not kept (more latents than the co-occurrence limit).
        """
        if self.cooccurrence is None:
            return None
        n = min(n, self.d_latent - 1)
        ids, scores, counts = [], [], []
        for first in range(0, self.d_latent, 1024):
            both = self.pair_counts(first, first + 1024).double()
            either = self.count[first : first + 1024, None] + self.count[None, :] - both
            jaccard = torch.where(both > 0, both / either.clamp_min(1), -1.0)
            jaccard[torch.arange(len(both)), torch.arange(first, first + len(both))] = -1.0
            best = jaccard.topk(n, dim=1)
            ids.append(torch.where(best.values > 0, best.indices, -1))
            scores.append(best.values.clamp_min(0))
            counts.append(both.gather(1, best.indices).long())
        return torch.cat(ids), torch.cat(scores), torch.cat(counts)
