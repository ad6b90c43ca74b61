"""Neuron report: ``run_neuron_report`` vs the numpy/scipy a researcher would write, from a store and live.

Three measurements on the bundled SmolLM2-135M-Instruct, fp32 on the CPU with torch's default threads:

1. **From a store.** A store of ``--store-tokens`` tokens at ``layers.{--layers}.mlp_neurons`` (1,536
   units each), captured here with ``featurelens capture --skip-positions 0 --keep-special --dtype
   float32`` (every row kept, attention sinks included, as a live report keeps them) unless ``--store``
   names one. featurelens: ``run_neuron_report(NeuronJob(acts=store, hooks=..., chunk_tokens=...))``, the
   whole report (statistics, the token / previous-token / bigram explanations, the layer, unit, massive and
   positional tables) in one streaming pass over chunks of ``--chunk-tokens`` rows of every hook. Another
   process times the statistics core alone, to show where the report's time goes: ``UnitStatistics.update``
   over the same chunks (read with ``featurelens.capture.rows.store_rows``, not timed), no tables.
2. **The reference.** What a researcher would write: per hook, ``np.load`` every shard and concatenate
   (the whole hook in memory), then per unit the firing rate (x > 0), zero rate, mean and std (float64),
   ``scipy.stats.kurtosis(fisher=False)``, max |x|; the hook's median |x| over all entries; the entries at
   or above 100x and 1000x that median; and the variance explained by position (η²: between-position sum
   of squares over the total, per unit, a Python loop over units with ``np.bincount`` by position) over the
   rows that are not sink rows (row norm above 10x the median row norm), as the report leaves them out. It
   computes a subset of the report: no skewness, near-zero or outlier rates, top rows, token
   explanations, massive-event table or tables. The two are checked against each other: max |difference|
   of every shared statistic. featurelens takes both medians from the first chunk (one pass), so the
   massive counts and η² are compared at the report's ``median_abs`` and ``median_row_norm`` (the layers
   table) and, apart, at the reference's own medians over all rows.
3. **Live.** ``run_neuron_report(NeuronJob(hooks=("layers.*.mlp_neurons", "layers.*.resid_post"),
   tokens=--live-tokens))`` (60 hooks, 63,360 units: model loading, packing, forward passes, statistics
   and tables) vs a bare forward of the same packed batches (the same ``pack_sequences`` of the bundled
   corpus, sequences of 256, batches of 8) through the transformer body with no hook (``load_model`` and
   packing included in its time too). "steady": the tokens of every chunk after the first over the time
   they took (model loading and the final tables left out).

Each measured method runs in its own process (``--child``): wall time of the timed call, ``ru_maxrss`` of
the process (wait4), and its peak anonymous RSS sampled from /proc every 20 ms (the store is read through
memory maps, whose file pages count in ru_maxrss although the kernel can drop them at any time; the
reference's ``np.load`` reads into anonymous memory). Fraction of peak (live only): tokens/s x the model's
FLOPs per token (2 x the decoder layers' parameters + causal attention, 2 x 2 x (seq_len + 1) / 2 x d_model
per layer) over the best fp32 matmul rate of this machine (``machine.py``); the store report does no
matmuls, so that column gives the rate at which it consumes activations (MB/s of float32) instead.

Reproduce (project venv; scipy comes with it)::

    .venv/bin/python benchmarks/neurons.py              # ~3 minutes on 2 quiet cores (7-8 under load)
    .venv/bin/python benchmarks/neurons.py --quick      # ~45 s smoke run
    .venv/bin/python benchmarks/neurons.py --repeats 2  # the README's figures, ~5 minutes
    .venv/bin/python benchmarks/neurons.py --store-tokens 131072 --layers 15,29 --skip-live  # memory, ~4

``--store PATH`` reports on an existing store instead of capturing one (``--layers`` then filters its
``mlp_neurons`` hooks; ``--layers all`` takes every hook it holds); ``--keep DIR`` keeps the captured store;
``--repeats N`` keeps each method's fastest of N interleaved rounds; ``--out FILE`` writes the tables too.
Each report's ``NeuronJob.out`` points into the scratch folder: ``run_neuron_report`` checkpoints beside it
every ``checkpoint_seconds`` (300 s) and needs that folder to exist.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
MASSIVE = (100.0, 1000.0)  # NeuronSettings().massive: the reference counts the same multiples
SINK_MULTIPLE = 10.0  # NeuronSettings().sink_multiple: rows above it x the median row norm are sink rows
LIVE_HOOKS = ("layers.*.mlp_neurons", "layers.*.resid_post")
SEQ_LEN, BATCH_SIZE = 256, 8  # NeuronJob's defaults, used by the bare forward too
COMPARED = ("fire_rate", "zero_rate", "mean", "std", "kurtosis", "max_abs", "position_r2")


# -- measuring a process --------------------------------------------------------------------------------


def anon_rss_mib(pid: int) -> float:
    """Anonymous resident memory of ``pid`` now (MiB; NaN once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def measured(command: list[str], log: Path) -> dict[str, float]:
    """Run ``command`` with output to ``log``: exit status, wall s, ru_maxrss and peak anonymous RSS (MiB),
    CPU seconds (user + system) and the 1-minute load average when it started."""
    from machine import load_average

    load = load_average()
    started = time.perf_counter()
    peak_anon = 0.0
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            now = anon_rss_mib(process.pid)
            peak_anon = max(peak_anon, now) if now == now else peak_anon
            time.sleep(0.02)
    process.returncode = os.waitstatus_to_exitcode(status)
    return {
        "rc": process.returncode,
        "wall": time.perf_counter() - started,
        "rss": usage.ru_maxrss / 1024,
        "anon": peak_anon,
        "cpu": usage.ru_utime + usage.ru_stime,
        "load": load,
    }


def run_child(kind: str, spec: dict[str, Any], scratch: Path, tag: str) -> dict[str, Any]:
    """Run one measured method in its own process; its result JSON plus the process figures."""
    spec = {
        **spec,
        "result": str(scratch / f"{tag}.json"),
        "arrays": str(scratch / f"{tag}.npz"),
        "out": str(scratch / f"{tag}-report"),
    }
    spec_path = scratch / f"{tag}.spec.json"
    spec_path.write_text(json.dumps(spec))
    log = scratch / f"{tag}.log"
    process = measured([sys.executable, __file__, "--child", kind, "--spec", str(spec_path)], log)
    if process["rc"] != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        raise SystemExit(f"{tag} failed (exit {process['rc']}):\n" + "\n".join(tail))
    result = json.loads(Path(spec["result"]).read_text())
    result.update(process=process, arrays=spec["arrays"])
    print(
        f"  {tag}: {result['seconds']:.1f} s timed, {process['wall']:.1f} s process "
        f"({process['cpu']:.0f} s CPU), "
        f"{process['rss']:.0f} MiB peak RSS ({process['anon']:.0f} MiB anonymous), "
        f"load {process['load']:.1f}",
        flush=True,
    )
    return result


# -- the children ---------------------------------------------------------------------------------------


def child_store_report(spec: dict[str, Any]) -> None:
    """featurelens: the whole report from the store, then its shared statistics saved for the check."""
    import numpy as np

    from featurelens.neurons import NeuronJob, run_neuron_report

    job = NeuronJob(
        out=spec["out"],  # its checkpoint goes beside it: keep it in the scratch folder
        acts=spec["store"],
        hooks=tuple(spec["hooks"]),
        tokens=spec["tokens"],
        chunk_tokens=spec["chunk_tokens"],
    )
    started = time.perf_counter()
    report = run_neuron_report(job)
    seconds = time.perf_counter() - started
    hooks = report.layers.column("hook").to_pylist()
    units = report.units
    unit_hooks = np.asarray(units.column("hook").to_pylist())
    arrays = {}
    for i, hook in enumerate(hooks):
        mine = unit_hooks == hook
        for name in COMPARED:
            arrays[f"{i}_{name}"] = units.column(name).to_numpy()[mine]
    np.savez(spec["arrays"], **arrays)

    layers = report.layers.select(
        ["hook", "width", "rows", "median_abs", "median_row_norm", "sink_rows"]
        + [f"massive_{m:g}x_entries" for m in MASSIVE]
    ).to_pylist()
    result = {
        "seconds": seconds,
        "rows": report.meta["rows"],
        "hooks": hooks,
        "layers": layers,
    }
    Path(spec["result"]).write_text(json.dumps(result))


def child_store_core(spec: dict[str, Any]) -> None:
    """featurelens' statistics core alone: ``UnitStatistics.update`` over the report's chunks, no tables."""
    import numpy as np
    import torch

    from featurelens.capture.rows import store_rows
    from featurelens.capture.store import ActivationStore
    from featurelens.models import load_tokenizer
    from featurelens.neurons import NeuronSettings, UnitStatistics

    store = ActivationStore.open(spec["store"])
    started = time.perf_counter()  # a fixed cost of the report: it names the tokens (transformers import)
    load_tokenizer(str(store.manifest.get("model", {}).get("spec", "smollm2")))
    tokenizer_seconds = time.perf_counter() - started
    settings, core, reading = NeuronSettings(), 0.0, 0.0
    stats: dict[str, UnitStatistics] = {}
    started = time.perf_counter()
    for chunk in store_rows(store, spec["hooks"], spec["tokens"], spec["chunk_tokens"]):
        read = time.perf_counter()
        rows = torch.from_numpy(chunk.rows.astype(np.int64))
        positions = torch.from_numpy(chunk.positions.astype(np.int64))
        for hook, acts in chunk.acts.items():
            stats.setdefault(hook, UnitStatistics(acts.shape[1], settings)).update(acts, rows, positions)
        reading += read - started
        started = time.perf_counter()
        core += started - read
    result = {"seconds": core, "read_seconds": reading, "tokenizer_seconds": tokenizer_seconds}
    Path(spec["result"]).write_text(json.dumps(result))


def load_hook(shards: list[Path], hook: str, dtype: str, n: int) -> Any:
    """The whole hook as one float32 array [n, width], read shard by shard (what a researcher writes)."""
    import numpy as np

    x = np.concatenate([np.load(shard / f"{hook}.npy") for shard in shards])[:n]
    if dtype == "bfloat16":  # stored as the upper 16 bits of float32
        return (x.astype(np.uint32) << 16).view(np.float32)
    return x.astype(np.float32, copy=False)


def position_eta2(x: Any, positions: Any) -> Any:
    """η² of position for every unit of ``x`` [n, width]: a loop over units, grouping rows by position with
    ``np.bincount``."""
    import numpy as np

    eta2 = np.zeros(x.shape[1])
    counts = np.bincount(positions)
    present = counts > 0
    for j in range(x.shape[1]):
        values = x[:, j].astype(np.float64)
        means = np.bincount(positions, weights=values)[present] / counts[present]
        total = ((values - values.mean()) ** 2).sum()
        between = (counts[present] * (means - values.mean()) ** 2).sum()
        eta2[j] = between / total if total > 0 else 0.0
    return eta2


def child_reference(spec: dict[str, Any]) -> None:
    """The reference: per hook, the whole array in memory and the statistics in numpy / scipy."""
    import numpy as np
    import scipy.stats

    store = Path(spec["store"])
    dtype = json.loads((store / "manifest.json").read_text())["dtype"]
    shards = sorted(p for p in (store / "shards").iterdir() if p.is_dir())
    n = spec["tokens"]
    started = time.perf_counter()
    positions = np.concatenate([np.load(shard / "positions.npy") for shard in shards])[:n].astype(np.int64)
    seconds = load_seconds = time.perf_counter() - started
    arrays: dict[str, Any] = {}
    layers = []
    for i, hook in enumerate(spec["hooks"]):
        started = time.perf_counter()
        x = load_hook(shards, hook, dtype, n)
        loaded = time.perf_counter()
        stats = {
            "fire_rate": (x > 0).mean(0),
            "zero_rate": (x == 0).mean(0),
            "mean": x.mean(0, dtype=np.float64),
            "std": x.std(0, dtype=np.float64),
            "kurtosis": scipy.stats.kurtosis(x, axis=0, fisher=False),
        }
        magnitude = np.abs(x)
        stats["max_abs"] = magnitude.max(0)
        median = float(np.median(magnitude))
        massive = [int((magnitude >= m * median).sum()) for m in MASSIVE]
        norms = np.linalg.norm(x, axis=1)
        median_norm = float(np.median(norms))
        typical = norms <= SINK_MULTIPLE * median_norm  # sink rows are left out
        stats["position_r2"] = position_eta2(x[typical], positions[typical])
        done = time.perf_counter()
        seconds += done - started
        load_seconds += loaded - started
        # not timed: the massive counts and η² at the report's first-chunk medians (the like-for-like
        # check), and the kurtosis in float64 (scipy on float32 rows computes in float32)
        report_median = spec["report_medians"][i]
        at_report_median = [int((magnitude >= m * report_median).sum()) for m in MASSIVE]
        stats["kurtosis_float64"] = np.concatenate(  # scipy in float64, 256 columns at a time
            [
                scipy.stats.kurtosis(x[:, j : j + 256].astype(np.float64), axis=0, fisher=False)
                for j in range(0, x.shape[1], 256)
            ]
        )
        like_report = norms <= SINK_MULTIPLE * spec["report_median_norms"][i]
        same_rows = bool((like_report == typical).all())
        stats["position_r2_at_report_median"] = (
            stats["position_r2"] if same_rows else position_eta2(x[like_report], positions[like_report])
        )
        layers.append(
            {
                "hook": hook,
                "median_abs": median,
                "massive": massive,
                "massive_at_report_median": at_report_median,
                "median_row_norm": median_norm,
                "sink_rows": int((~typical).sum()),
            }
        )
        arrays.update({f"{i}_{name}": np.asarray(value) for name, value in stats.items()})
        del x, magnitude, stats
    np.savez(spec["arrays"], **arrays)
    result = {"seconds": seconds, "load_seconds": load_seconds, "rows": n, "layers": layers}
    Path(spec["result"]).write_text(json.dumps(result))


def flops_per_token(lm: Any, seq_len: int) -> float:
    """Forward FLOPs per token of the decoder body: 2 x layer parameters + causal attention scores and mix."""
    body = getattr(lm.model, "base_model", lm.model)
    parameters = sum(p.numel() for p in body.layers.parameters())
    return 2 * parameters + 2 * 2 * (seq_len + 1) / 2 * lm.d_model * lm.n_layers


def child_live_report(spec: dict[str, Any]) -> None:
    """featurelens: the live report over every MLP neuron and residual unit; chunk times from on_rows."""
    from featurelens.neurons import NeuronJob, run_neuron_report

    job = NeuronJob(
        out=spec["out"], hooks=LIVE_HOOKS, tokens=spec["tokens"], seq_len=SEQ_LEN, batch_size=BATCH_SIZE
    )
    stamps: list[tuple[float, int]] = []
    started = time.perf_counter()
    report = run_neuron_report(job, on_rows=lambda n, _: stamps.append((time.perf_counter(), n)))
    seconds = time.perf_counter() - started
    steady_rows = sum(n for _, n in stamps[1:])
    steady_seconds = stamps[-1][0] - stamps[0][0] if len(stamps) > 1 else float("nan")
    widths = report.layers.column("width").to_pylist()
    result = {
        "seconds": seconds,
        "rows": report.meta["rows"],
        "hooks": len(widths),
        "units": sum(widths),
        "steady_tok_s": steady_rows / steady_seconds if len(stamps) > 1 else float("nan"),
        "first_chunk_seconds": stamps[0][0] - started,
        "tables_seconds": seconds - (stamps[-1][0] - started),
    }
    Path(spec["result"]).write_text(json.dumps(result))


def child_bare_forward(spec: dict[str, Any]) -> None:
    """The bare forward: the same packed batches through the transformer body, no hook, no statistics."""
    from itertools import islice

    import numpy as np
    import torch

    import featurelens as fl
    from featurelens.corpus import CorpusConfig, documents, pack_sequences
    from featurelens.models.hook_points import call_base_model

    started = time.perf_counter()
    lm = fl.load_model("smollm2")
    loaded = time.perf_counter()
    n_sequences = math.ceil(spec["tokens"] / SEQ_LEN)
    packed = islice(pack_sequences(documents(CorpusConfig()), lm.tokenizer, SEQ_LEN), n_sequences)
    stamps: list[tuple[float, int]] = []  # (time, tokens) after each batch
    rows = 0
    with torch.inference_mode():
        while chunk := list(islice(packed, BATCH_SIZE)):
            tokens = torch.from_numpy(np.stack([s.tokens for s in chunk])).long()
            call_base_model(lm.model, tokens)
            rows += tokens.numel()
            stamps.append((time.perf_counter(), tokens.numel()))
    seconds = time.perf_counter() - started
    steady_rows = sum(n for _, n in stamps[1:])
    result = {
        "seconds": seconds,
        "load_seconds": loaded - started,
        "first_batch_seconds": stamps[0][0] - loaded,  # packing starts lazily here
        "rows": rows,
        "steady_tok_s": steady_rows / (stamps[-1][0] - stamps[0][0]) if len(stamps) > 1 else float("nan"),
        "flops_per_token": flops_per_token(lm, SEQ_LEN),
    }
    Path(spec["result"]).write_text(json.dumps(result))


CHILDREN = {
    "store-report": child_store_report,
    "store-core": child_store_core,
    "reference": child_reference,
    "live-report": child_live_report,
    "bare-forward": child_bare_forward,
}


# -- the store ------------------------------------------------------------------------------------------


def layer_list(text: str) -> list[int]:
    return list(range(30)) if text == "all" else [int(i) for i in text.split(",")]


def capture_store(args: argparse.Namespace, out: Path, scratch: Path) -> tuple[float, float]:
    """Capture the store with the CLI; (wall seconds, tokens/s)."""
    command = [args.featurelens, "capture", "--model", "smollm2", "--tokens", str(args.store_tokens)]
    for layer in layer_list(args.layers):
        command += ["--hook", f"layers.{layer}.mlp_neurons"]
    command += [
        "--out",
        str(out),
        "--skip-positions",
        "0",
        "--keep-special",
        "--dtype",
        "float32",
        "--overwrite",
    ]
    print("capturing:", " ".join(command), flush=True)
    process = measured(command, scratch / "capture.log")
    if process["rc"] != 0:
        tail = (scratch / "capture.log").read_text(errors="replace").strip().splitlines()[-10:]
        raise SystemExit("featurelens capture failed:\n" + "\n".join(tail))
    return process["wall"], args.store_tokens / process["wall"]


def store_hooks(store: Path, layers: str) -> tuple[list[str], int, str]:
    """(hooks to report on, rows, stored dtype) of the store."""
    manifest = json.loads((store / "manifest.json").read_text())
    held = list(manifest["hooks"])
    if layers == "all":
        hooks = held
    else:
        wanted = {f"layers.{i}.mlp_neurons" for i in layer_list(layers)}
        hooks = [h for h in held if h in wanted]
    if not hooks:
        raise SystemExit(f"the store {store} holds none of the hooks asked for; it holds {', '.join(held)}")
    from featurelens.models.hook_names import layer_of

    return sorted(hooks, key=lambda h: (layer_of(h), h)), int(manifest["n_rows"]), manifest["dtype"]


# -- the tables -----------------------------------------------------------------------------------------


def best(results: list[dict[str, Any]]) -> dict[str, Any]:
    return min(results, key=lambda r: r["seconds"])


def agreement(fl: dict[str, Any], ref: dict[str, Any]) -> list[str]:
    """Rows of the agreement table: max |diff| (and relative, where values are not near 0) over all units."""
    import numpy as np

    if [layer["hook"] for layer in ref["layers"]] != fl["hooks"]:
        raise SystemExit(f"the reference's hooks are not the report's: {ref['layers']} vs {fl['hooks']}")
    ours, theirs = np.load(fl["arrays"]), np.load(ref["arrays"])
    lines = [
        "| statistic | max abs diff | max rel diff | largest value |",
        "|---|---:|---:|---:|",
    ]
    pairs = [(name, name, name) for name in COMPARED]
    pairs.insert(5, ("kurtosis vs scipy on float64 copies (not timed)", "kurtosis", "kurtosis_float64"))
    pairs.append(
        ("position_r2, at the report's row-norm median", "position_r2", "position_r2_at_report_median")
    )
    for label, name, reference_name in pairs:
        a = np.concatenate([ours[f"{i}_{name}"] for i in range(len(fl["hooks"]))]).astype(np.float64)
        b = np.concatenate([theirs[f"{i}_{reference_name}"] for i in range(len(fl["hooks"]))])
        b = b.astype(np.float64)
        diff = np.abs(a - b)
        scale = np.abs(b)
        relative = (diff[scale > 1e-6] / scale[scale > 1e-6]).max(initial=0.0)
        lines.append(f"| {label} | {diff.max():.2e} | {relative:.2e} | {scale.max():.4g} |")
    return lines


def massive_lines(fl: dict[str, Any], ref: dict[str, Any]) -> list[str]:
    """Per hook: the medians (report: first chunk; reference: all rows), massive entries and sink rows."""
    lines = [
        "| hook | median abs, report / reference | ≥100x / ≥1000x entries, report | reference at report's "
        "median | reference at its own | median row norm, report / reference | sink rows, report / "
        "reference |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for ours, theirs in zip(fl["layers"], ref["layers"], strict=True):
        counts = "{:,} / {:,}".format(*(ours[f"massive_{m:g}x_entries"] for m in MASSIVE))
        same = "{:,} / {:,}".format(*theirs["massive_at_report_median"])
        own = "{:,} / {:,}".format(*theirs["massive"])
        lines.append(
            f"| {ours['hook']} | {ours['median_abs']:.5f} / {theirs['median_abs']:.5f} | {counts} | {same} | "
            f"{own} | {ours['median_row_norm']:.3f} / {theirs['median_row_norm']:.3f} | "
            f"{ours['sink_rows']:,} / {theirs['sink_rows']:,} |"
        )
    return lines


def process_cells(result: dict[str, Any]) -> str:
    p = result["process"]
    return f"{p['rss']:,.0f} MiB | {p['anon']:,.0f} MiB"


def rate(value: float, digits: int = 0) -> str:
    """A figure with thousands separators, or n/a (e.g. a steady rate from a single chunk)."""
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def store_table(fl: dict[str, Any], core: dict[str, Any], ref: dict[str, Any], units: int) -> list[str]:
    rows, hooks = fl["rows"], len(fl["hooks"])
    compute = ref["seconds"] - ref["load_seconds"]
    lines = [
        "| method | rows | hooks | units | seconds | rows/s | rows x units/s | MB/s | fl ÷ this | "
        "peak RSS | peak anon RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    measured_rows = [
        ("**featurelens** `run_neuron_report`", fl["seconds"], process_cells(fl)),
        ("featurelens statistics core only (`UnitStatistics.update`)", core["seconds"], process_cells(core)),
        ("numpy/scipy reference (`np.load` + compute)", ref["seconds"], process_cells(ref)),
        ("reference, compute only", compute, "| "),
    ]
    for name, seconds, memory in measured_rows:
        lines.append(
            f"| {name} | {rows:,} | {hooks} | {units:,} | {seconds:.2f} | {rows / seconds:,.0f} | "
            f"{rows * units / seconds / 1e6:,.1f} M | {rows * units * 4 / seconds / 1e6:,.0f} | "
            f"{fl['seconds'] / seconds:.2f} | {memory} |"
        )
    return lines


def live_table(live: dict[str, Any], bare: dict[str, Any], peak_gflops: float) -> list[str]:
    flops = bare["flops_per_token"]
    lines = [
        "| method | tokens | seconds | tok/s | steady tok/s | fraction of fp32 peak (steady) | "
        "time ÷ bare | peak RSS | peak anon RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in (
        ("bare forward, no hooks", bare),
        (f"**featurelens** live report, {live['hooks']} hooks", live),
    ):
        steady = result["steady_tok_s"]
        lines.append(
            f"| {name} | {result['rows']:,} | {result['seconds']:.1f} | "
            f"{result['rows'] / result['seconds']:,.0f} | {rate(steady)} | "
            f"{rate(steady * flops / 1e9 / peak_gflops, 2)} | {result['seconds'] / bare['seconds']:.2f} | "
            f"{process_cells(result)} |"
        )
    return lines


# -- main -----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="report on this store (default: capture one into a scratch folder)")
    parser.add_argument("--store-tokens", type=int, default=32_768, help="tokens to capture (and report on)")
    parser.add_argument("--layers", default="0,5,10,15,20,25,29", help="mlp_neurons layers, or 'all'")
    parser.add_argument("--chunk-tokens", type=int, default=8192, help="NeuronJob.chunk_tokens for the store")
    parser.add_argument("--live-tokens", type=int, default=8192, help="tokens of the live comparison")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 4,096 store tokens, 2 layers, 2,048 live"
    )
    parser.add_argument("--skip-live", action="store_true", help="only the store comparison")
    parser.add_argument(
        "--repeats", type=int, default=1, help="interleaved rounds; each method's fastest is kept"
    )
    parser.add_argument("--keep", help="capture the store into this folder and keep it (and the logs)")
    parser.add_argument("--out", help="also write the tables to this file")
    parser.add_argument(
        "--featurelens", default=str(Path(sys.executable).parent / "featurelens"), help="featurelens CLI"
    )
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        CHILDREN[args.child](json.loads(Path(args.spec).read_text()))
        return
    if args.quick:
        args.store_tokens, args.layers, args.live_tokens = 4096, "0,29", 2048

    import numpy as np
    from machine import describe, matmul_peak_gflops, vector_flags, versions
    from train import featurelens_source

    scratch = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-neurons-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        source = featurelens_source()
        peak = matmul_peak_gflops()
        header = [
            describe(peak),
            vector_flags(),
            versions(("featurelens", "torch", "numpy", "scipy", "pyarrow")),
            "featurelens from {}, code hash {}".format(*source),
        ]
        print("\n".join(header), flush=True)

        capture_note = ""
        if args.store:
            store = Path(args.store)
        else:
            store = scratch / "acts"
            wall, tok_s = capture_store(args, store, scratch)
            capture_note = (
                f"store captured here with `featurelens capture` in {wall:.1f} s ({tok_s:,.0f} tok/s, model "
                "loading and shard writes included)"
            )
        hooks, n_rows, dtype = store_hooks(store, args.layers)
        n_rows = min(n_rows, args.store_tokens) if not args.store else n_rows
        widths = {
            h: int(np.load(next((store / "shards").iterdir()) / f"{h}.npy", mmap_mode="r").shape[1])
            for h in hooks
        }
        units = sum(widths.values())
        spec = {"store": str(store), "hooks": hooks, "tokens": n_rows, "chunk_tokens": args.chunk_tokens}

        print(f"store {store}: {n_rows:,} rows, {dtype}, {len(hooks)} hooks, {units:,} units", flush=True)
        fls, cores, refs, lives, bares = [], [], [], [], []
        for round_ in range(args.repeats):  # rounds interleave the methods, so a busy spell hits all of them
            fls.append(run_child("store-report", spec, scratch, f"featurelens-store-{round_}"))
            cores.append(run_child("store-core", spec, scratch, f"featurelens-core-{round_}"))
            medians = [layer["median_abs"] for layer in fls[-1]["layers"]]  # in the report's hook order
            norms = [layer["median_row_norm"] for layer in fls[-1]["layers"]]
            spec_ref = {
                **spec,
                "hooks": fls[-1]["hooks"],
                "report_medians": medians,
                "report_median_norms": norms,
            }
            refs.append(run_child("reference", spec_ref, scratch, f"reference-{round_}"))
            if not args.skip_live:
                live_spec = {"tokens": args.live_tokens}
                bares.append(run_child("bare-forward", live_spec, scratch, f"bare-forward-{round_}"))
                lives.append(run_child("live-report", live_spec, scratch, f"featurelens-live-{round_}"))

        fl, core, ref = best(fls), best(cores), best(refs)
        # the peak again after the runs: the machine is shared, and a busy moment lowers the first measure
        peak = max(peak, matmul_peak_gflops())
        header[0] = describe(peak) + " (best of two measures, before and after the runs)"
        report = [
            "",
            f"## From a store: {n_rows:,} rows x {len(hooks)} hooks ({', '.join(hooks)})",
            "",
            *header,
            f"store: {dtype}, every position and special token kept; chunks of {args.chunk_tokens:,} rows; "
            + (capture_note or f"given: {store}"),
            "",
            *store_table(fl, core, ref, units),
            "",
            "fl ÷ this: featurelens' report seconds ÷ that row's (above 1: that row is faster). MB/s: "
            "float32 activations consumed per second. rows x units/s: entries per second. Peak RSS: "
            "ru_maxrss of the process (touched pages of the memory-mapped store included); peak anon RSS: "
            "its anonymous memory, sampled every 20 ms.",
            f"featurelens report {fl['seconds']:.2f} s, of which fixed: importing transformers and loading "
            f"the tokenizer ≈ {core['tokenizer_seconds']:.2f} s; reading the chunks from the store "
            f"{core['read_seconds']:.2f} s; the reference's `np.load` {ref['load_seconds']:.2f} s "
            "(page cache).",
            "",
            "### Agreement (all units of all hooks)",
            "",
            *agreement(fl, ref),
            "",
            *massive_lines(fl, ref),
        ]
        if lives:
            live, bare = best(lives), best(bares)
            steady_ratio = rate(bare["steady_tok_s"] / live["steady_tok_s"], 2)
            steady_ratio = "n/a (one chunk)" if steady_ratio == "n/a" else f"{steady_ratio}x"
            report += [
                "",
                f"## Live: {live['rows']:,} tokens of the bundled corpus, sequences of {SEQ_LEN}, batches of "
                f"{BATCH_SIZE}",
                "",
                *header,
                f"featurelens: NeuronJob(hooks={LIVE_HOOKS}), {live['hooks']} hooks, "
                f"{live['units']:,} units; FLOPs per token {bare['flops_per_token'] / 1e6:.0f} M",
                "",
                *live_table(live, bare, peak),
                "",
                f"overhead of the live report over the bare forward: "
                f"{live['seconds'] / bare['seconds']:.2f}x wall, "
                f"{steady_ratio} steady. Both include loading the model (bare: "
                f"{bare['load_seconds']:.1f} s) and packing (bare: first batch "
                f"{bare['first_batch_seconds']:.1f} s); featurelens' first chunk took "
                f"{live['first_chunk_seconds']:.1f} s, its final tables {live['tables_seconds']:.1f} s.",
            ]
        if args.repeats > 1:
            report.append(f"\nEach row is the fastest of {args.repeats} interleaved rounds.")
        if featurelens_source()[1] != source[1]:  # the code hash; a commit elsewhere is no change
            report.append("\nWARNING: featurelens' code changed during the run; its rows may mix versions.")
        text = "\n".join(report)
        print(text)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text.lstrip() + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
