"""Encoding models: predict recordings (voxels, electrodes, behaviour, another network's units) from features
with cross-validated ridge, each target with its own alpha, scored on held-out rows.

Inputs: --x features [rows, features] and --y recordings [rows, targets] (.npy without pickle, .csv, or
.parquet), or [repeats, rows, targets] with --repeats-axis (a table: a 'repeat' column) for a noise
ceiling; --groups labels runs/stories so folds keep them whole and delays never cross them. Or, as a demo
without recordings, one hook predicting another (--hook, --target-hook; at most --max-targets units, 256 by
default): of an activation store (--acts), or of --model run live on the corpus (the default: the bundled
model's layer 10 residual stream predicting layer 20's MLP neurons on 4,000 tokens of Python's docs).

Folds are contiguous blocks (or whole groups), never shuffled rows. In each training set every target's
alpha is chosen from --alphas by --inner-folds inner folds (or --alpha-selection loo: efficient
leave-one-out) and the model refit; --bands gives each feature band its own alpha (banded ridge);
--delays stacks shifted copies of the features (FIR). Reported per target, never clipped: raw held-out R²,
the noise ceiling, raw / ceiling (NaN with the reason when the ceiling is <= 0), and with --permutations a
p-value (recordings shuffled in blocks of --permutation-block rows, the whole cross-validation redone,
alpha choices included, for each permutation; plain ridge only).

Writes OUT/results.json, targets.parquet and r2_vs_ceiling.png.

examples:
  featurelens encode                                          # live: layer 10 -> layer 20 neurons, smollm2
  featurelens encode --x features.npy --y voxels.npy --repeats-axis 0 --permutations 200
  featurelens encode --x stim.npy --y bold.npy --groups runs.npy --delays 1,2,3,4 --folds 4
  featurelens encode --x x.parquet --y behaviour.csv --alphas 1e-2..1e5:15 --bands 0:256,256:512
  featurelens encode --acts runs/demo/acts --hook layers.10.resid_post --target-hook layers.20.mlp_neurons
"""

from __future__ import annotations

import argparse

import numpy as np
from rich.console import Console
from rich.table import Table

from featurelens.cli.corpus_options import CORPUS_HELP, add_corpus_arguments, corpus_from_args
from featurelens.cli.progress import stage_progress
from featurelens.encode.ceiling import CEILINGS
from featurelens.encode.experiment import ALPHA_SELECTIONS, EncodeSettings, EncodingResult
from featurelens.encode.run import EncodeJob, check_encode_out, run_encode, save_encode
from featurelens.errors import EncodeError

HELP = "encoding models: cross-validated ridge from features to recordings, ceilings and permutation nulls"
DEFAULT_GRID = "1e-2..1e5:15"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    job, settings = EncodeJob(), EncodeSettings()
    parser.add_argument("--x", help="features [rows, features]: .npy, .csv or .parquet")
    parser.add_argument(
        "--y", help="recordings [rows, targets] (or with a repeats axis): .npy, .csv or .parquet"
    )
    parser.add_argument("--repeats-axis", type=int, help="axis of --y (.npy) holding repeated presentations")
    parser.add_argument("--groups", help="one run/story/document label per row (.npy, .txt, .csv, .parquet)")
    parser.add_argument("--acts", help="activation store: predict one hook's units from another's (demo)")
    parser.add_argument("--model", default=job.model, help="model run live when no files or store are given")
    add_corpus_arguments(parser, f"text for live runs: {CORPUS_HELP}")
    parser.add_argument("--seq-len", type=int, default=job.seq_len, help="tokens per sequence (live)")
    parser.add_argument("--batch-size", type=int, default=job.batch_size, help="sequences per forward (live)")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N (live)")
    parser.add_argument("--hook", default=job.hook, help=f"hook of the features (default {job.hook})")
    parser.add_argument(
        "--target-hook",
        default=job.target_hook,
        help=f"hook of the targets (default {job.target_hook})",
    )
    parser.add_argument(
        "--tokens",
        type=int,
        default=job.tokens,
        help="rows to read from the store or the model (default 4000)",
    )
    parser.add_argument("--max-targets", type=int, help="at most this many targets (hooks: default 256)")
    parser.add_argument("--delays", default="", help="FIR delays in rows, e.g. 1,2,3,4 (default: none)")
    parser.add_argument("--folds", type=int, default=settings.folds, help="outer folds (blocks or groups)")
    parser.add_argument(
        "--inner-folds", type=int, default=settings.inner_folds, help="inner folds choosing each alpha"
    )
    parser.add_argument(
        "--alpha-selection",
        choices=ALPHA_SELECTIONS,
        default=settings.alpha_selection,
        help="inner-cv (default) or loo (efficient leave-one-out; assumes exchangeable rows)",
    )
    parser.add_argument(
        "--alphas",
        default=DEFAULT_GRID,
        help=f"alpha grid: LOW..HIGH[:COUNT] (log-spaced) or a comma list (default {DEFAULT_GRID})",
    )
    parser.add_argument("--bands", default="", help="feature bands start:stop,... for banded ridge")
    parser.add_argument(
        "--band-candidates", type=int, default=settings.band_candidates, help="random band scalings tried"
    )
    parser.add_argument(
        "--no-standardize",
        action="store_true",
        help="keep features as given (default: z-score on training rows)",
    )
    parser.add_argument(
        "--ceiling", choices=CEILINGS, default=settings.ceiling, help="the ceiling normalised by"
    )
    parser.add_argument(
        "--permutations", type=int, default=0, help="permutations per target (default 0: none)"
    )
    parser.add_argument(
        "--permutation-block", type=int, default=1, help="rows shuffled together in the null (default 1)"
    )
    parser.add_argument(
        "--seed", type=int, default=settings.seed, help="seed of permutations and band search"
    )
    parser.add_argument("--drop-nan", action="store_true", help="leave out rows with NaN instead of failing")
    parser.add_argument("--out", default=job.out, help="result folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing result folder")


