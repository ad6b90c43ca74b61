"""The main job on the bundled defaults: capture, train, evaluate, map and explain a sparse dictionary.

1. capture layers.15.resid_post of SmolLM2-135M-Instruct on Python's own docs (--tokens, 80k) into OUT/acts;
2. train a TopK SAE (k=32, 16x expansion, 4 epochs of 1,024-token batches, the last 10% of rows held out)
   into OUT/sae;
3. evaluate it in the model on text it never saw (--eval-tokens): FVU, L0, dead latents, CE loss recovered;
4. map every feature into OUT/atlas.sqlite (--atlas-tokens of the capture): densities, top contexts,
   logit effects, neighbours; look at it with `featurelens show OUT/atlas.sqlite [ID]`;
5. explain every feature with the baseline, scored on held-out examples (the bundled 135M model's own
   explanations score at chance, so it explains only the densest --explain-local N when asked; the run
   prints the command for a stronger model behind an OpenAI-compatible endpoint);
6. print each stage's time (also in OUT/run.json) and the command that serves the web app on it
   (or serve it: --serve).
A rerun reuses finished stages and continues interrupted ones; --overwrite redoes everything.

examples:
  featurelens run
  featurelens run --tokens 50000 --out runs/quick
  featurelens run --arch batchtopk --k 64 --expansion 8
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from featurelens.atlas import Atlas, AtlasJob, AtlasSettings
from featurelens.capture import ActivationStore
from featurelens.capture.run import CaptureConfig, json_roundtrip
from featurelens.capture.store import write_json_atomic
from featurelens.cli import serve
from featurelens.cli.atlas import build_with_progress
from featurelens.cli.atlas import print_summary as print_atlas_summary
from featurelens.cli.capture import capture_with_progress, print_result
from featurelens.cli.evaluate import add_evaluation_arguments, evaluate_folder, print_evaluation
from featurelens.cli.explain import explain_with_progress, print_explain_summary
from featurelens.cli.info import print_summary
from featurelens.cli.progress import format_duration
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
from featurelens.training.config import K_ARCHITECTURES, TrainConfig
from featurelens.training.from_store import StoreTraining, is_finished, read_training, train_on_store

HELP = "run the whole loop on the bundled model and corpus"
# 80k tokens, 4 epochs of batches of 1,024 (284 steps) beat 200k tokens, 2 epochs of 4,096 (88 steps) on
# SmolLM2 layer 15: held-out FVU 0.24 vs 0.37, CE loss recovered 96.8% vs 91.6%, in less than half the time.
TOKENS = 80_000
EPOCHS = 4
BATCH_SIZE = 1024
RUN_TIMES = "run.json"  # each stage's seconds, next to the run's outputs
STRONGER_EXPLAINER = (
    "featurelens explain {atlas} --explainer openai --base-url http://localhost:8080/v1 --api-model MODEL "
    "--features top:200"
)


@dataclass
class StageClock:
    """Wall time of each stage of the run, in order, with whether it reused earlier work."""

    stages: list[tuple[str, float, str]] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str, console: Console) -> Iterator[list[str]]:
        """Time the block as stage ``name`` under a rule; the block may append notes such as "reused"."""
        console.rule(f"[bold]{len(self.stages) + 1}. {name}")
        notes: list[str] = []
        started = time.perf_counter()
        yield notes
        self.stages.append((name, time.perf_counter() - started, ", ".join(notes)))

    def save(self, path: Path) -> None:
        """Write ``{"stages": [{"stage", "seconds", "note"}], "seconds"}`` as JSON, atomically."""
        stages = [{"stage": name, "seconds": seconds, "note": note} for name, seconds, note in self.stages]
        write_json_atomic(path, {"stages": stages, "seconds": sum(s["seconds"] for s in stages)})

    def table(self) -> Table:
        """The stages with their seconds and share of the total, then the total."""
        total = sum(seconds for _, seconds, _ in self.stages)
        table = Table(title=f"featurelens run: {format_duration(total)}", title_justify="left")
        for column in ("stage", "time", "share", "note"):
            table.add_column(column, justify="right" if column in ("time", "share") else "left")
        for name, seconds, note in self.stages:
            table.add_row(name, format_duration(seconds), f"{seconds / max(total, 1e-9):.0%}", note)
        return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = CaptureConfig()
    parser.add_argument(
        "--model", default=defaults.model, help="model to look inside (default: bundled smollm2)"
    )
    parser.add_argument("--hook", default=defaults.hooks[0], help="hook point to study")
    parser.add_argument("--tokens", type=int, default=TOKENS, help="tokens to capture (default 80,000)")
    parser.add_argument("--corpus", default="bundled", help="bundled, a local file/folder, or hf:<dataset>")
    parser.add_argument("--out", default="runs/demo", help="run folder: OUT/acts, OUT/sae, OUT/atlas.sqlite")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--overwrite", action="store_true", help="redo every stage from scratch")
    add_dictionary_arguments(parser)
    parser.set_defaults(batch_size=BATCH_SIZE)
    parser.add_argument(
        "--epochs", type=int, default=EPOCHS, help="training passes over the activations (default 4)"
    )
    parser.add_argument("--eval-tokens", type=int, default=4096, help="held-out tokens to evaluate on")
    add_evaluation_arguments(parser)
    parser.add_argument(
        "--atlas-tokens", type=int, default=None, help="captured tokens to map (default: all of them)"
    )
    parser.add_argument(
        "--explain-local",
        type=int,
        default=0,
        help="densest features the bundled 135M model also explains (default 0: its explanations do not "
        "beat the baseline's; each takes ~40 s)",
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


def check_numbers(args: argparse.Namespace) -> None:
    """Refuse a bad count or port before the first stage starts, not minutes into the run."""
    counts = {
        "--tokens": args.tokens,
        "--epochs": args.epochs,
        "--eval-tokens": args.eval_tokens,
        "--eval-batch-size": args.eval_batch_size,
    }
    if args.atlas_tokens is not None:
        counts["--atlas-tokens"] = args.atlas_tokens
    for flag, value in counts.items():
        if value < 1:
            raise FeatureLensError(f"{flag} must be a positive number, got {value}")
    if args.explain_local < 0:
        raise FeatureLensError(
            f"--explain-local must be 0 (none) or a number of features to explain, got {args.explain_local}"
        )
    if args.serve:
        serve.check_port(args.port)


def planned_configs(args: argparse.Namespace) -> list[TrainConfig]:
    """The one dictionary the run trains, from the flags (a bad --k, --batch-size, ... is refused here)."""
    configs = configs_from_args(args, args.hook, None)
    if len(configs) > 1:
        raise DictionaryError("featurelens run trains one dictionary; sweep several with featurelens train")
    if configs[0].arch in K_ARCHITECTURES and configs[0].k < 1:
        raise DictionaryError(f"k must be between 1 and d_latent - 1, got {configs[0].k}")
    return configs


def main(args: argparse.Namespace) -> int:
    check_numbers(args)
    configs = planned_configs(args)
    console = Console()
    clock = StageClock()
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
    with clock.stage("capture", console) as notes:
        result = capture_with_progress(config, console)
        if result.shards_written:
            print_result(result, console)
        else:
            notes.append("reused")
            console.print(f"reusing the finished capture in {config.out}")
            print_summary(ActivationStore.open(config.out).manifest, console, Path(config.out))

    with clock.stage("train", console) as notes:
        sae = out / "sae"
        manifest = ActivationStore.open(config.out).manifest
        retrained = args.overwrite or not trained_with(sae, configs[0], manifest)
        if not retrained:
            notes.append("reused")
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
            train = partial(train_on_store, job, configs, on_warning=partial(console.print, style="yellow"))
            print_results(train_with_progress(train, console), console)

    with clock.stage("evaluate", console):
        evaluation, held_out = evaluate_folder(
            sae,
            console,
            tokens=args.eval_tokens,
            batch_size=args.eval_batch_size,
            with_loss=not args.no_loss,
            device=args.device,
        )
        print_evaluation(evaluation, console, held_out=held_out)

    atlas = out / "atlas.sqlite"
    with clock.stage("atlas", console) as notes:
        tokens = args.atlas_tokens or args.tokens
        if not retrained and mapped_with(atlas, tokens):
            notes.append("reused")
            console.print(f"reusing the atlas in {atlas}")
        else:
            mapping = AtlasJob(str(sae), str(atlas), tokens=tokens, device=args.device, overwrite=True)
            print_atlas_summary(build_with_progress(mapping, console), console)

    with clock.stage("explain", console):
        baseline = ExplainJob(str(atlas), features="all")
        print_explain_summary(explain_with_progress(baseline, console), console)
        if args.explain_local:
            local = ExplainJob(
                str(atlas), explainer="local", features=f"top:{args.explain_local}", device=args.device
            )
            print_explain_summary(explain_with_progress(local, console), console)
        else:
            console.print(
                "explanations by a language model: the bundled 135M model's do not beat the baseline "
                "(--explain-local N shows them); with a stronger model behind an OpenAI-compatible "
                "endpoint:\n"
                f"  [bold]{STRONGER_EXPLAINER.format(atlas=atlas)}[/]",
                soft_wrap=True,  # a command to copy whole
            )

    console.print(clock.table())
    clock.save(out / RUN_TIMES)
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
