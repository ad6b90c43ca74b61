"""Scaling out: capture and training tokens/s at 1 and 2 processes here, the communication share of a
data-parallel training step, and a projection to 8 and 64 GPUs for a 2B-parameter model.

Measured on this machine, every run a subprocess through the real CLI:

- **capture**: ``featurelens capture --model smollm2`` of ``layers.15.resid_post`` (fp32 store, shards of
  ``--shard-tokens`` so both ranks get the same number of shards) as 1 process with 2 threads, 1 process
  with 1 thread (the per-core baseline) and ``--workers 2`` (one thread each). tokens/s is the CLI's own
  figure: all ranks' tokens over the time from the barrier after every rank has loaded the model to the
  end of the last shard (model loading not counted; the end-to-end wall time is printed beside it).
- **training**: ``featurelens train`` of a TopK SAE (k 32, 16 x 576 = 9,216 latents, batches of 4,096
  tokens, ``--steps``) on the store the 1-process capture wrote, in the same three layouts; tokens/s from
  the run's ``training.json`` (the training loop only, data loading from the store included).
- **where a step's time goes**: the same training, launched by ``torchrun`` (1 process on the batch and on
  half of it, 2 processes; one thread each) on this script, which wraps featurelens' training step before
  calling the CLI: the step itself, the optimiser's update (from Adam's step to the step's end, via torch's
  global optimiser hook), and featurelens' two per-step collectives, ``step_statistics`` (one all-reduce of
  the step's statistics after the forward pass) and ``all_reduce_step`` (one flat all-reduce of every
  gradient after the backward pass). Each wrapped collective first waits at a barrier, timed apart (the
  slower rank's lead), then times the collective itself; the time between steps is reading the next batch.
  Communication share = the two collectives / the whole step.
- **gloo all-reduce** between 2 otherwise idle processes, fp32 buffers from 256 KiB to the dictionary's
  gradient size, fitted to ``time = latency + bytes / bandwidth``. A model check predicts the 2-process step
  from a 1-process step on half the batch (what each rank computes), the whole batch's store read (every
  rank reads it) and these all-reduces, and compares it with the measured one.

On 2 cores, 2 processes each get one core, so they can at best match 1 process with 2 threads (which uses
the same two cores through intra-op threads) and pay the all-reduce on top: the 2-process figures show the
distributed path works and what it costs, while the per-core speedup is read against 1 process, 1 thread.

The projection to 8 and 64 GPUs (a 16k-latent TopK SAE, data-parallel as ``featurelens train`` does it,
and a 1M-latent one, latent-sharded as ``ShardedTopK`` does it) is arithmetic on stated assumptions, in
the terms the measurement splits a step into: the dense-equivalent encoder (6 d L FLOPs per token) at an
assumed fraction of an H100's bf16 peak, a memory-bound parameter update on every GPU, and ring
collectives at 2(N-1)/N x bytes / bandwidth + 2(N-1) x latency at assumed NVLink and InfiniBand
bandwidths. Every assumption is printed with the table; the main ones are flags. No GPU was available when
this script was written; nothing in it needs one (a GPU, if present, is named in the header and unused).

Each layout runs ``--rounds`` times (default 2, interleaved) and keeps its fastest run. Reproduce (about
8-10 minutes on a quiet 2-core CPU; figures appended to benchmarks/results/scaling.txt)::

    .venv/bin/python benchmarks/scaling.py
    .venv/bin/python benchmarks/scaling.py --capture-tokens 49152 --train-steps 80 --rounds 3  # steadier
    .venv/bin/python benchmarks/scaling.py --projection-only
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "scaling.txt"
HOOK = "layers.15.resid_post"
K, EXPANSION, BATCH = 32, 16, 4096
LAYOUTS = (  # (label, processes, threads per process)
    ("1 process, 2 threads", 1, 2),
    ("1 process, 1 thread", 1, 1),
    ("2 processes, 1 thread each", 2, 1),
)
TRAIN_WORKER, ALLREDUCE_WORKER = "_train-worker", "_allreduce-worker"
WARM_UP_STEPS = 3  # the first steps allocate buffers and fill the shuffle buffer: left out of step means


def environment(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def featurelens_cli() -> list[str]:
    return [sys.executable, "-m", "featurelens.cli.main"]


def torchrun(processes: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]


def run(command: list[str], threads: int) -> tuple[float, str]:
    """Wall seconds and stdout of ``command``; exits with its stderr if it fails."""
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=environment(threads))
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started, result.stdout


def load_average() -> float:
    return os.getloadavg()[0]


def wait_for_quiet(max_load: float, patience_s: float) -> None:
    """Wait (at most ``patience_s``) until the 1-minute load average is below ``max_load``."""
    deadline = time.monotonic() + patience_s
    while load_average() > max_load and time.monotonic() < deadline:
        time.sleep(10)


@dataclass
class Measured:
    layout: str
    processes: int
    threads: int
    tokens_per_s: float
    wall_s: float
    load: tuple[float, float]  # 1-minute load average before and after

    def row(self, baseline: float, per_core: float) -> str:
        return (
            f"{self.layout:<28} {self.tokens_per_s:>10,.0f} {self.tokens_per_s / baseline:>6.2f}x "
            f"{self.tokens_per_s / per_core:>6.2f}x {self.wall_s:>7.1f} s   "
            f"{self.load[0]:.1f} / {self.load[1]:.1f}"
        )


def table(title: str, rows: list[Measured]) -> list[str]:
    baseline, per_core = rows[0].tokens_per_s, rows[1].tokens_per_s
    head = f"{'layout':<28} {'tok/s':>10} {'vs 1p2t':>7} {'vs 1p1t':>7} {'wall':>9}   load before / after"
    return [title, head, *(row.row(baseline, per_core) for row in rows)]


# -- capture and training through the CLI ----------------------------------------------------------------


CAPTURED = re.compile(r"captured ([\d,]+) tokens in ([\d.]+)s")


def measure_capture(out: Path, tokens: int, shard_tokens: int, processes: int, threads: int) -> Measured:
    layout = next(label for label, p, t in LAYOUTS if (p, t) == (processes, threads))
    command = [
        *featurelens_cli(),
        "capture",
        "--model",
        "smollm2",
        "--hook",
        HOOK,
        "--tokens",
        str(tokens),
        "--shard-tokens",
        str(shard_tokens),
        "--out",
        str(out),
        "--overwrite",
        "--workers",
        str(processes),
    ]
    before = load_average()
    wall, stdout = run(command, threads)
    found = CAPTURED.search(stdout)
    if found is None:
        sys.exit(f"no 'captured ... tokens in ...s' line in the capture's output:\n{stdout[-2000:]}")
    speed = int(found[1].replace(",", "")) / float(found[2])
    return Measured(layout, processes, threads, speed, wall, (before, load_average()))


def train_arguments(store: Path, out: Path, steps: int, batch: int = BATCH) -> list[str]:
    return [
        "train",
        "--acts",
        str(store),
        "--arch",
        "topk",
        "--k",
        str(K),
        "--expansion",
        str(EXPANSION),
        "--batch-size",
        str(batch),
        "--steps",
        str(steps),
        "--checkpoint-every",
        "0",
        "--out",
        str(out),
        "--overwrite",
    ]


def measure_training(store: Path, out: Path, steps: int, processes: int, threads: int) -> Measured:
    layout = next(label for label, p, t in LAYOUTS if (p, t) == (processes, threads))
    before = load_average()
    command = [*featurelens_cli(), *train_arguments(store, out, steps), "--workers", str(processes)]
    wall, _ = run(command, threads)
    speed = json.loads((out / "training.json").read_text())["tokens_per_second"]
    return Measured(layout, processes, threads, speed, wall, (before, load_average()))


def gradient_floats(folder: Path) -> int:
    """Floats in featurelens' flat all-reduce for this dictionary: its parameters, float buffers, the loss."""
    from featurelens.dictionaries.base import Dictionary

    dictionary = Dictionary.load(folder)
    buffers = sum(b.numel() for b in dictionary.buffers() if b.is_floating_point())
    return sum(p.numel() for p in dictionary.parameters()) + buffers + 1


