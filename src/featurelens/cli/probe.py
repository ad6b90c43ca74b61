"""Probe what a layer knows: dense and k-sparse probes, cross-validated by document, baselines beside them.

Units are a hook's channels (MLP neurons, residual stream, ...) or a dictionary's features (--dictionary).
Targets: token predicates (built in: digit, starts-word, capitalized, punctuation, in-code,
in-parentheses; or token:REGEX, context:REGEX), a labels file aligned to the rows (--labels: .npy, .txt,
.csv, .parquet or .jsonl with a 'label' column; NaN/empty leaves a row out), or a continuous target
(--target position, regression). For each: the class balance, the dense probe (L2 logistic regression,
class-balanced; ridge for continuous targets), a majority-class and a shuffled-label baseline, and k-sparse
probes for every --k (units ranked on the training folds by mean difference or F statistic, refit on the
top k). Classification is scored by balanced accuracy (chance 0.5 for two classes), regression by R².
Folds are grouped by document, so no text is both trained on and tested.

Writes OUT/results.json, scores.parquet, units.parquet and accuracy_vs_k.png.

examples:
  featurelens probe                                           # 4 predicates on layers.15.mlp_neurons, live
  featurelens probe --hook layers.10.resid_post --predicate digit --predicate 'context:\\bdef \\w*'
  featurelens probe --acts runs/demo/acts --hook layers.15.resid_post --labels labels.npy
  featurelens probe --dictionary runs/demo/sae --predicate in-code --k 1,4,16
  featurelens probe --target position --hook layers.3.resid_post --k 1,8,64
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from featurelens.cli.corpus_options import CORPUS_HELP, add_corpus_arguments, corpus_from_args
from featurelens.errors import ProbeError
from featurelens.probes.experiment import ProbeResult, ProbeSettings
from featurelens.probes.labels import ACCEPTED_PREDICATES
from featurelens.probes.ranking import RANKINGS
from featurelens.probes.run import ProbeJob, check_probe_out, run_probe, save_probe

HELP = "probe a layer (or dictionary features) for token predicates, labels or positions; k-sparse sweep"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    job, settings = ProbeJob(), ProbeSettings()
    parser.add_argument("--hook", default=job.hook, help=f"hook whose units are probed (default {job.hook})")
    parser.add_argument("--acts", help="activation store to read (default: run the model live)")
    parser.add_argument("--dictionary", help="probe this dictionary's features (of its own hook) instead")
    parser.add_argument("--model", default=job.model, help="model for live runs (default smollm2)")
    add_corpus_arguments(parser, f"text for live runs: {CORPUS_HELP}")
    parser.add_argument("--tokens", type=int, default=job.tokens, help="rows to probe (default 20000)")
    parser.add_argument("--seq-len", type=int, default=job.seq_len, help="tokens per sequence (live)")
    parser.add_argument("--batch-size", type=int, default=job.batch_size, help="sequences per forward pass")
    parser.add_argument(
        "--predicate",
        action="append",
        dest="predicates",
        metavar="SPEC",
        help=f"token predicate, repeatable: {ACCEPTED_PREDICATES}",
    )
    parser.add_argument("--labels", help="file of one label per row (aligned to the store's rows)")
    parser.add_argument("--target", choices=["position"], help="a continuous target (ridge regression)")
    parser.add_argument(
        "--k",
        default=",".join(map(str, settings.ks)),
        help="k values of the sparse sweep (default 1,2,...,64)",
    )
    parser.add_argument("--ranking", choices=RANKINGS, default=settings.ranking, help="how units are ranked")
    parser.add_argument(
        "--folds", type=int, default=settings.folds, help="cross-validation folds (by document)"
    )
    parser.add_argument("--C", type=float, default=settings.C, help="inverse L2 strength of logistic probes")
    parser.add_argument("--alpha", type=float, default=settings.alpha, help="L2 strength of ridge probes")
    parser.add_argument("--seed", type=int, default=settings.seed, help="seed of folds and shuffled labels")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--out", default=job.out, help="result folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing result folder")


def _ks(text: str) -> tuple[int, ...]:
    try:
        return tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise ProbeError(f"--k takes comma-separated integers such as 1,4,16, got {text!r}") from None


def job_from_args(args: argparse.Namespace) -> ProbeJob:
    settings = ProbeSettings(
        ks=_ks(args.k), ranking=args.ranking, folds=args.folds, C=args.C, alpha=args.alpha, seed=args.seed
    )
    return ProbeJob(
        out=args.out,
        hook=args.hook,
        acts=args.acts,
        dictionary=args.dictionary,
        model=args.model,
        corpus=corpus_from_args(args),
        tokens=args.tokens,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        predicates=tuple(args.predicates or ()),
        labels=args.labels,
        target=args.target,
        device=args.device,
        overwrite=args.overwrite,
        settings=settings,
    )


def print_results(results: list[ProbeResult], console: Console) -> None:
    """One column per target, one row per probe (baselines, dense, every k); then the best units."""
    ks = sorted({int(p[2:]) for r in results for p in r.scores if p.startswith("k=")})
    table = Table(title="cross-validated by document: mean score over folds")
    table.add_column("probe")
    for r in results:
        table.add_column(r.name, justify="right")
    positives = [r.balance.get("True", r.balance.get("1")) for r in results]
    table.add_row("rows", *[f"{r.rows:,}" for r in results])
    table.add_row(
        "positive", *[f"{p / r.rows:.1%}" if p else "" for p, r in zip(positives, results, strict=True)]
    )
    table.add_row("metric", *[r.metric for r in results])
    for probe in ("majority", "shuffled", "dense", *[f"k={k}" for k in ks]):
        table.add_row(probe, *[f"{r.mean(probe):.3f}" for r in results])
    console.print(table)
    for r in results:
        units = ", ".join(f"{u} ({s:.2f})" for u, s in r.units[:8])
        console.print(f"{r.name}: best units {units}")
        if r.skipped_folds:
            console.print(f"  skipped: {'; '.join(r.skipped_folds)}")


def main(args: argparse.Namespace) -> int:
    console = Console()
    job = job_from_args(args)
    check_probe_out(job.out, job.overwrite)
    with console.status("probing") as status:
        results, meta = run_probe(job, on_target=lambda name: status.update(f"probing {name}"))
    folder = save_probe(results, meta, job.out, job.overwrite)
    print_results(results, console)
    rows = int(meta["rows"])
    console.print(
        f"{rows:,} rows of {meta['hook']} ({meta['units']:,} units, {meta['documents']:,} documents) in "
        f"{meta['seconds']:.1f} s: {folder}"
    )
    return 0
