"""Train dictionaries from any iterable of float32 batches, several configurations in one pass."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from featurelens import distributed
from featurelens.dictionaries.base import Dictionary, DictionaryError
from featurelens.distributed import World, slice_rows
from featurelens.training.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from featurelens.training.config import TrainConfig
from featurelens.training.state import StepMetrics, TrainingRun, initial_dictionary

Batch = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]
StepCallback = Callable[[list[TrainingRun], list[StepMetrics]], None]


@dataclass(frozen=True)
class TrainResult:
    """A trained dictionary and the core metrics of its final steps (on training batches)."""

    config: TrainConfig
    dictionary: Dictionary
    fvu: float
    l0: float
    dead_fraction: float
    steps: int
    tokens: int
    tokens_per_second: float


@dataclass(frozen=True)
class Checkpointing:
    """Save the training state to ``folder`` every ``every`` steps; ``resume`` continues from it.

    ``source`` identifies the data (e.g. store path, hooks, rows): a checkpoint of other data is refused.
    """

    folder: Path
    every: int = 0
    resume: bool = False
    source: dict[str, Any] | None = None


def split_batch(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(inputs [n, d_in], targets [n, d_out], loss gradient [n, d_in] or None) from an SAE batch x, a
    transcoder batch (x, y), or (x, y, gradient) from a model's backward pass (gradient-aware archs)."""
    x, y, gradient = (*batch, None)[:3] if isinstance(batch, tuple) else (batch, batch, None)
    named = [("inputs", x), ("targets", y)] + ([("gradients", gradient)] if gradient is not None else [])
    for name, t in named:
        if t.ndim != 2 or t.shape[0] == 0:
            raise DictionaryError(f"{name} must be a non-empty [batch, width] tensor, got {list(t.shape)}")
        if torch.isfinite(t.sum()):  # cheap: one NaN/Inf anywhere makes the sum non-finite (or overflows)
            continue
        bad = (~torch.isfinite(t)).any(dim=1).nonzero().flatten()
        if len(bad):
            raise DictionaryError(
                f"{name} have NaN/Inf in {len(bad)} rows of a batch (first: {bad[:5].tolist()})"
            )
    return x.float(), y.float(), gradient.float() if gradient is not None else None


def own_rows(batch: Batch, world: World) -> Batch:
    """This rank's contiguous slice of every tensor of a global batch."""
    if isinstance(batch, torch.Tensor):
        return batch[slice_rows(batch.shape[0], world)]
    part = slice_rows(batch[0].shape[0], world)
    return tuple(t[part] for t in batch)  # type: ignore[return-value]


def _check_together(configs: Sequence[TrainConfig]) -> None:
    if not configs:
        raise DictionaryError("no training configuration given")
    for field in ("batch_size", "steps", "hook_in", "hook_out"):
        values = {getattr(config, field) for config in configs}
        if len(values) > 1:
            raise DictionaryError(
                f"configurations trained together must share {field}, got {sorted(map(str, values))}"
            )


def train_dictionaries(
    configs: Sequence[TrainConfig],
    batches: Iterable[Batch],
    *,
    checkpointing: Checkpointing | None = None,
    on_step: StepCallback | None = None,
    device: str | torch.device = "cpu",
) -> list[TrainResult]:
    """Train one dictionary per config on the same batches (x, or (x, y) for transcoders), read once.

    Runs ``steps`` steps or until ``batches`` ends. With ``checkpointing.resume`` and a checkpoint in its
    folder, the weights, optimiser and counters are restored and the first ``step`` batches are skipped,
    so the result equals an uninterrupted run given the same deterministic batches. Training runs on
    ``device``; batches may live anywhere.

    Inside a process group (torchrun, ``--workers``) every rank is given the same global batches and trains
    on its slice of each (:func:`featurelens.distributed.slice_rows`); see
    :mod:`featurelens.training.data_parallel`. The dictionary starts from the whole first batch, only rank 0
    writes checkpoints, and any number of ranks can resume one.
    """
    _check_together(configs)
    steps = configs[0].steps
    world = distributed.current_world()
    iterator: Iterator[Batch] = iter(batches)
    runs: list[TrainingRun] | None = None
    source = (checkpointing.source or {}) if checkpointing else {}
    if checkpointing and checkpointing.resume and (folder := find_checkpoint(checkpointing.folder)):
        runs = load_checkpoint(folder, list(configs), source, device)
        done = runs[0].step
        if sum(1 for _ in islice(iterator, done)) < done:
            raise DictionaryError(f"the activations ran out before the checkpoint's step {done}")
    pending = None
    if runs is None:
        pending = next(iterator, None)
        if pending is None:
            raise DictionaryError("no training batches: the activation source is empty")
        x, y, _ = split_batch(pending)  # the whole first batch: every rank starts from the same dictionary
        x, y = x.to(device), y.to(device)
        runs = [TrainingRun(config, initial_dictionary(config, x, y).to(device)) for config in configs]
    started, start_tokens = time.perf_counter(), runs[0].tokens
    saving = checkpointing if checkpointing and checkpointing.every and world.is_main else None
    while runs[0].step < steps:
        batch = pending if pending is not None else next(iterator, None)
        pending = None
        if batch is None:
            break
        if world.size > 1:
            if len(batch if isinstance(batch, torch.Tensor) else batch[0]) < world.size:
                break  # a last batch too small to give every rank a row
            batch = own_rows(batch, world)
        x, y, gradient = split_batch(batch)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        gradient = gradient.to(device, non_blocking=True) if gradient is not None else None
        metrics = [run.train_step(x, y, gradient=gradient) for run in runs]
        if on_step is not None:
            on_step(runs, metrics)
        if saving and runs[0].step % saving.every == 0:
            save_checkpoint(saving.folder, runs, source)
    elapsed = time.perf_counter() - started
    trained = runs[0].tokens - start_tokens
    return [
        TrainResult(
            config=run.config,
            dictionary=run.dictionary,
            fvu=run.fvu,
            l0=run.l0,
            dead_fraction=run.dead_fraction,
            steps=run.step,
            tokens=run.tokens,
            tokens_per_second=trained / elapsed if elapsed > 0 else float("inf"),
        )
        for run in runs
    ]


def train_dictionary(config: TrainConfig, batches: Iterable[Batch], **options: Any) -> TrainResult:
    """Train one dictionary; see :func:`train_dictionaries` for ``options``."""
    return train_dictionaries([config], batches, **options)[0]
