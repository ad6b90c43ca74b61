"""Train dictionaries live from a model and a corpus, without writing activations to disk.

Sequences are packed from the corpus exactly as `featurelens capture` would, run through the model (which
stops after the last hooked layer), and their rows (position 0 and special tokens left out) fill a shuffle
buffer of ``buffer_tokens`` rows that hands out shuffled batches. Rows whose norm exceeds the outlier
multiple of the first forward pass's median norm are left out, as in store training. Everything is
deterministic, so ``--resume`` regenerates and skips the batches a checkpoint already trained on.
Gradient-aware architectures (``needs_gradient``, e.g. gtopk) run the model forward and backward instead,
and each row travels with the loss gradient at the hook: batches are then (x, x, gradient).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from featurelens.capture.live import live_rows
from featurelens.capture.store import rebatch
from featurelens.corpus import CorpusConfig
from featurelens.dictionaries.base import DictionaryError
from featurelens.dictionaries.registry import dictionary_class
from featurelens.dictionaries.topk import check_k
from featurelens.models import load_model
from featurelens.training.config import K_ARCHITECTURES, TrainConfig
from featurelens.training.from_store import SavedDictionary, TrainingJob, fit_and_save
from featurelens.training.semi_nmf import SEMI_NMF
from featurelens.training.trainer import Batch, StepCallback


@dataclass(frozen=True)
class LiveTraining(TrainingJob):
    """Train on ``tokens`` tokens of ``corpus`` run through ``model`` (sequences of ``seq_len``)."""

    model: str = "smollm2"
    tokens: int = 200_000
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    seq_len: int = 256
    model_batch_size: int = 8
    buffer_tokens: int = 131_072

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tokens < 1:
            raise DictionaryError(f"--tokens must be a positive number of tokens, got {self.tokens}")
        if self.seq_len < 2 or self.model_batch_size < 1 or self.buffer_tokens < 1:
            raise DictionaryError("--seq-len must be >= 2, the model batch size and buffer size positive")


def filled_buffers(parts: Iterator[list[np.ndarray]], buffer_tokens: int) -> Iterator[list[np.ndarray]]:
    """Join aligned row chunks into buffers of at least ``buffer_tokens`` rows (the last may be short)."""
    pending: list[list[np.ndarray]] = []
    held = 0
    for part in parts:
        pending.append(part)
        held += len(part[0])
        if held >= buffer_tokens:
            yield [np.concatenate(columns) for columns in zip(*pending, strict=True)]
            pending, held = [], 0
    if pending:
        yield [np.concatenate(columns) for columns in zip(*pending, strict=True)]


def shuffled_batches(
    parts: Iterator[list[np.ndarray]],
    batch_size: int,
    buffer_tokens: int,
    seed: int,
    *,
    gradient: bool = False,
) -> Iterator[Batch]:
    """Shuffle aligned row chunks through a buffer of ``buffer_tokens`` rows; yield full batches.

    With ``gradient`` the last column is the loss gradient at the input hook: batches are (x, y, gradient).
    """
    rng = np.random.default_rng(seed)
    for batch in rebatch(filled_buffers(parts, buffer_tokens), batch_size, rng):
        tensors = [torch.from_numpy(column) for column in batch]
        if gradient:
            yield tensors[0], tensors[-2], tensors[-1]
        else:
            yield tensors[0] if len(tensors) == 1 else (tensors[0], tensors[1])


def train_live(
    job: LiveTraining, configs: Sequence[TrainConfig], on_step: StepCallback | None = None
) -> list[SavedDictionary]:
    """Train ``configs`` (sharing batch size and hooks) on activations computed as they are needed."""
    first = configs[0]
    if first.arch == SEMI_NMF:
        raise DictionaryError(
            "arch seminmf fits by whole passes over stored activations, not live: "
            "capture them with featurelens capture and train with --acts"
        )
    lm = load_model(job.model, device=job.device)
    hooks = list(dict.fromkeys([first.hook_in, first.hook_out or first.hook_in]))
    width = lm.capture(torch.ones(1, 2, dtype=torch.long), hooks)[first.hook_in].shape[-1]
    for config in configs:
        if config.arch in K_ARCHITECTURES:
            check_k(config.k, config.d_latent(width))
    rows = job.tokens * (job.seq_len - 1) // job.seq_len  # position 0 of every sequence is left out
    steps = math.ceil(rows / first.batch_size)  # special tokens and outliers may end the stream a bit sooner
    configs = [dataclasses.replace(config, steps=steps) for config in configs]
    gradient = any(dictionary_class(config.arch).needs_gradient for config in configs)
    parts = (
        rows.activations + ([rows.gradients] if rows.gradients is not None else [])
        for rows in live_rows(
            lm,
            hooks,
            job.corpus,
            seq_len=job.seq_len,
            n_tokens=job.tokens,
            batch_size=job.model_batch_size,
            gradient_hook=first.hook_in if gradient else None,
        )
    )
    batches = shuffled_batches(parts, first.batch_size, job.buffer_tokens, first.seed, gradient=gradient)
    source = {
        "model": job.model,
        "corpus": dataclasses.asdict(job.corpus),
        "tokens": job.tokens,
        "hooks": hooks,
    }
    provenance = {
        "model": job.model,
        "corpus": dataclasses.asdict(job.corpus),
        "seq_len": job.seq_len,
        "captured_tokens": job.tokens,
        "skip_positions": 1,
        "keep_special": False,
        "live": True,
    }
    return fit_and_save(job, configs, batches, source, provenance, lambda _dictionary: None, on_step)
