"""The main job on the bundled defaults: capture activations of SmolLM2-135M-Instruct on Python's docs.

Today this captures layers.15.resid_post for --tokens tokens into --out and prints a summary;
later stages (dictionary training, the atlas, explanations, the web app) join the same command.
A rerun continues an interrupted capture and reuses a finished one.

examples:
  featurelens run
  featurelens run --tokens 50000 --out runs/quick
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from featurelens.capture import ActivationStore
from featurelens.capture.run import CaptureConfig
from featurelens.cli.capture import capture_with_progress, print_result
from featurelens.cli.info import print_summary
from featurelens.corpus import CorpusConfig

HELP = "run the whole loop on the bundled model and corpus"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = CaptureConfig()
    parser.add_argument(
        "--model", default=defaults.model, help="model to look inside (default: bundled smollm2)"
    )
    parser.add_argument("--hook", default=defaults.hooks[0], help="hook point to study")
    parser.add_argument("--tokens", type=int, default=defaults.n_tokens, help="tokens to capture")
    parser.add_argument("--corpus", default="bundled", help="bundled, a local file/folder, or hf:<dataset>")
    parser.add_argument("--out", default="runs/demo", help="run folder; activations go to OUT/acts")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--overwrite", action="store_true", help="redo the capture from scratch")


def main(args: argparse.Namespace) -> int:
    console = Console()
    config = CaptureConfig(
        out=str(Path(args.out) / "acts"),
        model=args.model,
        hooks=(args.hook,),
        n_tokens=args.tokens,
        corpus=CorpusConfig(spec=args.corpus),
        device=args.device,
        resume=True,
        overwrite=args.overwrite,
    )
    console.rule("[bold]1. capture")
    result = capture_with_progress(config, console)
    if result.shards_written:
        print_result(result, console)
    else:
        console.print(f"reusing the finished capture in {config.out}")
        print_summary(ActivationStore.open(config.out).manifest, console, Path(config.out))
    return 0