# -- the timing hook inside the training step (a torchrun worker running this file) ----------------------


def train_worker(prefix: str, argv: list[str]) -> int:
    """Run ``featurelens <argv>`` as this torchrun rank with featurelens' per-step collectives timed."""
    import torch.distributed as dist
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    import featurelens.training.state as state
    from featurelens.cli.main import main

    timings: dict[str, list[float]] = {
        "began": [],  # perf_counter at each step's start: the loop's pace, reading the store included
        "step": [],
        "update": [],  # from the optimiser's step to the end of the step: the same on every rank
        "stats": [],
        "grads": [],
        "stats_wait": [],
        "grads_wait": [],
    }

    def timed(name: str, collective: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            dist.barrier()  # the wait for the slower rank, apart from the collective itself
            arrived = time.perf_counter()
            result = collective(*args, **kwargs)
            timings[f"{name}_wait"].append(arrived - began)
            timings[name].append(time.perf_counter() - arrived)
            return result

        return wrapper

    step = state.TrainingRun.train_step
    update_began = [0.0]

    def mark_update(optimizer: Any, args: Any, kwargs: Any) -> None:
        update_began[0] = time.perf_counter()

    def timed_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        result = step(self, *args, **kwargs)
        ended = time.perf_counter()
        timings["began"].append(began)
        timings["step"].append(ended - began)
        timings["update"].append(ended - update_began[0])  # Adam, decoder norms, dead-latent counters
        return result

    register_optimizer_step_pre_hook(mark_update)

    state.step_statistics = timed("stats", state.step_statistics)
    state.all_reduce_step = timed("grads", state.all_reduce_step)
    state.TrainingRun.train_step = timed_step
    code = main(argv)
    Path(f"{prefix}.{os.environ['RANK']}.json").write_text(json.dumps(timings))
    return code


@dataclass
class StepTimes:
    """Mean milliseconds per step over every rank, warm-up steps left out."""

    loop_ms: float  # from one step's start to the next: the step and reading the next batch from the store
    step_ms: float  # inside ``train_step``: forward, backward, collectives, optimiser
    update_ms: float  # the optimiser step and decoder upkeep: every rank updates every parameter
    stats_ms: float
    grads_ms: float
    wait_ms: float  # at the barrier before the two collectives: the slower rank's lead
    tokens_per_s: float

    @property
    def comm_ms(self) -> float:
        return self.stats_ms + self.grads_ms

    @property
    def rows_ms(self) -> float:
        """Forward and backward passes: the part that shrinks with each rank's share of the rows."""
        return self.step_ms - self.update_ms - self.comm_ms - self.wait_ms


def measure_step_times(
    store: Path, out: Path, steps: int, processes: int, batch: int, scratch: Path
) -> StepTimes:
    """Per-step times of a ``processes``-rank torchrun training (1 thread each) through the timing hook."""
    prefix = scratch / f"timings-{processes}-{batch}"
    arguments = train_arguments(store, out, steps, batch)
    command = [*torchrun(processes), __file__, TRAIN_WORKER, str(prefix), *arguments]
    run(command, threads=1)
    ranks = [json.loads(Path(f"{prefix}.{rank}.json").read_text()) for rank in range(processes)]

    def mean_ms(name: str) -> float:
        values = [v for rank in ranks for v in rank[name][WARM_UP_STEPS:]]
        return 1000 * statistics.mean(values) if values else 0.0

    loops = [b - a for rank in ranks for a, b in itertools.pairwise(rank["began"][WARM_UP_STEPS:])]
    return StepTimes(
        loop_ms=1000 * statistics.mean(loops),
        step_ms=mean_ms("step"),
        update_ms=mean_ms("update"),
        stats_ms=mean_ms("stats"),
        grads_ms=mean_ms("grads"),
        wait_ms=mean_ms("stats_wait") + mean_ms("grads_wait"),
        tokens_per_s=json.loads((out / "training.json").read_text())["tokens_per_second"],
    )


# -- the gloo all-reduce micro-benchmark (a torchrun worker running this file) ---------------------------


def allreduce_worker(out: str, sizes: list[int], repeats: int) -> int:
    """Median seconds of a gloo all-reduce of each size (fp32 elements), written by rank 0 to ``out``."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    medians = {}
    for size in sizes:
        buffer = torch.ones(size)
        times = []
        for attempt in range(repeats + 3):
            dist.barrier()
            began = time.perf_counter()
            dist.all_reduce(buffer)
            if attempt >= 3:
                times.append(time.perf_counter() - began)
        medians[size] = statistics.median(times)
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps(medians))
    dist.destroy_process_group()
    return 0


@dataclass
class AllReduceFit:
    latency_s: float
    bandwidth: float  # bytes/s of the ring's bus: time = latency + 2(N-1)/N * bytes / bandwidth
    points: dict[int, float]  # bytes -> median seconds

    def seconds(self, nbytes: int, ranks: int = 2) -> float:
        return self.latency_s + 2 * (ranks - 1) / ranks * nbytes / self.bandwidth


def measure_allreduce(largest_floats: int, scratch: Path, repeats: int = 15) -> AllReduceFit:
    sizes = sorted({1 << 16, 1 << 19, 1 << 21, 1 << 23, largest_floats})
    out = scratch / "allreduce.json"
    command = [*torchrun(2), __file__, ALLREDUCE_WORKER, str(out), str(repeats), *map(str, sizes)]
    run(command, threads=1)
    points = {4 * int(size): seconds for size, seconds in json.loads(out.read_text()).items()}
    # least squares of time = a + b * bytes (2 ranks: the ring moves 2(N-1)/N = 1 x the bytes)
    xs, ys = list(points), list(points.values())
    x_mean, y_mean = statistics.mean(xs), statistics.mean(ys)
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - x_mean) ** 2 for x in xs
    )
    return AllReduceFit(max(0.0, y_mean - slope * x_mean), 1 / slope, points)


# -- the projection ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assumptions:
    d_model: int = 2304  # Gemma-2-2B's residual width
    k: int = 32
    rows_per_gpu: int = 4096  # tokens per GPU per step
    peak_tflops: float = 989.0  # H100 SXM dense bf16 tensor-core peak
    achieved: float = 0.30  # fraction of it the whole SAE step reaches (top-k, decoder, Adam absorbed)
    nvlink_gbs: float = 360.0  # NCCL all-reduce bus bandwidth within an 8-GPU NVLink node, GB/s
    infiniband_gbs: float = 40.0  # per GPU across nodes (8 x 400 Gb/s NDR per node), GB/s
    nvlink_latency_us: float = 5.0  # per ring hop
    infiniband_latency_us: float = 10.0
    hbm_gib: float = 80.0
    hbm_tbs: float = 2.5  # memory bandwidth reached by the parameter update (of H100 SXM's 3.35 TB/s)
    update_bytes: int = 28  # per parameter: Adam reads weight, gradient, 2 moments and writes 3 (fp32)
    capture_gflop_per_token: float = 2.0  # Gemma-2-2B to its middle layer: ~2 x 2.0B non-embedding / 2


@dataclass
class Projection:
    name: str
    gpus: int
    link: str
    compute_ms: float
    update_ms: float
    comm_ms: float
    memory_gib: float
    tokens_per_step: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / (self.step_ms / 1000)

    @property
    def step_ms(self) -> float:
        return self.compute_ms + self.update_ms + self.comm_ms

    def row(self, assumptions: Assumptions) -> str:
        fits = self.memory_gib <= assumptions.hbm_gib * 0.9
        speed = f"{self.tokens_per_s / 1e6:>8.2f}M" if fits else f"{'no fit':>9}"
        share = self.comm_ms / self.step_ms
        return (
            f"{self.name:<34} {self.gpus:>4} {self.link:<17} {self.compute_ms:>8.2f} {self.update_ms:>7.2f} "
            f"{self.comm_ms:>7.2f} "
            f"{share:>6.0%} {self.memory_gib:>7.1f} {speed}"
        )


def ring_seconds(
    nbytes: float, ranks: int, gpus: int, assumptions: Assumptions, gather: bool = False
) -> tuple[float, str]:
    """A ring all-reduce of ``nbytes`` (or all-gather of ``nbytes`` per rank) over ``ranks`` spread over
    ``gpus``, and the link it crosses: NVLink when those fit in one 8-GPU node, else InfiniBand."""
    if ranks == 1:
        return 0.0, "-"
    inside = gpus <= 8
    bandwidth = 1e9 * (assumptions.nvlink_gbs if inside else assumptions.infiniband_gbs)
    latency = 1e-6 * (assumptions.nvlink_latency_us if inside else assumptions.infiniband_latency_us)
    link = "NVLink" if inside else "InfiniBand"
    if gather:  # every rank receives the other N-1 ranks' parts
        return (ranks - 1) * (latency + nbytes / bandwidth), link
    return 2 * (ranks - 1) * latency + 2 * (ranks - 1) / ranks * nbytes / bandwidth, link


def project(latents: int, shards: int, replicas: int, assumptions: Assumptions) -> Projection:
    """One step of ``replicas`` data-parallel copies, each split by latents over ``shards`` GPUs (a node's
    worth at most, so its collectives stay on NVLink)."""
    d, k, gpus = assumptions.d_model, assumptions.k, shards * replicas
    rows = assumptions.rows_per_gpu * shards  # every GPU of a replica reads the same rows
    flops_per_s = assumptions.peak_tflops * 1e12 * assumptions.achieved
    parameters = 2 * d * latents + latents + d
    compute = rows * 6 * d * (latents / shards) / flops_per_s
    # sharding: all-gather of the [rows, k] candidates, all-reduce of [rows, d] forward and backward
    gather, link = ring_seconds(4 * rows * k, shards, shards, assumptions, gather=True)
    reduce, _ = ring_seconds(4 * rows * d, shards, shards, assumptions)
    # data parallel: one flat fp32 all-reduce of each GPU's gradients (and the loss) across the replicas
    gradients, across = ring_seconds(4 * (parameters / shards + 3), replicas, gpus, assumptions)
    state_bytes = 16 * parameters / shards  # fp32 weights, gradients, Adam's two moments
    activations = rows * (latents / shards) * 2 * 2  # bf16 pre-activations and their gradient
    memory = (state_bytes + activations + 4 * rows * d * 4) / 2**30
    if shards == 1:
        name = f"{latents:,} latents, data-parallel"
    elif replicas == 1:
        name = f"{latents:,} latents, {shards}-way sharded"
    else:
        name = f"{latents:,}, {shards}-sharded x {replicas} DP*"
    links = "+".join(dict.fromkeys(x for x in (link, across) if x != "-")) or "-"
    comm = gather + 2 * reduce + gradients
    update = parameters / shards * assumptions.update_bytes / (assumptions.hbm_tbs * 1e12)
    return Projection(name, gpus, links, 1000 * compute, 1000 * update, 1000 * comm, memory, rows * replicas)


LAYOUTS_PROJECTED = (  # (latents, shards, replicas)
    (16_384, 1, 1),
    (16_384, 1, 8),
    (16_384, 1, 64),
    (1_048_576, 1, 1),
    (1_048_576, 8, 1),
    (1_048_576, 64, 1),
    (1_048_576, 8, 8),
)


def projection_lines(assumptions: Assumptions) -> list[str]:
    a = assumptions
    lines = [
        "projection (arithmetic, not measured): TopK SAE training on a 2B-parameter model's residual "
        f"stream (d_model {a.d_model}, k {a.k}), tokens/s of the whole job",
        f"{'dictionary, layout':<34} {'GPUs':>4} {'link':<17} {'compute':>8} {'update':>7} {'comm':>7} "
        f"{'comm%':>6} "
        f"{'GiB/GPU':>7} {'tok/s':>9}",
    ]
    lines += [project(latents, shards, replicas, a).row(a) for latents, shards, replicas in LAYOUTS_PROJECTED]
    per_gpu = a.peak_tflops * 1e12 * a.achieved / (a.capture_gflop_per_token * 1e9)
    small = project(16_384, 1, 1, a).tokens_per_s
    wide = project(1_048_576, 8, 1, a).tokens_per_s / 8
    lines += [
        "(compute, update, comm: ms per step; GiB/GPU: fp32 weights, gradients and Adam moments, bf16 "
        "pre-activations and their gradient, fp32 rows; no fit: over 90% of the GPU's memory; "
        "* not in featurelens: sharding and data parallelism are not combined yet)",
        "",
        "assumptions:",
        f"- GPU: H100 SXM {a.hbm_gib:.0f} GB, bf16 dense peak {a.peak_tflops:.0f} TFLOP/s, of which the SAE "
        f"step reaches {a.achieved:.0%} (--achieved); FLOPs per token 6 d L (encoder forward 2 d L, backward "
        "4 d L, dense-equivalent); the sparse decoder (k rows per token) and top-k are left to that "
        f"fraction; the parameter update (Adam, decoder norms) is memory-bound: {a.update_bytes} bytes per "
        f"parameter at {a.hbm_tbs} TB/s, once per step on every GPU whatever its rows (as measured above)",
        f"- data-parallel (as `featurelens train --workers N`): {a.rows_per_gpu:,} tokens per GPU per step "
        "(--rows-per-gpu), one flat fp32 all-reduce of every gradient after the backward pass, not "
        "overlapped with it",
        "- latent-sharded (as `ShardedTopK`, Python API): the N GPUs read the same "
        f"{a.rows_per_gpu:,} x N rows and hold L/N latents each; per step an all-gather of the [rows, k] "
        "candidate values and two fp32 all-reduces of [rows, d] (partial reconstructions forward, the "
        "input's gradient backward); no gradient all-reduce (each GPU owns its latents)",
        "- ring collectives: all-reduce 2(N-1)/N x bytes / bandwidth + 2(N-1) x latency; all-gather "
        f"(N-1) x (part / bandwidth + latency); within one node NVLink at {a.nvlink_gbs:.0f} GB/s bus "
        f"bandwidth (--nvlink-gbs), {a.nvlink_latency_us:.0f} us per hop; a job over several nodes "
        f"InfiniBand at {a.infiniband_gbs:.0f} GB/s per GPU (--infiniband-gbs), "
        f"{a.infiniband_latency_us:.0f} us per hop",
        "- a GPU backend for the collectives (NCCL): featurelens' process group is gloo today, which moves "
        "CUDA tensors through host memory, so these figures need an NCCL group first",
        "- activations on hand: capturing them (the model to its middle layer, "
        f"~{a.capture_gflop_per_token:.0f} GFLOP/token, at the same {a.achieved:.0%}) runs "
        f"~{per_gpu / 1e3:,.0f}k tok/s per GPU with no communication: {small / per_gpu:.0f}x slower than "
        "the 16k dictionary trains on a GPU, "
        f"{per_gpu / wide:.0f}x faster than the 1M one (8-way sharded, per GPU); the store takes "
        f"{2 * a.d_model:,} bytes per token in bf16",
    ]
    return lines


# -- the report ----------------------------------------------------------------------------------------


def measured_lines(args: argparse.Namespace, scratch: Path) -> list[str]:
    captures: dict[int, Measured] = {}  # best of the rounds, per layout
    trainings: dict[int, Measured] = {}
    store = scratch / "acts-1x2"
    for _round in range(args.rounds):  # layouts interleaved, so a burst of load hits one round of each
        for index, (_label, processes, threads) in enumerate(LAYOUTS):
            wait_for_quiet(args.max_load, args.patience)
            folder = scratch / f"acts-{processes}x{threads}"
            measured = measure_capture(folder, args.capture_tokens, args.shard_tokens, processes, threads)
            if index not in captures or measured.tokens_per_s > captures[index].tokens_per_s:
                captures[index] = measured
        for index, (_label, processes, threads) in enumerate(LAYOUTS):
            wait_for_quiet(args.max_load, args.patience)
            out = scratch / f"sae-{processes}x{threads}"
            measured = measure_training(store, out, args.train_steps, processes, threads)
            if index not in trainings or measured.tokens_per_s > trainings[index].tokens_per_s:
                trainings[index] = measured
    floats = gradient_floats(scratch / "sae-1x2")
    timed = {}  # (processes, global batch) -> step times
    for processes, batch in ((1, BATCH), (1, BATCH // 2), (2, BATCH)):
        wait_for_quiet(args.max_load, args.patience)
        out = scratch / f"sae-timed-{processes}-{batch}"
        timed[processes, batch] = measure_step_times(store, out, args.train_steps, processes, batch, scratch)
    wait_for_quiet(args.max_load, args.patience)
    fit = measure_allreduce(floats, scratch)
    one, half, two = timed[1, BATCH], timed[1, BATCH // 2], timed[2, BATCH]
    gradient_bytes = 4 * floats
    statistics_bytes = 8 * (EXPANSION * 576 + 2 * 576 + 4)  # float64: n, l0, fired, sums of squares
    all_reduces_ms = 1000 * (fit.seconds(gradient_bytes) + fit.seconds(statistics_bytes))
    # a rank of 2 steps on half the rows, but reads the whole global batch, then all-reduces
    predicted = half.step_ms + (one.loop_ms - one.step_ms) + all_reduces_ms
    lines = [
        *table(
            f"capture: {args.capture_tokens:,} tokens of smollm2 {HOOK} (fp32 store, shards of "
            f"{args.shard_tokens:,} tokens), tok/s from model loaded to last shard written, best of "
            f"{args.rounds} round(s)",
            list(captures.values()),
        ),
        "",
        *table(
            f"training: TopK SAE, k {K}, {EXPANSION} x 576 = {EXPANSION * 576:,} latents, batches of "
            f"{BATCH:,}, {args.train_steps} steps, on the 1-process store; tok/s of the training loop, "
            f"best of {args.rounds} round(s)",
            list(trainings.values()),
        ),
        "",
        "where a training step's time goes (a timing hook in featurelens' step, torchrun, 1 thread per "
        f"process; ms per step, mean over every rank, first {WARM_UP_STEPS} steps left out):",
        f"{'layout':<24} {'tok/s':>7} {'step':>7} {'store':>7} {'fwd+bwd':>8} {'update':>7} {'stats':>6} "
        f"{'grads':>6} {'wait':>6} {'comm share':>10}",
    ]
    for (processes, batch), times in timed.items():
        layout = f"{processes} process{'es' if processes > 1 else ''}, batch {batch:,}"
        lines.append(
            f"{layout:<24} {times.tokens_per_s:>7,.0f} "
            f"{times.loop_ms:>7.1f} {times.loop_ms - times.step_ms:>7.1f} {times.rows_ms:>8.1f} "
            f"{times.update_ms:>7.1f} "
            f"{times.stats_ms:>6.2f} {times.grads_ms:>6.2f} {times.wait_ms:>6.2f} "
            f"{times.comm_ms / times.loop_ms:>10.1%}"
        )
    lines += [
        "(step: one step's start to the next; store: reading the next batch (every rank reads the whole "
        "global batch, then trains on its half); fwd+bwd: forward and backward passes on this rank's rows; "
        "update: Adam, decoder norms and dead-latent counters (every rank updates every parameter); "
        "stats: the all-reduce of the step's statistics after the forward pass; grads: the flat all-reduce "
        f"of every gradient ({gradient_bytes / 2**20:.1f} MiB, flattening and copying back included); "
        "wait: at a barrier the hook adds before each, i.e. the slower rank's lead; comm share: "
        "(stats + grads) / step)",
        "gloo all-reduce between 2 idle processes (1 thread each), median of 15: "
        + ", ".join(f"{b / 2**20:.2f} MiB {s * 1000:.2f} ms" for b, s in sorted(fit.points.items())),
        f"  fit: {fit.latency_s * 1e6:.0f} us + bytes / {fit.bandwidth / 1e9:.2f} GB/s; the gradient buffer "
        f"{fit.seconds(gradient_bytes) * 1000:.1f} ms",
        f"model check: 1 process's step on half the batch ({half.step_ms:.1f} ms) + reading the whole batch "
        f"({one.loop_ms - one.step_ms:.1f}) + the micro-benchmark's all-reduces ({all_reduces_ms:.1f}) "
        f"predict a 2-process step of {predicted:.1f} ms ({BATCH / predicted * 1000:,.0f} tok/s); measured "
        f"{two.loop_ms:.1f} ms ({two.wait_ms:.1f} of it waiting for the slower rank)",
    ]
    return lines


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == TRAIN_WORKER:
        sys.exit(train_worker(sys.argv[2], sys.argv[3:]))
    if len(sys.argv) > 1 and sys.argv[1] == ALLREDUCE_WORKER:
        sys.exit(allreduce_worker(sys.argv[2], [int(s) for s in sys.argv[4:]], int(sys.argv[3])))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--capture-tokens", type=int, default=16_384, help="tokens per capture run")
    parser.add_argument("--shard-tokens", type=int, default=4096, help="tokens per store shard")
    parser.add_argument("--train-steps", type=int, default=40, help=f"training steps of {BATCH:,} tokens")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each layout; the fastest is kept")
    parser.add_argument("--max-load", type=float, default=1.0, help="wait for a lower load before each run")
    parser.add_argument("--patience", type=float, default=120, help="seconds to wait for that load at most")
    parser.add_argument(
        "--projection-only", action="store_true", help="print the projection, measure nothing"
    )
    defaults = Assumptions()
    parser.add_argument("--achieved", type=float, default=defaults.achieved, help="fraction of GPU bf16 peak")
    parser.add_argument(
        "--rows-per-gpu", type=int, default=defaults.rows_per_gpu, help="tokens per GPU per step"
    )
    parser.add_argument("--nvlink-gbs", type=float, default=defaults.nvlink_gbs, help="GB/s within a node")
    parser.add_argument(
        "--infiniband-gbs", type=float, default=defaults.infiniband_gbs, help="GB/s across nodes"
    )
    args = parser.parse_args()
    assumptions = Assumptions(
        achieved=args.achieved,
        rows_per_gpu=args.rows_per_gpu,
        nvlink_gbs=args.nvlink_gbs,
        infiniband_gbs=args.infiniband_gbs,
    )
    sys.path.insert(0, str(HERE))
    import torch
    from machine import describe, matmul_peak_gflops, vector_flags

    started = time.perf_counter()
    if not args.projection_only:
        wait_for_quiet(args.max_load, args.patience)  # the matmul peak too
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU on this machine"
    lines = [
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        describe(matmul_peak_gflops()),
        vector_flags(),
    ]
    lines += [f"GPU: {gpu}; every figure below was measured on the CPU", ""]
    if not args.projection_only:
        with tempfile.TemporaryDirectory() as scratch:
            lines += [*measured_lines(args, Path(scratch)), ""]
    lines += [*projection_lines(assumptions), "", f"({time.perf_counter() - started:.0f} s)", ""]
    print("\n".join(lines))
    if args.projection_only:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as results:
        results.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
