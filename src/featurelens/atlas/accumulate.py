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


@dataclass
class Selection:
    """Up to k chosen rows per latent, best score first: score, row, activation [k, L]; windows [k, L, W].

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
            torch.full((k, d_latent), -math.inf),
            torch.full((k, d_latent), -1, dtype=torch.long),
            torch.zeros(k, d_latent),
            torch.zeros(k, d_latent, width),
        )

    def merged(self, other: Selection) -> Selection:
        """The best k of both, per latent (ties keep the earlier selection first)."""
        k = self.score.shape[0]
        score = torch.cat([self.score, other.score])
        best = score.topk(min(k, score.shape[0]), dim=0).indices
        row = torch.cat([self.row, other.row]).gather(0, best)
        value = torch.cat([self.value, other.value]).gather(0, best)
        width = self.window.shape[2]
        window = torch.cat([self.window, other.window]).gather(0, best[:, :, None].expand(-1, -1, width))
        return Selection(score.gather(0, best), row, value, window)


@dataclass(frozen=True)
class Chunk:
    """Codes [n, L] of n consecutive rows, with each row's global row index and sequence bounds [n].

    ``start``/``stop`` are chunk-local: row i's sequence spans rows ``start[i] .. stop[i] - 1``.
    """

    codes: torch.Tensor
    first_row: int
    start: torch.Tensor
    stop: torch.Tensor


def sequence_bounds(sequences: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunk-local (start, stop) [n] of each row's run of equal sequence ids."""
    n = len(sequences)
    change = np.flatnonzero(np.diff(sequences)) + 1
    edges = np.concatenate([[0], change, [n]])
    run = np.repeat(np.arange(len(edges) - 1), np.diff(edges))
    return torch.from_numpy(edges[:-1][run]).long(), torch.from_numpy(edges[1:][run]).long()


def window_values(chunk: Chunk, rows: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Activations [k, L, W] of each latent around chunk-local ``rows`` [k, L] (-1 = empty slot -> 0)."""
    n, d_latent = chunk.codes.shape
    offsets = torch.arange(-before, after + 1)
    safe = rows.clamp_min(0)
    around = safe[:, :, None] + offsets
    inside = (around >= chunk.start[safe][:, :, None]) & (around < chunk.stop[safe][:, :, None])
    inside &= (rows >= 0)[:, :, None]
    flat = around.clamp(0, n - 1) * d_latent + torch.arange(d_latent)[None, :, None]
    return torch.where(inside, chunk.codes.reshape(-1)[flat], 0.0)


def best_per_latent(latents: torch.Tensor, scores: torch.Tensor, k: int, d_latent: int) -> torch.Tensor:
    """Indices [k, L] into the entries (``latents``, ``scores`` [m]) of each latent's k best scores, -1 pads.

    Stable: equal scores keep entry order.
    """
    by_score = torch.sort(scores, descending=True, stable=True).indices
    order = by_score[torch.sort(latents[by_score], stable=True).indices]
    grouped = latents[order]
    counts = torch.bincount(grouped, minlength=d_latent)
    group_start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order)) - group_start[grouped]
    keep = rank < k
    slots = torch.full((k, d_latent), -1, dtype=torch.long)
    slots[rank[keep], grouped[keep]] = order[keep]
    return slots


def entry_selection(
    chunk: Chunk,
    rows: torch.Tensor,
    latents: torch.Tensor,
    scores: torch.Tensor,
    k: int,
    settings: AtlasSettings,
) -> Selection:
    """A chunk's candidates: the k best-scoring entries (``rows``, ``latents``, ``scores`` [m]) per latent."""
    d_latent = chunk.codes.shape[1]
    slot = best_per_latent(latents, scores, k, d_latent)
    filled = slot >= 0
    local = torch.where(filled, rows[slot.clamp_min(0)], -1)
    score = torch.where(filled, scores[slot.clamp_min(0)], -math.inf)
    value = torch.where(
        filled, chunk.codes.reshape(-1)[local.clamp_min(0) * d_latent + torch.arange(d_latent)], 0.0
    )
    window = window_values(chunk, local, settings.before, settings.after)
    return Selection(score, torch.where(filled, local + chunk.first_row, -1), value, window)


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
        s = self.settings
        self.top = self.top.merged(entry_selection(chunk, rows, latents, values, s.top_k, s))
        keys = torch.rand(len(values), generator=self.generator)
        self.samples = self.samples.merged(entry_selection(chunk, rows, latents, -keys, s.samples, s))
        self.negatives = self.negatives.merged(self._negative_candidates(chunk, fired))
        if self.cooccurrence is not None:
            self._cooccur(fired)
        self.rows += len(codes)

    def _histogram(self, latents: torch.Tensor, values: torch.Tensor) -> None:
        bins = ((values.double().log10() - LOG10_MIN) * BINS_PER_DECADE).floor().clamp(0, N_BINS - 1).long()
        self.histogram.index_add_(0, latents * N_BINS + bins, torch.ones_like(bins))

    def _negative_candidates(self, chunk: Chunk, fired: torch.Tensor) -> Selection:
        """A few random rows per chunk; each latent may take those whose whole window is silent for it."""
        n, s = len(fired), self.settings
        n_candidates = min(n, max(4 * s.negatives, 64))
        rows = torch.randperm(n, generator=self.generator)[:n_candidates]
        offsets = torch.arange(-s.before, s.after + 1)
        around = rows[:, None] + offsets
        inside = (around >= chunk.start[rows][:, None]) & (around < chunk.stop[rows][:, None])
        silent = ~(fired[around.clamp(0, n - 1)] & inside[:, :, None]).any(1)  # [candidates, L]
        keys = torch.rand(silent.shape, generator=self.generator)
        score = torch.where(silent, -keys, -math.inf)
        best = score.topk(min(s.negatives, n_candidates), dim=0).indices
        picked = score.gather(0, best)
        row = torch.where(picked > -math.inf, rows[best] + chunk.first_row, -1)
        empty = torch.zeros(best.shape[0], self.d_latent, 0)
        return Selection(picked, row, torch.zeros(best.shape), empty)

    def _cooccur(self, fired: torch.Tensor) -> None:
        assert self.cooccurrence is not None
        per_row = fired.sum(1)
        widest = int(per_row.max()) if len(per_row) else 0
        if widest * widest * SCATTER_COST > self.d_latent * self.d_latent:
            dense = fired.float()
            self.cooccurrence += (dense.T @ dense).round().int()
            return
        values, latents = fired.float().topk(widest, dim=1)  # each row's firing latents, padded with 0s
        both = (values[:, :, None] * values[:, None, :]).bool()
        pairs = (latents[:, :, None] * self.d_latent + latents[:, None, :])[both]
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
            both = self.cooccurrence[first : first + 1024].double()
            either = self.count[first : first + 1024, None] + self.count[None, :] - both
            jaccard = torch.where(both > 0, both / either.clamp_min(1), -1.0)
            jaccard[torch.arange(len(both)), torch.arange(first, first + len(both))] = -1.0
            best = jaccard.topk(n, dim=1)
            ids.append(torch.where(best.values > 0, best.indices, -1))
            scores.append(best.values.clamp_min(0))
            counts.append(both.gather(1, best.indices).long())
        return torch.cat(ids), torch.cat(scores), torch.cat(counts)