def parse_alphas(text: str) -> tuple[float, ...]:
    """``"1e-2..1e5:15"`` (log-spaced, count 15 by default) or ``"0.1,1,10"``."""
    try:
        if ".." in text:
            bounds, _, count = text.partition(":")
            low, high = (float(part) for part in bounds.split(".."))
            if low <= 0 or high <= 0:
                raise ValueError
            return tuple(float(a) for a in np.logspace(np.log10(low), np.log10(high), int(count or 15)))
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise EncodeError(
            f"--alphas takes LOW..HIGH[:COUNT] such as 1e-2..1e5:15 or 0.1,1,10, got {text!r}"
        ) from None


def parse_delays(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise EncodeError(f"--delays takes comma-separated integers such as 1,2,3,4, got {text!r}") from None


def parse_bands(text: str) -> tuple[tuple[int, int], ...]:
    try:
        return tuple(
            (int(part.split(":")[0]), int(part.split(":")[1])) for part in text.split(",") if part.strip()
        )
    except (ValueError, IndexError):
        raise EncodeError(f"--bands takes start:stop ranges such as 0:256,256:512, got {text!r}") from None


def job_from_args(args: argparse.Namespace) -> EncodeJob:
    settings = EncodeSettings(
        folds=args.folds,
        alphas=parse_alphas(args.alphas),
        alpha_selection=args.alpha_selection,
        inner_folds=args.inner_folds,
        delays=parse_delays(args.delays),
        bands=parse_bands(args.bands),
        band_candidates=args.band_candidates,
        standardize=not args.no_standardize,
        ceiling=args.ceiling,
        permutations=args.permutations,
        permutation_block=args.permutation_block,
        seed=args.seed,
        drop_nan=args.drop_nan,
    )
    return EncodeJob(
        out=args.out,
        x=args.x,
        y=args.y,
        repeats_axis=args.repeats_axis,
        groups=args.groups,
        acts=args.acts,
        model=args.model,
        corpus=corpus_from_args(args),
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        device=args.device,
        hook=args.hook,
        target_hook=args.target_hook,
        tokens=args.tokens,
        max_targets=args.max_targets,
        overwrite=args.overwrite,
        settings=settings,
    )


def print_results(result: EncodingResult, console: Console, shown: int = 10) -> None:
    """The best targets by raw R², with their ceiling, normalised score and p-value; then the counts."""
    table = Table(title=f"held-out R² of {len(result.names)} targets (best {min(shown, len(result.names))})")
    for column in ("target", "raw R²", "alpha", "ceiling", "normalised", "p-value", "note"):
        table.add_column(column, justify="left" if column in ("target", "note") else "right")
    order = np.argsort(-np.nan_to_num(result.raw_r2, nan=-np.inf), kind="stable")[:shown]
    rows = result.target_rows()
    for i in order.tolist():
        row = rows[i]
        table.add_row(
            row["target"],
            _number(row["raw_r2"]),
            f"{row['alpha']:.3g}",
            _number(row["ceiling"]),
            _number(row["normalised"]),
            _number(row["pvalue"]),
            row["reason"],
        )
    console.print(table)
    undefined = sum(1 for reason in result.reasons if reason)
    if undefined:
        console.print(f"{undefined} target(s) have an undefined score or ceiling; reasons in results.json")


def _number(value: float) -> str:
    return "" if value != value else f"{value:.3f}"  # NaN prints empty


def main(args: argparse.Namespace) -> int:
    console = Console()
    job = job_from_args(args)
    check_encode_out(job.out, job.overwrite)
    with stage_progress(console, "encoding", "steps") as update:
        result, meta = run_encode(job, progress=lambda done, total, detail: update(done, total, detail))
    folder = save_encode(result, meta, job.out, job.overwrite)
    print_results(result, console)
    summary = result.summary()
    console.print(
        f"{result.rows:,} rows ({result.dropped_rows} dropped), {meta['features']:,} features, "
        f"{len(result.names):,} targets, median raw R² {summary['median_raw_r2']:.3f} in "
        f"{meta['seconds']:.1f} s: {folder}"
    )
    return 0
