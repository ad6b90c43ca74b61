"""Train a `Dictionary` from any iterable of float32 batches (e.g. ``ActivationStore.iter_batches``)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from featurelens.dictionaries.base import Dictionary, DictionaryError
from featurelens.dictionaries.registry import dictionary_class
from featurelens.training.config import TrainConfig, learning_rate_factor
from featurelens.training.controller import L0Controller
from featurelens.training.losses import auxk_loss, geometric_median
from featurelens.training.metrics import dead_fraction

Batch = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
FINAL_WINDOW = 10  # reported metrics average the last this-many steps


@dataclass(frozen=True)
class TrainResult:
    """A trained dictionary and the core metrics of its final steps (on training batches)."""

    dictionary: Dictionary
    fvu: float
    l0: float
    dead_fraction: float
    steps: int
    tokens: int
    tokens_per_second: float


def split_batch(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs [n, d_in], targets [n, d_out]) from an SAE batch x or a transcoder batch (x, y)."""
    x, y = batch if isinstance(batch, tuple) else (batch, batch)
    for name, t in (("inputs", x), ("targets", y)):
        if t.ndim != 2 or t.shape[0] == 0:
            raise DictionaryError(f"{name} must be a non-empty [batch, width] tensor, got {list(t.shape)}")
        bad = (~torch.isfinite(t)).any(dim=1).nonzero().flatten()
        if len(bad):
            raise DictionaryError(
                f"{name} have NaN/Inf in {len(bad)} rows of a batch (first: {bad[:5].tolist()})"
            )
    return x.float(), y.float()


def normalising_scale(x: torch.Tensor) -> float:
    """The scalar that gives rows of x [n, d] a mean squared norm of d."""
    return float(x.shape[1] ** 0.5 / x.norm(dim=1).mean().clamp_min(1e-12))


def build_for_batch(config: TrainConfig, x: torch.Tensor, y: torch.Tensor) -> Dictionary:
    """A dictionary sized, scaled and initialised from the first batch (decoder bias = geometric median)."""
    d_in, d_out = x.shape[1], y.shape[1]
    kwargs = config.dictionary_kwargs()
    if d_out != d_in:
        kwargs["d_out"] = d_out
    dictionary = dictionary_class(config.arch)(d_in, config.expansion * d_in, **kwargs)
    dictionary.reset_parameters(torch.Generator().manual_seed(config.seed))
    s_in = normalising_scale(x)
    s_out = s_in if not dictionary.is_transcoder else normalising_scale(y)
    dictionary.set_scales_(s_in, s_out)
    with torch.no_grad():
        dictionary.b_dec.copy_(geometric_median(y * s_out))
    return dictionary


def train_dictionary(config: TrainConfig, batches: Iterable[Batch]) -> TrainResult:
    """Train ``config.steps`` steps (fewer if ``batches`` runs out); batches are x or (x, y) float tensors."""
    iterator: Iterator[Batch] = iter(batches)
    first = next(iterator, None)
    if first is None:
        raise DictionaryError("no training batches: the activation source is empty")
    x, y = split_batch(first)
    dictionary = build_for_batch(config, x, y)
    optimizer = torch.optim.Adam(dictionary.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, config))
    controller = None
    if config.target_l0 is not None:
        if dictionary.sparsity_coefficient is None:
            raise DictionaryError(
                f"target_l0 needs a penalty architecture, not {config.arch!r} (set k instead)"
            )
        controller = L0Controller(config.target_l0, config.sparsity_coefficient)
    rows_since_fired = torch.zeros(dictionary.d_latent, dtype=torch.long)
    k_aux = config.auxk_k or max(1, dictionary.d_out // 2)
    window: list[tuple[float, float, float, float]] = []
    tokens, step, started = 0, 0, time.perf_counter()
    batch: Batch | None = first
    while batch is not None and step < config.steps:
        x, y = split_batch(batch)
        xs, ys = x * dictionary.input_scale, y * dictionary.output_scale
        out = dictionary.training_forward(xs, ys)
        residual = ys - out.y_hat
        loss = residual.square().sum(1).mean() / ys.shape[1] + out.extra_loss
        dead = rows_since_fired > config.dead_after_tokens
        if config.auxk_coefficient and dead.any():
            aux = auxk_loss(out.pre, dead, residual.detach(), dictionary.W_dec, k_aux)
            loss = loss + config.auxk_coefficient * aux
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        dictionary.remove_parallel_decoder_grad_()
        optimizer.step()
        scheduler.step()
        dictionary.normalize_decoder_()
        if controller is not None:
            dictionary.sparsity_coefficient = controller.update(float(out.l0))
        rows_since_fired += x.shape[0]
        rows_since_fired[out.fired] = 0
        with torch.no_grad():
            sse = float(residual.square().sum())
            total = float((ys - ys.mean(0)).square().sum())
        window = [*window[-(FINAL_WINDOW - 1) :], (sse, total, float(out.l0), float(dead.float().mean()))]
        tokens += x.shape[0]
        step += 1
        batch = next(iterator, None)
    elapsed = time.perf_counter() - started
    horizon = min(config.dead_after_tokens, tokens)
    return TrainResult(
        dictionary=dictionary,
        fvu=sum(w[0] for w in window) / max(sum(w[1] for w in window), 1e-12),
        l0=sum(w[2] for w in window) / len(window),
        dead_fraction=float(dead_fraction((rows_since_fired < horizon).long())),
        steps=step,
        tokens=tokens,
        tokens_per_second=tokens / elapsed if elapsed > 0 else float("inf"),
    )
