"""Train dictionaries on an activation store: hold out its tail, checkpoint, save each with its provenance.

An output folder holds one dictionary (``weights.safetensors``, ``config.json``) plus ``training.json``
(what it was trained on, training and held-out metrics), or, for several configurations trained in one
pass, one such subfolder per configuration. ``training.json`` is written last: its presence means done.

The output may be an fsspec URL (``s3://bucket/sae``): training then runs in a local staging folder (where
checkpoints are kept and ``--resume`` finds them) and the finished folder is uploaded, every ``config.json``
and ``training.json`` after the weights, so a remote ``training.json`` still means done.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial, wraps
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import numpy as np
import torch

from featurelens import distributed
from featurelens.capture import ActivationStore
from featurelens.capture.run import json_roundtrip
from featurelens.capture.store import write_json_atomic
from featurelens.dictionaries.base import Dictionary, DictionaryError
from featurelens.dictionaries.formats.safetensors import CONFIG
from featurelens.dictionaries.gradient_topk import needs_model_error
from featurelens.dictionaries.registry import dictionary_class
from featurelens.dictionaries.topk import check_k
from featurelens.evaluate.reconstruction import ReconstructionMetrics, reconstruction_metrics
from featurelens.models.loading import resolve_device
from featurelens.paths import RemotePath, describe, location, staged_output, uploaded_path
from featurelens.training.checkpoint import checkpoint_dir, find_checkpoint
from featurelens.training.config import K_ARCHITECTURES, TrainConfig
from featurelens.training.semi_nmf import SEMI_NMF, BatchCallback, PassCallback, train_semi_nmf
from featurelens.training.trainer import Batch, Checkpointing, StepCallback, TrainResult, train_dictionaries

TRAINING = "training.json"
FORMAT = "featurelens.training"
HOLDOUT_FRACTION = 0.1
HOLDOUT_MAX = 20_000
MIN_STEPS = 200  # fewer optimiser steps than this do not converge (the short-run warning)
SEMI_NMF_PASSES = 10
SEMI_NMF_SAMPLE = 32_768  # random training rows whose k-means centroids seed the directions


@dataclass(frozen=True)
class TrainingJob:
    """Where trained dictionaries go and how the run is kept: checkpoints, resume, overwrite, device."""

    out: str = "runs/demo/sae"
    checkpoint_every: int = 200
    resume: bool = False
    overwrite: bool = False
    device: str | None = None

    def __post_init__(self) -> None:
        if self.checkpoint_every < 0:
            raise DictionaryError(f"--checkpoint-every must be >= 0 steps, got {self.checkpoint_every}")


@dataclass(frozen=True)
class StoreTraining(TrainingJob):
    """Train on the store ``acts``.

    ``steps`` (default: ``epochs`` passes over the training rows) overrides the configs' own. ``epochs``
    defaults to 1, or to ``SEMI_NMF_PASSES`` alternating passes for semi-NMF, which takes no ``steps``.
    ``holdout_tokens`` rows at the end of the store are never trained on and measure the result
    (default: 10% of the rows, at most 20,000). Rows the store flags as norm outliers (attention-sink-like
    rows whose norm exceeds its outlier multiple of the median, ~1 in 10,000 on SmolLM2) are left out of
    both unless ``keep_outliers``: a single one can outweigh thousands of typical rows in the loss.
    """

    acts: str = "runs/demo/acts"
    epochs: int | None = None
    steps: int | None = None
    holdout_tokens: int | None = None
    keep_outliers: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs is not None and self.epochs < 1:
            raise DictionaryError(f"--epochs must be a positive integer, got {self.epochs}")
        if self.steps is not None and self.steps < 1:
            raise DictionaryError(f"--steps must be a positive integer, got {self.steps}")
        if self.holdout_tokens is not None and self.holdout_tokens < 0:
            raise DictionaryError(f"--holdout must be >= 0 tokens, got {self.holdout_tokens}")


@dataclass(frozen=True)
class SavedDictionary:
    """A trained dictionary written to ``path``, with its training and held-out metrics."""

    path: Path | RemotePath
    result: TrainResult
    heldout: ReconstructionMetrics | None


def run_name(config: TrainConfig, configs: Sequence[TrainConfig]) -> str:
    """Subfolder name from the fields that differ between ``configs``: e.g. ``topk-k32-x16``."""
    varying = {
        f.name for f in dataclasses.fields(TrainConfig) if len({getattr(c, f.name) for c in configs}) > 1
    }
    parts = [config.arch] if "arch" in varying else []
    short = {
        "k": "k",
        "expansion": "x",
        "latents": "L",
        "lr": "lr",
        "target_l0": "l0",
        "sparsity_coefficient": "c",
        "seed": "s",
    }
    parts += [f"{label}{getattr(config, field)}" for field, label in short.items() if field in varying]
    return "-".join(parts) or config.arch


def output_folders(out: Path, configs: Sequence[TrainConfig]) -> list[Path]:
    """The folder of each config's dictionary: ``out`` itself for one, subfolders for several."""
    if len(configs) == 1:
        return [out]
    names = [run_name(config, configs) for config in configs]
    if len(set(names)) < len(names):
        raise DictionaryError(f"two configurations are identical: {sorted(names)}")
    return [out / name for name in names]


