"""Compare representations: every layer against every layer, within a model and against a second model.

By default: the bundled model's 30 residual-stream layers against each other (a-a) and against the same
architecture with random weights (a-b: the null model, what the architecture and tokens alone give), on
20,000 tokens of the bundled text, by debiased linear CKA. Values of linear CKA use every row (streamed);
other measures and all p-values use a random subsample of --null-rows rows, shuffled --permutations times;
cells are significant at --alpha after a Benjamini-Hochberg correction over each map.

Measures (--measure, repeatable; options as name:key=value,...):
  cka            debiased linear CKA (the default; about 0 for unrelated data at any width)
  cka-biased     the plug-in linear CKA (inflated toward 1 when units outnumber rows)
  kernel-cka     RBF-kernel CKA (sigma=0.8: bandwidth as a multiple of the median distance)
  rsa            RDM correlation (distance=correlation|euclidean, method=spearman|pearson|kendall)
  cca, svcca, pwcca        mean canonical correlation; after an SVD (keep=0.99); projection-weighted
  procrustes, shape        Procrustes distance; angular shape metric (alpha=1: rotations, 0: CCA-like)
  mutual-knn, cknna        shared nearest neighbours (k=10); CKA on mutual neighbours
  relative       relative representations: cosine to shared anchors (anchors=64)

Writes OUT/results.json, maps.parquet and one heatmap PNG per map and measure; `featurelens serve ATLAS
--compare OUT` shows them in the web app.

Two representations of your own (rows: the same items, e.g. stimuli; .npy, .csv or .parquet): --x and --y
compare them by every measure (or those given), each with a permutation p-value (default 1000 shuffles),
and write OUT/results.json.

examples:
  featurelens compare                                        # smollm2 x itself and x random init, CKA
  featurelens compare --measure cka --measure rsa --measure shape:alpha=0.5 --tokens 5000
  featurelens compare --hooks 'layers.*.mlp_out' --hooks-b 'layers.*.resid_post' --model-b none
  featurelens compare --acts runs/a/acts --acts-b runs/b/acts     # two stores of the same tokens
  featurelens compare --x model_rdm_features.npy --y voxels.npy --measure rsa --measure cka
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from rich.console import Console
from rich.table import Table

from featurelens.cli.corpus_options import CORPUS_HELP, add_corpus_arguments, corpus_from_args
from featurelens.cli.progress import stage_progress
from featurelens.compare.maps import MapJob, MapResult, run_maps
from featurelens.compare.measure import compare
from featurelens.compare.output import MARKER, cell_table, check_compare_out, grid, save_maps
from featurelens.compare.registry import MEASURES, measure_from_spec, measure_names
from featurelens.encode.inputs import read_numeric
from featurelens.errors import CompareError
from featurelens.folders import check_output_folder, staged_folder
from featurelens.jsonio import finite

HELP = "layer x layer similarity maps (CKA, RSA, CCA, shape metrics, kNN) with permutation nulls"
PAIR_PERMUTATIONS = 1000


def _patterns(values: list[str] | None) -> tuple[str, ...]:
    return tuple(p.strip() for value in values or () for p in value.split(",") if p.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    job = MapJob()
    parser.add_argument("--model", default=job.model, help="model for live runs (default smollm2)")
    parser.add_argument(
        "--model-b",
        default=job.model_b,
        help="second model: a spec, 'random' (random weights of --model's architecture; default) or 'none'",
    )
    parser.add_argument("--acts", help="activation store to read instead of running --model")
    parser.add_argument("--acts-b", help="second store of the same tokens (with --acts)")
    parser.add_argument(
        "--hooks", action="append", help="hook names or patterns, repeatable (default layers.*.resid_post)"
    )
    parser.add_argument("--hooks-b", action="append", help="hooks of the second set (default: --hooks)")
    parser.add_argument(
        "--measure",
        action="append",
        dest="measures",
        metavar="SPEC",
        help=f"measure, repeatable (default cka): {measure_names()}",
    )
    add_corpus_arguments(parser, f"text for live runs: {CORPUS_HELP}")
    parser.add_argument("--tokens", type=int, default=job.tokens, help="rows to compare (default 20000)")
    parser.add_argument("--seq-len", type=int, default=job.seq_len, help="tokens per sequence (live)")
    parser.add_argument("--batch-size", type=int, default=job.batch_size, help="sequences per forward pass")
    parser.add_argument(
        "--null-rows",
        type=int,
        default=job.null_rows,
        help="rows of the random subsample the nulls (and non-streamed measures) use (default 512)",
    )
    parser.add_argument(
        "--permutations",
        type=int,
        help=f"shuffles per cell (default {job.permutations}; {PAIR_PERMUTATIONS} for --x/--y; 0: none)",
    )
    parser.add_argument(
        "--x", help="a representation [items, units] to compare with --y (.npy/.csv/.parquet)"
    )
    parser.add_argument("--y", help="the second representation, rows the same items as --x")
    parser.add_argument("--alpha", type=float, default=job.alpha, help="false-discovery rate (default 0.05)")
    parser.add_argument(
        "--seed", type=int, default=job.seed, help="seed of the subsample, shuffles, random model"
    )
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--out", default=job.out, help="result folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing result folder")


def job_from_args(args: argparse.Namespace) -> MapJob:
    defaults = MapJob()
    model_b = None if str(args.model_b).lower() == "none" else args.model_b
    return MapJob(
        out=args.out,
        model=args.model,
        model_b=None if args.acts else model_b,
        acts=args.acts,
        acts_b=args.acts_b,
        hooks=_patterns(args.hooks) or defaults.hooks,
        hooks_b=_patterns(args.hooks_b),
        measures=tuple(args.measures or defaults.measures),
        corpus=corpus_from_args(args),
        tokens=args.tokens,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        null_rows=args.null_rows,
        permutations=defaults.permutations if args.permutations is None else args.permutations,
        alpha=args.alpha,
        seed=args.seed,
        device=args.device,
        overwrite=args.overwrite,
    )


def print_summary(result: MapResult, console: Console) -> None:
    """Per map and measure: the range of values, the diagonal, and how many cells are significant."""
    table = cell_table(result)
    for entry in result.meta["maps"]:
        for name, info in result.meta["measures"].items():
            values = grid(table, entry["name"], name, "value")
            significant = grid(table, entry["name"], name, "significant")
            diagonal = np.diagonal(values) if values.shape[0] == values.shape[1] else np.array([np.nan])
            low, high = np.nanmin(values), np.nanmax(values)
            console.print(
                f"{name} {entry['title']}: {info['kind']} from {low:.3f} to {high:.3f}, diagonal mean "
                f"{np.nanmean(diagonal):.3f}; {int(significant.sum())}/{significant.size} cells significant"
            )


def compare_files(args: argparse.Namespace, console: Console) -> int:
    """--x/--y: every measure asked for (default all) with its null; a table and OUT/results.json."""
    if not (args.x and args.y):
        raise CompareError("--x and --y go together: give both representations")
    out = check_output_folder(args.out, args.overwrite, MARKER, "comparison folder", CompareError)
    x, _ = read_numeric(args.x, "--x")
    y, _ = read_numeric(args.y, "--y")
    permutations = PAIR_PERMUTATIONS if args.permutations is None else args.permutations
    measures = [measure_from_spec(spec) for spec in (args.measures or MEASURES)]
    if not args.measures:  # every measure by default: leave out those these few items cannot give
        for measure in measures:
            if measure.min_rows > len(x):
                console.print(f"{measure.name} left out: it needs at least {measure.min_rows} items")
        measures = [measure for measure in measures if measure.min_rows <= len(x)]
    table = Table(
        title=f"{args.x} vs {args.y}: {len(x):,} items, {permutations} permutations (seed {args.seed})"
    )
    for column in ("measure", "value", "kind", "metric", "p", "null mean ± std"):
        table.add_column(column, justify="left" if column in ("measure", "kind") else "right")
    results = []
    with console.status("comparing") as status:
        for measure in measures:
            status.update(f"comparing: {measure.name}")
            result = compare(x, y, measure, permutations=permutations, seed=args.seed)
            results.append(result.as_dict())
            null = f"{result.null_mean:.3f} ± {result.null_std:.3f}" if result.null_mean is not None else ""
            p_value = f"{result.p_value:.4f}" if result.p_value is not None else ""
            table.add_row(
                measure.name,
                f"{result.value:.4f}",
                result.kind,
                "yes" if result.metric else "no",
                p_value,
                null,
            )
    with staged_folder(out) as staging:
        document = {"x": args.x, "y": args.y, "items": len(x), "comparisons": results}
        (staging / MARKER).write_text(json.dumps(finite(document), indent=2))
    console.print(table)
    console.print(f"written: {out / MARKER}")
    return 0


def main(args: argparse.Namespace) -> int:
    console = Console()
    if args.x or args.y:
        return compare_files(args, console)
    job = job_from_args(args)
    out = check_compare_out(job)
    result = run_maps(job, lambda label, unit, total: stage_progress(console, label, unit, total))
    save_maps(result, out)
    print_summary(result, console)
    meta = result.meta
    console.print(
        f"{meta['rows']:,} rows ({meta['null_rows']} for nulls, {meta['permutations']} permutations) in "
        f"{meta['seconds']['total']:.1f} s: {out}"
    )
    return 0
