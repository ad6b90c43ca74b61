"""Map every feature of a dictionary (or every MLP neuron) into one SQLite atlas, in one streaming pass.

Per feature: firing density, mean and max activation, a histogram of its non-zero activations, the top
activating contexts with per-token activations, quantile-stratified samples and random non-activating
contexts, the tokens its decoder direction promotes and suppresses (through the final norm), the tokens
whose embeddings align with its encoder direction, co-occurring features and nearest features by decoder
cosine. Activations come from the store the dictionary was trained on (while it exists) or live from its
model on its corpus (--live). The file is written under a temporary name and renamed when complete.

PATH is a dictionary folder (featurelens, SAELens or sparsify; others need --model), a neuron hook such as
layers.15.mlp_neurons (the identity dictionary over the MLP's neurons, run live), or, with --export parquet,
an existing atlas file. Look at the result with `featurelens show ATLAS [ID]`.

examples:
  featurelens atlas runs/demo/sae --out runs/demo/atlas.sqlite
  featurelens atlas runs/demo/sae --live --tokens 50000 --top-k 40
  featurelens atlas layers.15.mlp_neurons --model smollm2 --tokens 50000 --out runs/demo/neurons.sqlite
  featurelens atlas runs/demo/atlas.sqlite --export parquet
"""

from __future__ import annotations

import argparse

from rich.console import Console

from featurelens.atlas import AtlasJob, AtlasSettings, AtlasSummary, build_atlas
from featurelens.atlas.export import export_parquet, is_atlas_file
from featurelens.cli.progress import token_progress
from featurelens.errors import AtlasError

HELP = "map every feature (or neuron) into a searchable SQLite atlas"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="dictionary folder, neuron hook (layers.N.mlp_neurons), or atlas file")
    parser.add_argument(
        "--out", help="atlas file to write (default: next to the dictionary, NAME.atlas.sqlite)"
    )
    parser.add_argument("--tokens", type=int, default=200_000, help="tokens to stream through the dictionary")
    parser.add_argument("--model", help="model (default: the one in training.json; neurons: smollm2)")
    parser.add_argument("--corpus", help="text for --live (default: the training corpus)")
    parser.add_argument("--acts", help="activation store to read (default: the one it was trained on)")
    parser.add_argument("--live", action="store_true", help="run the model on the corpus instead of a store")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence for --live (default: as trained)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass for --live")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    defaults = AtlasSettings()
    parser.add_argument(
        "--top-k", type=int, default=defaults.top_k, help="top activating contexts per feature"
    )
    parser.add_argument(
        "--before", type=int, default=defaults.before, help="context tokens before each example"
    )
    parser.add_argument("--after", type=int, default=defaults.after, help="context tokens after each example")
    parser.add_argument("--quantile-bins", type=int, default=defaults.quantile_bins, help="activation bins")
    parser.add_argument("--per-bin", type=int, default=defaults.per_bin, help="samples per quantile bin")
    parser.add_argument("--negatives", type=int, default=defaults.negatives, help="non-activating contexts")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the random samples")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing atlas file")
    parser.add_argument("--export", choices=["parquet"], help="also write the atlas as Parquet tables")


def default_out(path: str) -> str:
    return f"{path.rstrip('/')}.atlas.sqlite"


def build_with_progress(job: AtlasJob, console: Console) -> AtlasSummary:
    """Build ``job`` with a progress bar over its tokens."""
    with token_progress(console, "mapping", total=job.tokens) as advance:
        return build_atlas(job, on_tokens=lambda n, expected: advance(n, total=expected))


def print_summary(summary: AtlasSummary, console: Console) -> None:
    rate = summary.features / summary.seconds if summary.seconds else 0.0
    console.print(
        f"atlas of {summary.features:,} features over {summary.tokens:,} tokens ({summary.source}) in "
        f"{summary.seconds:.1f} s ({rate:,.0f} features/s): {summary.path}"
    )
    console.print(f"look at it with: featurelens show {summary.path} [FEATURE_ID]")


def main(args: argparse.Namespace) -> int:
    console = Console()
    if is_atlas_file(args.path):
        if args.export is None:
            raise AtlasError(f"{args.path} is already an atlas; pass --export parquet to convert it")
        folder = export_parquet(args.path, args.out)
        console.print(f"wrote Parquet tables to {folder}")
        return 0
    settings = AtlasSettings(
        top_k=args.top_k,
        before=args.before,
        after=args.after,
        quantile_bins=args.quantile_bins,
        per_bin=args.per_bin,
        negatives=args.negatives,
        seed=args.seed,
    )
    job = AtlasJob(
        dictionary=args.path,
        out=str(args.out or default_out(args.path)),
        tokens=args.tokens,
        model=args.model,
        corpus=args.corpus,
        acts=args.acts,
        live=args.live,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        device=args.device,
        overwrite=args.overwrite,
        settings=settings,
    )
    summary = build_with_progress(job, console)
    print_summary(summary, console)
    if args.export:
        console.print(f"wrote Parquet tables to {export_parquet(summary.path, None)}")
    return 0
