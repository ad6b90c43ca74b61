"""Find the circuit behind a task: which attention heads and MLP neurons carry it, how they connect, and
how faithfully they alone reproduce it.

The task is a set of aligned prompt pairs: a clean prompt, a corrupted one with the same number of tokens,
and the right and wrong answer tokens; the metric is the logit difference (right - wrong) at the last
position. Built in: --task ioi, the indirect-object task ("When Mary and John went to the store, John gave
a drink to" -> " Mary"; corrupted: "..., Mary gave a drink to"; 80 prompts). Or --task FILE.jsonl with
lines {"clean": ..., "corrupt": ..., "correct": " Mary", "wrong": " John"}.

Stages: attribution patching (gradient x activation difference) over every head and neuron on all
prompts; exact activation patching (clean activations into the corrupted run, batched) of every head and
of the --exact-neurons neurons (and, with --dictionary, the --exact-features features and the error
term) attribution ranks highest, on --exact-prompts prompts; the circuit = the
--top-heads heads and --top-neurons neurons by exact effect; its faithfulness (the metric with every
other component of the --ablate kinds mean-ablated, default heads, so the MLPs stay whole; normalised so
1 = the whole model's behaviour, 0 = that of the model with every such component ablated) and its
complement's, and the faithfulness of the top 1, 2, 4, ... heads alone; the edges between its nodes
(how much of each downstream node's change patching an upstream node alone restores, exactly; and by
edge attribution, the share of the metric's gap that flows along the direct path from one to the
other). Effects are normalised: 1 = the component restores the whole clean-corrupt gap. Writes
OUT/components.parquet (every component, ranked) and OUT/circuit.json (the graph; look at it with
`featurelens serve ATLAS --circuit OUT`).

examples:
  featurelens circuit                                   # the indirect-object task on the bundled model
  featurelens circuit --task my_pairs.jsonl --model ./my-model --out runs/my-circuit
  featurelens circuit --components heads --top-heads 12 --exact-prompts 16
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from featurelens.cli.progress import stage_progress
from featurelens.intervene import InterventionError
from featurelens.intervene.discover import KINDS, CircuitJob, CircuitReport, find_circuit, write_outputs
from featurelens.models import load_model

HELP = "find the heads and neurons behind a task (patching, attribution, faithfulness)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = CircuitJob()
    parser.add_argument("--task", default=defaults.task, help="ioi (built in) or a JSON-lines prompt file")
    parser.add_argument(
        "--model", default=defaults.model, help="model to look inside (default: bundled smollm2)"
    )
    parser.add_argument("--out", default=defaults.out, help="folder for components.parquet and circuit.json")
    parser.add_argument(
        "--components", default=",".join(defaults.components), help=f"comma list of: {', '.join(KINDS)}"
    )
    parser.add_argument(
        "--exact-prompts", type=int, default=defaults.exact_prompts, help="prompts for exact patching"
    )
    parser.add_argument(
        "--exact-neurons",
        type=int,
        default=defaults.exact_neurons,
        help="top neurons by attribution to patch exactly",
    )
    parser.add_argument("--top-heads", type=int, default=defaults.top_heads, help="heads in the circuit")
    parser.add_argument(
        "--top-neurons", type=int, default=defaults.top_neurons, help="neurons in the circuit"
    )
    parser.add_argument(
        "--ablate",
        default=",".join(defaults.ablate),
        help="kinds mean-ablated outside the circuit (default heads)",
    )
    parser.add_argument(
        "--dictionary", help="an SAE folder: rank its features (and error term) by attribution"
    )
    parser.add_argument(
        "--top-features", type=int, default=defaults.top_features, help="features in the graph"
    )
    parser.add_argument(
        "--exact-features",
        type=int,
        default=defaults.exact_features,
        help="top features by attribution (and the error term) to patch exactly",
    )
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="rows per forward pass")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")


def job_from_args(args: argparse.Namespace) -> CircuitJob:
    return CircuitJob(
        out=args.out,
        model=args.model,
        task=args.task,
        components=tuple(part.strip() for part in args.components.split(",") if part.strip()),
        exact_prompts=args.exact_prompts,
        exact_neurons=args.exact_neurons,
        top_heads=args.top_heads,
        top_neurons=args.top_neurons,
        ablate=tuple(part.strip() for part in args.ablate.split(",") if part.strip()),
        dictionary=args.dictionary,
        top_features=args.top_features,
        exact_features=args.exact_features,
        batch_size=args.batch_size,
        device=args.device,
    )


def print_report(report: CircuitReport, console: Console, graph: Path) -> None:
    attribution = report.attribution
    console.print(
        f"{len(report.pairs)} prompt pairs; metric clean {attribution.clean:.3f}, "
        f"corrupted {attribution.corrupt:.3f}"
    )
    table = Table(title="top components (effect: 1 = restores the whole clean-corrupt gap)", box=None)
    for column in ("component", "exact effect", "attribution effect", "in circuit"):
        table.add_column(column, justify="left" if column == "component" else "right")
    estimates = dict(zip(attribution.components, attribution.effect.tolist(), strict=True))
    ranked = report.exact.ranked(15) if report.exact is not None else attribution.ranked(15)
    inside = set(report.circuit)
    for component, effect in ranked:
        exact = f"{effect:.3f}" if report.exact is not None else "-"
        table.add_row(
            component.label, exact, f"{estimates[component]:.3f}", "yes" if component in inside else ""
        )
    console.print(table)
    score = report.faithfulness
    console.print(
        f"circuit of {len(report.circuit)} ({', '.join(c.label for c in report.circuit)}): faithfulness "
        f"{score['faithfulness']:.3f}, complement {score['complement']:.3f}"
    )
    if report.features:
        effects = dict(zip(attribution.components, attribution.effect.tolist(), strict=True))
        measured = {}
        if report.exact is not None:
            measured = dict(zip(report.exact.components, report.exact.effect.tolist(), strict=True))
        by = "exact patching (attribution)" if report.features[0] in measured else "attribution"
        listed = ", ".join(
            f"{c.label} {measured[c]:.3f} ({effects[c]:.3f})"
            if c in measured
            else f"{c.label} {effects[c]:.3f}"
            for c in report.features
        )
        console.print(f"top features by {by}: {listed}")
    if report.faithfulness_by_heads:
        curve = ", ".join(f"{k}: {f:.2f}" for k, f in report.faithfulness_by_heads)
        console.print(f"faithfulness of the top-k heads alone (k: score): {curve}")
    if report.rank_correlations:
        listed = ", ".join(f"{kind}s {rho:.3f}" for kind, rho in report.rank_correlations.items())
        console.print(f"attribution vs exact patching, Spearman over the exactly patched {listed}")
    strongest = sorted(report.edges, key=lambda edge: -abs(edge[2]))[:5]
    if strongest:
        console.print(
            "strongest edges: " + ", ".join(f"{u.label}→{v.label} {w:.2f}" for u, v, w in strongest)
        )
    attributed = sorted(report.edge_attributions, key=lambda edge: -abs(edge[2]))[:5]
    if attributed:
        console.print(
            "strongest edges by edge attribution (share of the gap along the direct path): "
            + ", ".join(f"{u.label}→{v.label} {w:.2f}" for u, v, w in attributed)
        )
    timing = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report.seconds.items())
    console.print(f"time: {timing}")
    console.print(f"wrote {graph} and {graph.with_name('components.parquet')}")


def main(args: argparse.Namespace) -> int:
    console = Console()
    job = job_from_args(args)
    if job.task != "ioi" and not Path(job.task).is_file():
        raise InterventionError(f"--task {job.task!r} is neither 'ioi' nor a prompt file")
    lm = load_model(job.model, device=job.device)
    with stage_progress(console, "patching", "variants") as update:
        report = find_circuit(
            job,
            lm,
            on_stage=lambda name: console.print(f"[bold]{name}[/]"),
            on_variants=lambda done, total: update(done, total),
        )
    graph = write_outputs(report, job, lm.name)
    print_report(report, console, graph)
    return 0
