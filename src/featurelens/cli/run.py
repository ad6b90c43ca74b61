"""The main job on the bundled defaults: capture, train, evaluate, map and explain a sparse dictionary.

1. capture layers.15.resid_post of SmolLM2-135M-Instruct on Python's own docs (--tokens) into OUT/acts;
2. train a TopK SAE (k=32, 16x expansion, 2 epochs, the last 10% of rows held out) into OUT/sae;
3. evaluate it in the model on text it never saw (--eval-tokens): FVU, L0, dead latents, CE loss recovered;
4. map every feature into OUT/atlas.sqlite (--atlas-tokens of the capture): densities, top contexts,
   logit effects, neighbours; look at it with `featurelens show OUT/atlas.sqlite [ID]`;
5. explain every feature with the baseline, and the densest few (--explain-local) with the bundled model,
   scored on held-out examples;
6. print the command that serves the web app on it (or serve it: --serve).
On a 2-core CPU the defaults take about 6 minutes with AVX-512-BF16 units, about 18 with AVX2 only.
A rerun reuses finished stages and continues interrupted ones; --overwrite redoes everything.

examples:
  featurelens run
  featurelens run --tokens 50000 --out runs/quick
  featurelens run --arch batchtopk --k 64 --expansion 8
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console

from featurelens.atlas import Atlas, AtlasJob, AtlasSettings
from featurelens.capture import ActivationStore
from featurelens.capture.run import CaptureConfig, json_roundtrip
from featurelens.cli import serve
from featurelens.cli.atlas import build_with_progress
from featurelens.cli.atlas import print_summary as print_atlas_summary
from featurelens.cli.capture import capture_with_progress, print_result
from featurelens.cli.evaluate import add_evaluation_arguments, evaluate_folder, print_evaluation
from featurelens.cli.explain import explain_with_progress, print_explain_summary
from featurelens.cli.info import print_summary
from featurelens.cli.train import (
    add_dictionary_arguments,
    configs_from_args,
    print_results,
    train_with_progress,
)
from featurelens.corpus import CorpusConfig
from featurelens.dictionaries.base import DictionaryError
from featurelens.errors import FeatureLensError
from featurelens.explain import ExplainJob
from featurelens.training.config import TrainConfig
from featurelens.training.from_store import StoreTraining, is_finished, read_training, train_on_store

HELP = "run the whole loop on the bundled model and corpus"
EPOCHS = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = CaptureConfig()
    parser.add_argument(
        "--model", default=defaults.model, help="model to look inside (default: bundled smollm2)"
    )
    parser.add_argument("--hook", default=defaults.hooks[0], help="hook point to study")
    parser.add_argument("--tokens", type=int, default=defaults.n_tokens, help="tokens to capture")
    parser.add_argument("--corpus", default="bundled", help="bundled, a local file/folder, or hf:<dataset>")
    parser.add_argument("--out", default="runs/demo", help="run folder: OUT/acts, OUT/sae, OUT/atlas.sqlite")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--overwrite", action="store_true", help="redo every stage from scratch")
    add_dictionary_arguments(parser)
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="training passes over the activations")
    parser.add_argument("--eval-tokens", type=int, default=4096, help="held-out tokens to evaluate on")
    add_evaluation_arguments(parser)
    parser.add_argument(
        "--atlas-tokens", type=int, default=None, help="captured tokens to map (default: all of them)"
    )
    parser.add_argument(
        "--explain-local",
        type=int,
        default=2,
        help="densest features the bundled model also explains (0: none)",
    )
    parser.add_argument("--serve", action="store_true", help="finish by serving the web app on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="port for --serve")


def trained_with(folder: Path, config: TrainConfig, manifest: dict[str, Any]) -> bool:
    """True when ``folder`` holds a finished dictionary trained with ``config`` (its step count aside) on
    the capture described by the store ``manifest``."""
    training = read_training(folder) if is_finished(folder) else None
    if training is None:
        return False
    same_capture = (training.get("model"), training.get("corpus"), training.get("captured_tokens")) == (
        manifest["model"]["spec"],
        manifest["corpus"],
        manifest["config"]["n_tokens"],
    )
    wanted = {**config.to_dict(), "steps": None}
    return same_capture and {**training["train_config"], "steps": None} == json_roundtrip(wanted)


def main(args: argparse.Namespace) -> int:
    console = Console()
    out = Path(args.out)
    config = CaptureConfig(
        out=str(out / "acts"),
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

    console.rule("[bold]2. train")
    configs = configs_from_args(args, args.hook, None)
    if len(configs) > 1:
        raise DictionaryError("featurelens run trains one dictionary; sweep several with featurelens train")
    sae = out / "sae"
    manifest = ActivationStore.open(config.out).manifest
    retrained = args.overwrite or not trained_with(sae, configs[0], manifest)
    if not retrained:
        console.print(f"reusing the trained dictionary in {sae}")
    else:
        retrain = args.overwrite or is_finished(sae)  # a finished one with other settings is replaced
        job = StoreTraining(
            acts=config.out,
            out=str(sae),
            epochs=args.epochs,
            resume=not retrain,
            overwrite=retrain,
            device=args.device,
        )
        saved = train_with_progress(partial(train_on_store, job, configs), console)
        print_results(saved, console)

    console.rule("[bold]3. evaluate")
    evaluation, held_out = evaluate_folder(
        sae,
        console,
        tokens=args.eval_tokens,
        batch_size=args.eval_batch_size,
        with_loss=not args.no_loss,
        device=args.device,
    )
    print_evaluation(evaluation, console, held_out=held_out)

    console.rule("[bold]4. atlas")
    atlas = out / "atlas.sqlite"
    tokens = args.atlas_tokens or args.tokens
    if not retrained and mapped_with(atlas, tokens):
        console.print(f"reusing the atlas in {atlas}")
    else:
        mapping = AtlasJob(str(sae), str(atlas), tokens=tokens, device=args.device, overwrite=True)
        print_atlas_summary(build_with_progress(mapping, console), console)

    console.rule("[bold]5. explain")
    baseline = ExplainJob(str(atlas), features="all")
    print_explain_summary(explain_with_progress(baseline, console), console)
    if args.explain_local:
        local = ExplainJob(
            str(atlas), explainer="local", features=f"top:{args.explain_local}", device=args.device
        )
        print_explain_summary(explain_with_progress(local, console), console)

    command = f"featurelens serve {atlas}"
    if args.serve:
        console.rule("[bold]6. serve")
        return serve.main(
            argparse.Namespace(
                atlas=str(atlas),
                port=args.port,
                host="127.0.0.1",
                model=None,
                device=args.device,
                circuit=None,
            )
        )
    console.print(f"browse it in the web app: [bold]{command}[/] (then open http://127.0.0.1:8000)")
    return 0


def mapped_with(atlas: Path, tokens: int) -> bool:
    """True when ``atlas`` is a complete atlas built from ``tokens`` tokens of the store."""
    try:
        with Atlas.open(atlas) as opened:
            return (
                opened.meta["source"] == "store"
                and opened.meta["settings"] == asdict(AtlasSettings())
                and (opened.meta["tokens_requested"] == tokens)
            )
    except FeatureLensError:
        return False
