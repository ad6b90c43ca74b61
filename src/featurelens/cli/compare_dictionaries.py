"""Rank dictionaries side by side: every folder measured inside its model on the same held-out tokens.

For each dictionary (any family the `Dictionary` interface loads: featurelens, SAELens or sparsify folders)
the table gives FVU, L0, dead and dense latent fractions, CE loss recovered and KL to the clean model (the
dictionary spliced in at its hook), and its training tokens and wall time from training.json. All must
belong to one model; the text is the training corpus after the longest capture (held out for all), or
--corpus. With --out: league.parquet, league.csv and pareto.png (FVU and CE loss recovered against L0).

examples:
  featurelens compare-dictionaries runs/sweep/*/                      # every SAE of a sweep
  featurelens compare-dictionaries runs/demo/sae runs/demo/jumprelu runs/mlp/transcoder --out runs/league
  featurelens compare-dictionaries a b --no-loss --tokens 50000        # reconstruction only, faster
"""

from __future__ import annotations

import argparse
import math

from rich.console import Console
from rich.table import Table

from featurelens.cli.evaluate import add_evaluation_arguments
from featurelens.evaluate.league import LeagueJob, check_league_out, league_table, save_league

HELP = "a league table of dictionaries on the same held-out tokens: FVU, L0, dead, CE loss recovered"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folders", nargs="+", metavar="FOLDER", help="dictionary folders to compare")
    parser.add_argument("--tokens", type=int, default=20_000, help="held-out tokens to measure on")
    add_evaluation_arguments(parser)
    parser.add_argument("--model", help="the model (default: from the folders' training.json)")
    parser.add_argument("--corpus", help="text to measure on (default: the training corpus, held out)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default: as trained)")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--out", help="folder for league.parquet, league.csv and pareto.png")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing league folder")


def _cell(value: object, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return format(value, spec)


def main(args: argparse.Namespace) -> int:
    console = Console()
    job = LeagueJob(
        folders=tuple(args.folders),
        tokens=args.tokens,
        batch_size=args.eval_batch_size,
        with_loss=not args.no_loss,
        model=args.model,
        corpus=args.corpus,
        seq_len=args.seq_len,
        device=args.device,
        out=args.out,
        overwrite=args.overwrite,
    )
    out = check_league_out(job)
    with console.status("measuring") as status:
        table = league_table(job, on_dictionary=lambda name: status.update(f"measuring {name}"))
    rows = table.to_pylist()
    view = Table(title=f"{len(rows)} dictionaries on the same {rows[0]['tokens_measured']:,} held-out tokens")
    columns = [
        ("dictionary", "dictionary", "s"), ("arch", "arch", "s"), ("latents", "latents", ","),
        ("FVU", "fvu", ".4f"), ("L0", "l0", ".1f"), ("dead", "dead_fraction", ".1%"),
        ("dense", "dense_fraction", ".1%"), ("CE recovered", "ce_loss_recovered", ".1%"),
        ("KL", "kl_to_clean", ".4f"), ("trained on", "training_tokens", ","),
        ("train s", "training_seconds", ".0f"),
    ]  # fmt: skip
    for title, _, _ in columns:
        view.add_column(title, justify="left" if title in ("dictionary", "arch") else "right")
    for row in sorted(rows, key=lambda r: r["fvu"]):
        view.add_row(*[_cell(row[key], spec) for _, key, spec in columns])
    console.print(view)
    if out is not None:
        save_league(table, out)
        console.print(f"written: {out}/league.parquet, league.csv, pareto.png")
    return 0
