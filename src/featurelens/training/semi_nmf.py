"""Streaming semi-NMF: fit a `SemiNMFDictionary` over activations far larger than memory.

Directions start as the unit-norm k-means centroids of a sample. Each pass then reads every batch once:
codes = the dictionary's own sparse NNLS encode with the current directions, and the float64 sufficient
statistics H^T H [L, L], H^T X [L, d] and sum ||x||^2, sum x are accumulated; the directions are then the
exact least-squares solution F = (H^T H)^-1 H^T X, rescaled to unit rows. No pass holds more than one batch.
A direction no code used in a pass is re-seeded from a sample row. The objective ||X - H F||^2 of each pass
comes from the same statistics, so progress costs nothing extra.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from featurelens.dictionaries.base import DictionaryError
from featurelens.dictionaries.semi_nmf import SemiNMFDictionary, kmeans, unit_rows
from featurelens.training.config import TrainConfig
from featurelens.training.trainer import TrainResult

SEMI_NMF = SemiNMFDictionary.arch
PassCallback = Callable[["PassReport"], None]
BatchCallback = Callable[[int, int | None], None]  # (rows read over all passes, their total once known)
RIDGE = 1e-10  # relative to the mean diagonal of H^T H, only to keep the solve defined


@dataclass(frozen=True)
class PassReport:
    """One finished pass: its objective ||X - H F||^2 (new directions F) as a fraction of the variance,
    mean L0, the fraction of directions no code used (re-seeded), rows, batches and time."""

    index: int
    passes: int
    fvu: float
    l0: float
    dead_fraction: float
    rows: int
    batches: int
    seconds: float

    def line(self) -> str:
        """``semi-NMF pass 3/10: FVU 0.1234, L0 7.9, unused (re-seeded) 0.0%, 2.1 s``."""
        return (
            f"semi-NMF pass {self.index}/{self.passes}: FVU {self.fvu:.4f}, L0 {self.l0:.1f}, "
            f"unused (re-seeded) {self.dead_fraction:.1%}, {self.seconds:.1f} s"
        )


class SufficientStatistics:
    """Float64 running sums over the rows of one pass: H^T H, H^T X, sum ||x||^2, sum x, rows, non-zeros."""

    def __init__(self, d_latent: int, d: int, device: torch.device) -> None:
        f64 = torch.float64
        self.codes_gram = torch.zeros(d_latent, d_latent, dtype=f64, device=device)
        self.codes_x = torch.zeros(d_latent, d, dtype=f64, device=device)
        self.sum_squares = torch.zeros((), dtype=f64, device=device)
        self.sum_x = torch.zeros(d, dtype=f64, device=device)
        self.rows = 0
        self.active = 0

    def add(self, x: torch.Tensor, codes: torch.Tensor) -> None:
        """Add rows x [n, d] with their codes [n, L]."""
        h, xd = codes.double(), x.double()
        self.codes_gram += h.T @ h
        self.codes_x += h.T @ xd
        self.sum_squares += xd.square().sum()
        self.sum_x += xd.sum(0)
        self.rows += x.shape[0]
        self.active += int((codes != 0).sum())

    def directions(self) -> torch.Tensor:
        """The least-squares directions F [L, d] minimising ||X - H F||^2 for this pass's codes."""
        gram = self.codes_gram
        ridge = RIDGE * float(gram.diagonal().mean().clamp_min(1e-300))
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        return torch.linalg.solve(gram + ridge * eye, self.codes_x)

    def fvu(self, f: torch.Tensor) -> float:
        """||X - H F||^2 / total variance of X, from the sums alone (F [L, d] float64)."""
        sse = self.sum_squares - 2 * (f * self.codes_x).sum() + (f @ f.T * self.codes_gram).sum()
        total = self.sum_squares - self.sum_x.square().sum() / max(self.rows, 1)
        return float(sse.clamp_min(0) / total.clamp_min(1e-300))


