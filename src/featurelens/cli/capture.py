"""Capture activations of any Hugging Face model into an on-disk store.

The forward pass stops right after the last hooked layer. Activations stream into fixed-size shards
(each written to a temporary name, then renamed), so a killed capture continues with --resume and gives
the same store as an uninterrupted run.

examples:
  featurelens capture --model smollm2 --hook layers.15.resid_post --tokens 200000 --out runs/demo/acts
  featurelens capture --model ./my-model --hook layers.3.mlp_out --hook layers.3.resid_post \\
      --corpus data/ --text-field body --dtype bfloat16 --out runs/my/acts
  featurelens capture --corpus hf:wikitext --split train ... --resume
"""

from __future__ import annotations

import argparse
import math

from rich.console import Console

from featurelens.capture import CaptureConfig, CaptureResult, run_capture
from featurelens.capture.store import STORE_DTYPES
from featurelens.cli.corpus_options import add_corpus_arguments, corpus_from_args
from featurelens.cli.progress import token_progress
from featurelens.cli.workers import add_workers_argument, launch_or_join
from featurelens.distributed import World, process_group
from featurelens.models.loading import MODEL_DTYPES

HELP = "record activations at hook points into an on-disk store"


def add_arguments(parser: argparse.ArgumentParser, *, out: str = "runs/demo/acts") -> None:
    defaults = CaptureConfig()
    parser.add_argument(
        "--model", default=defaults.model, help="smollm2 (bundled), a local folder, a .gguf file or a hub id"
    )
    parser.add_argument(
        "--hook",
        action="append",
        dest="hooks",
        metavar="NAME",
        help="hook point to record, repeatable (see `featurelens hooks`); default layers.15.resid_post",
    )
    parser.add_argument(
        "--tokens", type=int, default=defaults.n_tokens, help="tokens to run through the model"
    )
    parser.add_argument("--out", default=out, help="store folder to create")
    add_corpus_arguments(parser)
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len, help="tokens per packed sequence")
    parser.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="sequences per forward pass"
    )
    parser.add_argument("--dtype", choices=STORE_DTYPES, default=defaults.dtype, help="dtype stored on disk")
    parser.add_argument(
        "--model-dtype",
        choices=MODEL_DTYPES,
        default=defaults.model_dtype,
        help="dtype the model runs in (default float32; bfloat16 halves memory and is fast on GPUs, "
        "slower than float32 on most CPUs)",
    )
    parser.add_argument(
        "--skip-positions",
        type=int,
        default=defaults.skip_positions,
        help="leave out the first N positions of every sequence (attention sinks; default 1)",
    )
    parser.add_argument(
        "--keep-special", action="store_true", help="also store rows of BOS/EOS/special tokens"
    )
    parser.add_argument(
        "--shard-tokens", type=int, default=defaults.shard_tokens, help="tokens per shard (resume unit)"
    )
    parser.add_argument(
        "--outlier-multiple",
        type=float,
        default=defaults.outlier_multiple,
        help="report rows whose norm exceeds this multiple of the median",
    )
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument(
        "--rank", type=int, help="this writer's rank when several fill one store (default: torchrun's, or 0)"
    )
    parser.add_argument(
        "--world-size", type=int, help="number of writers filling the store (default: torchrun's, or 1)"
    )
    add_workers_argument(parser)
    parser.add_argument("--resume", action="store_true", help="continue an interrupted capture")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing store")


def config_from_args(args: argparse.Namespace, world: World | None = None) -> CaptureConfig:
    """The capture the flags describe; ``world`` (torchrun's) fills in --rank and --world-size."""
    world = world or World()
    return CaptureConfig(
        out=args.out,
        model=args.model,
        hooks=tuple(args.hooks or CaptureConfig().hooks),
        n_tokens=args.tokens,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        dtype=args.dtype,
        model_dtype=args.model_dtype,
        corpus=corpus_from_args(args),
        skip_positions=args.skip_positions,
        keep_special=args.keep_special,
        shard_tokens=args.shard_tokens,
        outlier_multiple=args.outlier_multiple,
        device=args.device,
        rank=world.rank if args.rank is None else args.rank,
        world_size=world.size if args.world_size is None else args.world_size,
        resume=args.resume,
        overwrite=args.overwrite,
    )


def capture_with_progress(config: CaptureConfig, console: Console) -> CaptureResult:
    """Capture under a progress bar of this writer's share of the tokens."""
    per_shard, n = config.sequences_per_shard, config.n_sequences
    own = range(config.rank, math.ceil(n / per_shard), config.world_size)
    total = sum(min(per_shard, n - index * per_shard) for index in own) * config.seq_len
    with token_progress(console, "capturing", total=total) as advance:
        return run_capture(config, on_tokens=advance)


def print_result(result: CaptureResult, console: Console) -> None:
    from featurelens.cli.info import print_summary

    speed = result.tokens_run / result.seconds if result.seconds else 0.0
    console.print(
        f"captured {result.tokens_run:,} tokens in {result.seconds:.1f}s ({speed:,.0f} tok/s); "
        f"{result.shards_written} shard(s) written, {result.shards_skipped} already there"
    )
    print_summary(result.manifest, console)


def main(args: argparse.Namespace) -> int:
    world = launch_or_join(args)
    if world is None:  # --workers processes did the capture and printed its result
        return 0
    config = config_from_args(args, world)
    console = Console(stderr=False, quiet=not world.is_main)  # rank 0 speaks for the launch
    with process_group(world):
        result = capture_with_progress(config, console)
    if world.is_main:
        print_result(result, console)
    return 0
