"""Report what every unit of every layer does, in one streaming pass (from a store, or live).

Per hook: dead and always-on units, the firing-rate distribution, activation sparsity (exact and near
zeros: the "lazy neuron" statistic), kurtosis and outlier channels (what quantization cares about),
massive activations (entries >= 100x and 1000x the layer's median magnitude, with their channels, positions
and tokens), token-, previous-token- and bigram-specific units (coverage and lift of the token that explains
their strongest activations) and positional units (variance explained by position). Live runs keep every
position, so the attention-sink rows at position 0 are included; a store gives the rows it holds.

Writes OUT/: layers.parquet (layer x statistic), units.parquet (every unit), massive.parquet,
positional.parquet, report.json, PNG plots (sparsity, kurtosis, massive map of layer x channel, firing
rates) and report.html. `featurelens serve ATLAS --neurons OUT` links each notable unit to its atlas card.

examples:
  featurelens neurons                                    # MLP neurons and residual stream of every layer
  featurelens neurons --hook 'layers.*.mlp_neurons' --tokens 20000 --out runs/neurons
  featurelens neurons --acts runs/demo/acts --out runs/demo/neurons   # every hook of a store
  featurelens neurons --model ./my-model --corpus data/ --hook layers.3.mlp_out --massive 50,500
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from featurelens.cli.corpus_options import CORPUS_HELP, add_corpus_arguments, corpus_from_args
from featurelens.cli.progress import token_progress
from featurelens.errors import NeuronError
from featurelens.neurons import NeuronJob, NeuronReport, NeuronSettings, run_neuron_report, save_report
from featurelens.neurons.output import check_out
from featurelens.neurons.report import DEFAULT_HOOKS

HELP = "report dead, dense, sparse, outlier, massive, token and positional units of every layer"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    job, settings = NeuronJob(), NeuronSettings()
    parser.add_argument(
        "--hook",
        action="append",
        dest="hooks",
        metavar="NAME",
        help=f"hook name or pattern, repeatable (default: the store's; live: {' '.join(DEFAULT_HOOKS)})",
    )
    parser.add_argument("--acts", help="activation store to read (default: run the model live)")
    parser.add_argument("--model", default=job.model, help="model for live runs (default smollm2)")
    add_corpus_arguments(parser, f"text for live runs: {CORPUS_HELP}")
    parser.add_argument("--tokens", type=int, default=job.tokens, help="tokens to read or run")
    parser.add_argument("--seq-len", type=int, default=job.seq_len, help="tokens per sequence (live)")
    parser.add_argument("--batch-size", type=int, default=job.batch_size, help="sequences per forward pass")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--out", default=job.out, help="report folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted report from its last checkpoint"
    )
    parser.add_argument(
        "--checkpoint-seconds",
        type=float,
        default=job.checkpoint_seconds,
        help="seconds between checkpoints of the running state (default 300)",
    )
    parser.add_argument(
        "--fire-threshold",
        type=float,
        default=settings.fire_threshold,
        help="a unit fires where value > this",
    )
    parser.add_argument(
        "--near-zero",
        type=float,
        default=settings.near_zero,
        help="near zero: |x| <= this x the layer's median |x| (default 0.01)",
    )
    parser.add_argument(
        "--outlier-multiple",
        type=float,
        default=settings.outlier_multiple,
        help="outlier: |x| > this x the layer's median |x| (default 20)",
    )
    parser.add_argument(
        "--outlier-rate",
        type=float,
        default=settings.outlier_rate,
        help="outlier channel: beyond --outlier-multiple on at least this fraction of rows (default 0.001)",
    )
    parser.add_argument(
        "--sink-multiple",
        type=float,
        default=settings.sink_multiple,
        help="sink rows (left out of the position statistics): norm > this x the median row norm",
    )
    parser.add_argument(
        "--massive",
        default=",".join(f"{m:g}" for m in settings.massive),
        help="massive-activation multiples of the layer's median |x| (default 100,1000)",
    )
    parser.add_argument(
        "--always-on",
        type=float,
        default=settings.always_on,
        help="always-on: fires on at least this fraction",
    )
    parser.add_argument(
        "--positional", type=float, default=settings.positional, help="positional: position explains >= this"
    )
    parser.add_argument(
        "--top",
        type=int,
        default=settings.top,
        help="strongest activations kept per unit for token statistics",
    )


def _multiples(text: str) -> tuple[float, ...]:
    try:
        return tuple(sorted(float(part) for part in text.split(",") if part.strip()))
    except ValueError:
        raise NeuronError(f"--massive takes comma-separated numbers such as 100,1000, got {text!r}") from None


def job_from_args(args: argparse.Namespace) -> NeuronJob:
    settings = NeuronSettings(
        fire_threshold=args.fire_threshold,
        near_zero=args.near_zero,
        outlier_multiple=args.outlier_multiple,
        outlier_rate=args.outlier_rate,
        sink_multiple=args.sink_multiple,
        massive=_multiples(args.massive),
        always_on=args.always_on,
        top=args.top,
        positional=args.positional,
    )
    return NeuronJob(
        out=args.out,
        hooks=tuple(args.hooks or ()),
        acts=args.acts,
        model=args.model,
        corpus=corpus_from_args(args),
        tokens=args.tokens,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        device=args.device,
        overwrite=args.overwrite,
        resume=args.resume,
        checkpoint_seconds=args.checkpoint_seconds,
        settings=settings,
    )


def print_report(report: NeuronReport, console: Console) -> None:
    """The layer x statistic table, one row per hook."""
    table = Table(title=f"{report.meta['rows']:,} rows ({report.meta.get('source')})")
    columns = {
        "hook": "hook",
        "dead": "dead",
        "always_on": "always on",
        "fire_rate": "firing",
        "near_zero_fraction": "near 0",
        "kurtosis": "kurtosis",
        "max_over_median": "max/median",
        "outlier_units": "outliers",
        "massive_units": "massive",
        "token_units": "token",
        "previous_token_units": "prev tok",
        "bigram_units": "bigram",
        "positional_units": "positional",
    }
    for title in columns.values():
        table.add_column(title, justify="left" if title == "hook" else "right")
    for row in report.layers.to_pylist():
        cells = []
        for key in columns:
            value = row[key]
            if key in ("fire_rate", "near_zero_fraction"):
                cells.append(f"{value:.1%}")
            elif isinstance(value, float):
                cells.append(f"{value:,.1f}")
            else:
                cells.append(f"{value:,}" if isinstance(value, int) else str(value))
        table.add_row(*cells)
    console.print(table)


def main(args: argparse.Namespace) -> int:
    console = Console()
    job = job_from_args(args)
    check_out(job.out, job.overwrite)  # before the pass, not after it
    with token_progress(console, "measuring", total=job.tokens) as advance:
        report = run_neuron_report(job, on_rows=lambda n, expected: advance(n, total=expected))
    folder = save_report(report, job.out, job.overwrite)
    print_report(report, console)
    console.print(
        f"{report.meta['rows']:,} rows in {report.meta['seconds']:.1f} s "
        f"({report.meta['rows_per_second']:,.0f} rows/s over {len(report.meta['hooks'])} hooks): {folder}"
    )
    console.print(
        f"open {folder / 'report.html'}, or browse it with: featurelens serve ATLAS --neurons {folder}"
    )
    return 0