def is_finished(folder: Path) -> bool:
    """True when ``folder`` holds a dictionary whose training completed."""
    return (folder / TRAINING).is_file()


def prepare_output(out: Path, folders: list[Path], *, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber another folder, a finished training or an unfinished one not being resumed."""
    if not out.exists() or not any(out.iterdir()):
        return
    ours = find_checkpoint(checkpoint_dir(out)) is not None or any(
        is_finished(p) for p in [out, *out.iterdir()] if p.is_dir()
    )
    if not ours:
        raise DictionaryError(f"{out} exists and is not a featurelens training folder; choose another --out")
    if overwrite:
        shutil.rmtree(out)
        return
    if all(is_finished(folder) for folder in folders):
        raise DictionaryError(f"{out} already holds trained dictionaries; pass --overwrite to train again")
    if not resume:
        raise DictionaryError(f"{out} holds an unfinished training run; pass --resume or --overwrite")


def heldout_rows(store: ActivationStore, holdout_tokens: int | None) -> tuple[int, int]:
    """(first held-out row, number of rows): training uses rows before it."""
    n = store.n_tokens
    held = holdout_tokens if holdout_tokens is not None else min(int(n * HOLDOUT_FRACTION), HOLDOUT_MAX)
    if held >= n:
        raise DictionaryError(f"--holdout {held} leaves nothing to train on: the store has {n} rows")
    return n - held, n


def typical_rows(store: ActivationStore, hooks: list[str]) -> tuple[np.ndarray, dict[str, float]]:
    """Bool mask [n_tokens] of rows within the store's outlier limit at every hook, and each hook's limit."""
    multiple = float(store.manifest["outliers"]["multiple"])
    keep = np.ones(store.n_tokens, dtype=bool)
    limits = {}
    for hook in hooks:
        norms = store.norms(hook)
        limits[hook] = multiple * float(np.median(norms))
        keep &= norms <= limits[hook]
    return keep, limits


def as_batch(batch: tuple[torch.Tensor, ...]) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """x for one hook, (x, y) for two."""
    return batch[0] if len(batch) == 1 else (batch[0], batch[1])


def epoch_batches(
    store: ActivationStore,
    hooks: list[str],
    batch_size: int,
    stop: int,
    epochs: int,
    seed: int,
    keep: np.ndarray | None,
) -> Iterator[Batch]:
    """``epochs`` shuffled passes over the kept rows of [0, stop): x, or (x, y) when two hooks are given."""
    for epoch in range(epochs):
        seed_e = seed * 10_007 + epoch
        for batch in store.iter_aligned_batches(hooks, batch_size, seed=seed_e, rows=(0, stop), keep=keep):
            yield as_batch(batch)


def short_run_warning(steps: int, batch_size: int, d_latent: int) -> str | None:
    """A one-line warning when a planned run cannot converge, else None.

    The rule: fewer than :data:`MIN_STEPS` optimiser steps, or fewer training tokens than latents (some
    latents could never be trained at all). Either way the held-out FVU of the result is poor.
    """
    tokens = steps * batch_size
    if steps >= MIN_STEPS and tokens >= d_latent:
        return None
    return (
        f"warning: {steps} steps x {batch_size} tokens ({tokens:,} tokens) for {d_latent:,} latents is too "
        f"short to converge (a dictionary wants >= {MIN_STEPS} steps and more tokens than latents): raise "
        "--epochs or --steps, lower --batch-size, or capture more tokens"
    )


def train_on_store(
    job: StoreTraining,
    configs: Sequence[TrainConfig],
    on_step: StepCallback | None = None,
    on_pass: PassCallback | None = None,
    on_batch: BatchCallback | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> list[SavedDictionary]:
    """Train ``configs`` (sharing batch size and hooks) on ``job.acts``; write each into its folder.

    Semi-NMF configs are fitted by passes instead of steps and report to ``on_pass`` and ``on_batch``.
    ``on_warning`` hears :func:`short_run_warning` before training starts."""
    for config in configs:
        if dictionary_class(config.arch).needs_gradient:
            raise needs_model_error(config.arch)
    store = ActivationStore.open(job.acts)
    first = configs[0]
    hooks = list(dict.fromkeys([first.hook_in, first.hook_out or first.hook_in]))
    for hook in hooks:
        store.activations(hook)  # an unknown hook fails here with the store's hook list
    width = store.manifest["hooks"][first.hook_in]["width"]
    d_out = store.manifest["hooks"][hooks[-1]]["width"]
    for config in configs:
        if config.arch in K_ARCHITECTURES:
            check_k(config.k, config.d_latent(width))
        dictionary_class(config.arch).check_training_fits(  # refused before anything is printed or written
            width, config.d_latent(width), d_out, config.batch_size, resolve_device(job.device)
        )
    stop, n_rows = heldout_rows(store, job.holdout_tokens)
    keep, limits = typical_rows(store, hooks)
    if job.keep_outliers:
        keep, limits = np.ones(store.n_tokens, dtype=bool), {}

    def heldout(dictionary: Dictionary) -> ReconstructionMetrics | None:
        if not keep[stop:n_rows].any():
            return None
        held = store.iter_aligned_batches(hooks, 4096, shuffle=False, rows=(stop, n_rows), keep=keep)
        return reconstruction_metrics(dictionary, (as_batch(b) for b in held))

    capture = store.manifest["config"]
    provenance = {
        "acts": describe(store.path),
        "model": store.manifest["model"]["spec"],
        "corpus": store.manifest["corpus"],
        "seq_len": store.manifest["seq_len"],
        "captured_tokens": capture["n_tokens"],
        "skip_positions": capture["skip_positions"],
        "keep_special": capture["keep_special"],
        "rows": {"train": [0, stop], "heldout": [stop, n_rows]},
        "max_norm": limits,
    }
    if first.arch == SEMI_NMF:
        if distributed.active():
            raise DictionaryError("arch seminmf fits in one process: leave out --workers and torchrun")
        progress = (on_pass, on_batch)
        return fit_semi_nmf_on_store(job, configs, store, (stop, keep), provenance, heldout, progress)
    per_epoch = math.ceil(int(keep[:stop].sum()) / first.batch_size)
    job_epochs = job.epochs or 1
    steps = job.steps or job_epochs * per_epoch
    configs = [dataclasses.replace(config, steps=steps) for config in configs]
    largest = max(config.d_latent(width) for config in configs)
    warning = short_run_warning(steps, first.batch_size, largest)
    source = {"acts": provenance["acts"], "rows": [0, stop], "hooks": hooks, "max_norm": limits}
    epochs = max(job_epochs, math.ceil(steps / per_epoch))
    batches = epoch_batches(store, hooks, first.batch_size, stop, epochs, first.seed, keep)
    warn = partial(on_warning, warning) if on_warning is not None and warning else None
    return fit_and_save(job, configs, batches, source, provenance, heldout, on_step, on_start=warn)


Job = TypeVar("Job", bound=TrainingJob)
Args = ParamSpec("Args")


def staged_training(
    fit: Callable[Concatenate[Job, Args], list[SavedDictionary]],
) -> Callable[Concatenate[Job, Args], list[SavedDictionary]]:
    """Run ``fit(job, ...)`` as it is for a local ``job.out``; for a URL, on a copy of ``job`` writing to a
    local staging folder that is uploaded once ``fit`` succeeds (replacing what was there, with
    ``--overwrite`` only), and return the dictionaries at their remote paths."""

    @wraps(fit)
    def run(job: Job, *args: Args.args, **kwargs: Args.kwargs) -> list[SavedDictionary]:
        target = location(job.out)
        if isinstance(target, Path):  # a file:// URL becomes its path
            return fit(dataclasses.replace(job, out=str(target)), *args, **kwargs)
        if target.exists() and not job.overwrite:
            raise DictionaryError(f"{target} already exists; pass --overwrite to train again")
        with staged_output(job.out, last=(CONFIG, TRAINING), keep=job.resume) as local:
            saved = fit(dataclasses.replace(job, out=str(local)), *args, **kwargs)
            target.remove()
        return [dataclasses.replace(s, path=uploaded_path(target, local, cast(Path, s.path))) for s in saved]

    return run


@staged_training
def fit_semi_nmf_on_store(
    job: StoreTraining,
    configs: Sequence[TrainConfig],
    store: ActivationStore,
    training_rows: tuple[int, np.ndarray],
    provenance: dict[str, Any],
    heldout: Callable[[Dictionary], ReconstructionMetrics | None],
    progress: tuple[PassCallback | None, BatchCallback | None],
) -> list[SavedDictionary]:
    """Fit semi-NMF ``configs`` one after another by whole passes over the kept rows before ``stop``."""
    stop, keep = training_rows
    if job.steps is not None:
        raise DictionaryError("arch seminmf fits by whole passes over the store: set --epochs, not --steps")
    folders = start_output(job, configs)
    hook, first = configs[0].hook_in, configs[0]
    kept = int(keep[:stop].sum())
    shuffled = store.iter_aligned_batches(
        [hook], max(1, min(SEMI_NMF_SAMPLE, kept)), seed=first.seed, rows=(0, stop), keep=keep
    )
    sample = next(iter(shuffled), (torch.zeros(0, 0),))[0]
    device = resolve_device(job.device)

    def batches() -> Iterator[torch.Tensor]:
        rows = store.iter_aligned_batches([hook], first.batch_size, shuffle=False, rows=(0, stop), keep=keep)
        return (batch[0] for batch in rows)

    passes, (on_pass, on_batch) = job.epochs or SEMI_NMF_PASSES, progress
    results = [
        train_semi_nmf(config, sample, batches, passes, device=device, on_pass=on_pass, on_batch=on_batch)
        for config in configs
    ]
    return save_trained(folders, results, provenance, heldout)


@staged_training
def fit_and_save(
    job: TrainingJob,
    configs: Sequence[TrainConfig],
    batches: Iterable[Batch],
    source: dict[str, Any],
    provenance: dict[str, Any],
    heldout: Callable[[Dictionary], ReconstructionMetrics | None],
    on_step: StepCallback | None,
    on_start: Callable[[], None] | None = None,
) -> list[SavedDictionary]:
    """Train ``configs`` on ``batches``, checkpointing in ``job.out``; save each with its provenance.

    ``on_start`` runs once the output folder is accepted, before the first step. In a data-parallel run
    rank 0 checks the folder and saves; the other ranks return no dictionaries."""
    out = Path(job.out)
    options = {"configs": [config.to_dict() for config in configs], "source": source, "out": job.out}
    distributed.check_same(json_roundtrip(options), "training options")
    folders = distributed.on_main(partial(start_output, job, configs), DictionaryError)
    if on_start is not None:
        on_start()
    checkpointing = Checkpointing(checkpoint_dir(out), job.checkpoint_every, job.resume, source)
    device = resolve_device(job.device)
    results = train_dictionaries(
        configs, batches, checkpointing=checkpointing, on_step=on_step, device=device
    )
    if folders is None:  # another rank than 0 of a data-parallel run: rank 0 saves
        return []
    saved = save_trained(folders, results, provenance, heldout)
    shutil.rmtree(checkpoint_dir(out), ignore_errors=True)
    return saved


def start_output(job: TrainingJob, configs: Sequence[TrainConfig]) -> list[Path]:
    """Check and create ``job.out``; the folder each config's dictionary will be saved in."""
    out = Path(job.out)
    folders = output_folders(out, configs)
    prepare_output(out, folders, resume=job.resume, overwrite=job.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    return folders


def save_trained(
    folders: Sequence[Path],
    results: Sequence[TrainResult],
    provenance: dict[str, Any],
    heldout: Callable[[Dictionary], ReconstructionMetrics | None],
) -> list[SavedDictionary]:
    """Save each result in its folder with its held-out metrics; ``training.json`` last (it means done)."""
    saved = []
    for folder, result in zip(folders, results, strict=True):
        held = heldout(result.dictionary.eval())
        result.dictionary.save(folder)
        write_json_atomic(folder / TRAINING, _provenance(result, held, provenance))
        saved.append(SavedDictionary(folder, result, held))
    return saved


def _provenance(
    result: TrainResult, heldout: ReconstructionMetrics | None, provenance: dict[str, Any]
) -> dict[str, Any]:
    from featurelens import __version__

    return {
        "format": FORMAT,
        "featurelens_version": __version__,
        "train_config": result.config.to_dict(),
        **provenance,
        "steps": result.steps,
        "tokens": result.tokens,
        "tokens_per_second": result.tokens_per_second,
        "train_metrics": {"fvu": result.fvu, "l0": result.l0, "dead_fraction": result.dead_fraction},
        "heldout_metrics": heldout.to_dict() if heldout else None,
    }


def read_training(folder: Path) -> dict[str, Any] | None:
    """The ``training.json`` of a dictionary folder, or None for a dictionary trained elsewhere."""
    path = folder / TRAINING
    if not path.is_file():
        return None
    try:
        payload: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DictionaryError(f"{path} is unreadable ({error})") from None
    return payload