def fit_semi_nmf(
    dictionary: SemiNMFDictionary,
    sample: torch.Tensor,
    batches: Callable[[], Iterable[torch.Tensor]],
    passes: int,
    *,
    seed: int = 0,
    on_pass: PassCallback | None = None,
    on_batch: BatchCallback | None = None,
) -> list[PassReport]:
    """Fit ``dictionary``'s directions in place by ``passes`` alternating passes; one report per pass.

    ``sample`` [m, d] (m >= d_latent, e.g. random training rows) seeds the directions by k-means (seeded by
    ``seed``); ``batches()`` yields the training rows [n, d] afresh for every pass, in any order. Work runs
    on the dictionary's device; ``b_dec`` is set to 0 (raw activations are factorised). ``on_batch`` hears
    the rows read so far over all passes and, from the second pass on, their total.
    """
    if passes < 1:
        raise DictionaryError(f"semi-NMF needs at least one pass, got {passes}")
    if sample.ndim != 2 or sample.shape[0] == 0:
        raise DictionaryError("no training rows: the activation source is empty")
    device = dictionary.W_dec.device
    sample = sample.to(device).float()
    centroids, _ = kmeans(sample, dictionary.d_latent, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        dictionary.W_dec.copy_(unit_rows(centroids)[0])
        dictionary.b_dec.zero_()
    reports: list[PassReport] = []
    for index in range(1, passes + 1):
        began = time.perf_counter()
        stats = SufficientStatistics(dictionary.d_latent, dictionary.d_in, device)
        n_batches = 0
        with torch.no_grad():
            for batch in batches():
                x = batch.to(device).float()
                stats.add(x, dictionary.encode(x))
                n_batches += 1
                if on_batch is not None:
                    per_pass = reports[0].rows if reports else 0
                    on_batch((index - 1) * per_pass + stats.rows, per_pass * passes or None)
        if stats.rows == 0:
            raise DictionaryError("no training rows: the activation source is empty")
        f = stats.directions()
        unused = stats.codes_gram.diagonal() <= 0
        fvu = stats.fvu(f)
        if unused.any():
            picks = torch.randint(sample.shape[0], (int(unused.sum()),), generator=generator)
            f[unused] = sample[picks.to(device)].double()
        with torch.no_grad():
            dictionary.W_dec.copy_(unit_rows(f)[0].float())
        report = PassReport(
            index=index,
            passes=passes,
            fvu=fvu,
            l0=stats.active / stats.rows,
            dead_fraction=float(unused.float().mean()),
            rows=stats.rows,
            batches=n_batches,
            seconds=time.perf_counter() - began,
        )
        reports.append(report)
        if on_pass is not None:
            on_pass(report)
    return reports


def train_semi_nmf(
    config: TrainConfig,
    sample: torch.Tensor,
    batches: Callable[[], Iterable[torch.Tensor]],
    passes: int,
    *,
    device: str | torch.device = "cpu",
    on_pass: PassCallback | None = None,
    on_batch: BatchCallback | None = None,
) -> TrainResult:
    """A semi-NMF dictionary of ``config`` (d_latent, k, seed) fitted by :func:`fit_semi_nmf` on ``device``,
    with the last pass's metrics."""
    width = sample.shape[1]
    dictionary = SemiNMFDictionary(width, config.d_latent(width), **config.dictionary_kwargs()).to(device)
    reports = fit_semi_nmf(
        dictionary, sample, batches, passes, seed=config.seed, on_pass=on_pass, on_batch=on_batch
    )
    last, seconds = reports[-1], sum(report.seconds for report in reports)
    tokens = sum(report.rows for report in reports)
    return TrainResult(
        config=config,
        dictionary=dictionary,
        fvu=last.fvu,
        l0=last.l0,
        dead_fraction=last.dead_fraction,
        steps=sum(report.batches for report in reports),
        tokens=tokens,
        tokens_per_second=tokens / seconds if seconds > 0 else float("inf"),
    )
