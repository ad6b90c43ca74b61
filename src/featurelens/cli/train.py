"""Train sparse dictionaries (SAEs, transcoders) on an activation store.

The last --holdout rows of the store are never trained on; they measure the result. Comma-separated
values of --k, --expansion, --lr or --target-l0 train every combination in one pass over the data,
each into its own subfolder of --out. A checkpoint is written every --checkpoint-every steps; after a
kill, the same command with --resume continues exactly where it stopped.

examples:
  featurelens train --acts runs/demo/acts --hook layers.15.resid_post --arch topk --k 32 --expansion 16 \\
      --out runs/demo/sae
  featurelens train --acts runs/demo/acts --k 16,32,64 --out runs/demo/sweep        # three SAEs, one pass
  featurelens train --acts runs/mlp/acts --hook layers.3.mlp_in --hook-out layers.3.mlp_out --skip \\
      --out runs/mlp/transcoder                                                      # a skip transcoder
  featurelens train --acts runs/demo/acts --arch jumprelu --target-l0 40 --out runs/demo/jumprelu
  featurelens train --acts runs/mlp/acts --hook layers.3.mlp_neurons --arch seminmf --k 8 --latents 512 \\
      --epochs 10 --out runs/mlp/seminmf                   # semi-NMF of MLP neurons, 10 alternating passes
  featurelens train --model smollm2 --hook layers.15.resid_post --tokens 500000 --out runs/live/sae
                                                        # live: no store, activations computed as needed
  featurelens train --model smollm2 --hook layers.15.resid_post --arch gtopk --k 32 --out runs/live/gsae
                                                        # gradient-aware TopK: live only (needs the loss)
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable
from functools import partial

from rich.console import Console
from rich.table import Table

from featurelens.capture import ActivationStore
from featurelens.cli.progress import stage_progress
from featurelens.cli.workers import add_workers_argument, launch_or_join
from featurelens.corpus import CorpusConfig
from featurelens.dictionaries.base import DictionaryError
from featurelens.dictionaries.registry import ARCHITECTURES
from featurelens.distributed import World, process_group
from featurelens.models.hook_names import point_of
from featurelens.training.config import ENCODER_DTYPES, K_ARCHITECTURES, TrainConfig
from featurelens.training.from_store import SavedDictionary, StoreTraining, train_on_store
from featurelens.training.live import LiveTraining, train_live
from featurelens.training.semi_nmf import SEMI_NMF, PassReport
from featurelens.training.state import StepMetrics, TrainingRun
from featurelens.training.trainer import StepCallback

HELP = "train SAEs or transcoders on captured activations"


def number_list(kind: Callable[[str], float | int]) -> Callable[[str], list]:
    """An argparse type reading ``"16,32"`` as ``[16, 32]``."""

    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--acts", default="runs/demo/acts", help="activation store to train on")
    live = parser.add_argument_group("live training (no store: activations computed as needed)")
    live.add_argument("--model", help="train live on this model (smollm2, a folder, .gguf or hub id)")
    live.add_argument("--tokens", type=int, default=200_000, help="tokens to run through the model")
    live.add_argument(
        "--corpus", default="bundled", help="bundled, a .txt/.jsonl/.parquet file or folder, hf:<name>"
    )
    live.add_argument("--seq-len", type=int, default=256, help="tokens per packed sequence")
    parser.add_argument("--hook", help="hook point to read (default: the store's only hook)")
    parser.add_argument("--hook-out", help="hook point to predict: makes a transcoder (same store)")
    parser.add_argument("--out", default="runs/demo/sae", help="folder to write the dictionary into")
    add_dictionary_arguments(parser)
    parser.add_argument(
        "--epochs", type=int, help="passes over the training rows (default 1; seminmf: 10 alternating passes)"
    )
    parser.add_argument("--steps", type=int, help="train exactly this many steps instead of --epochs")
    parser.add_argument("--holdout", type=int, help="rows held out at the store's end (default 10%%, ≤20k)")
    parser.add_argument(
        "--checkpoint-every", type=int, default=200, help="steps between checkpoints (0: none)"
    )
    parser.add_argument(
        "--keep-outliers", action="store_true", help="also train on rows the store flags as norm outliers"
    )
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted training run")
    parser.add_argument("--overwrite", action="store_true", help="replace trained dictionaries in --out")
    add_workers_argument(parser)


def add_dictionary_arguments(parser: argparse.ArgumentParser, defaults: TrainConfig | None = None) -> None:
    """The options that shape the dictionary and its optimisation (shared with `featurelens run`)."""
    defaults = defaults or TrainConfig()
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default=defaults.arch, help="architecture")
    parser.add_argument(
        "--k", type=number_list(int), default=[defaults.k], help="active latents per token (TopK family)"
    )
    parser.add_argument(
        "--expansion", type=number_list(int), default=[defaults.expansion], help="latents per input dimension"
    )
    parser.add_argument(
        "--latents",
        type=number_list(int),
        default=[defaults.latents],
        help="number of latents, instead of --expansion (e.g. fewer features than neurons for seminmf)",
    )
    parser.add_argument(
        "--lr", type=number_list(float), default=[defaults.lr], help="peak Adam learning rate"
    )
    parser.add_argument(
        "--target-l0",
        type=number_list(float),
        default=[None],
        help="relu/jumprelu: steer the penalty until this many latents fire per token",
    )
    parser.add_argument(
        "--sparsity-coefficient",
        type=float,
        default=defaults.sparsity_coefficient,
        help="relu/jumprelu: penalty weight (the starting point when --target-l0 is set)",
    )
    parser.add_argument(
        "--gradient-weight",
        type=float,
        default=defaults.gradient_weight,
        help="gtopk (live only): weight beta of a latent's |activation x loss gradient| in picking the k",
    )
    parser.add_argument(
        "--dead-after-tokens",
        type=int,
        default=defaults.dead_after_tokens,
        help="a latent unused this many tokens is dead: AuxK trains it (codebook: re-set to an input)",
    )
    parser.add_argument("--skip", action="store_true", help="add a linear skip connection (transcoders)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="tokens per step")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="initialisation and shuffling seed")
    parser.add_argument(
        "--encoder-dtype",
        choices=ENCODER_DTYPES,
        default=defaults.encoder_dtype,
        help="precision of the TopK encoder matmul that picks active latents; auto: bfloat16 where the "
        "hardware runs it fast (AVX512-BF16/AMX CPUs, GPUs), else float32",
    )


def configs_from_args(args: argparse.Namespace, hook_in: str, hook_out: str | None) -> list[TrainConfig]:
    """One config per combination of the list-valued options."""
    k_values = args.k if args.arch in K_ARCHITECTURES else args.k[:1]
    combos = itertools.product(k_values, args.expansion, args.latents, args.lr, args.target_l0)
    return [
        TrainConfig(
            arch=args.arch,
            k=k,
            expansion=expansion,
            latents=latents,
            lr=lr,
            target_l0=target_l0,
            sparsity_coefficient=args.sparsity_coefficient,
            batch_size=args.batch_size,
            seed=args.seed,
            hook_in=hook_in,
            hook_out=hook_out,
            skip=args.skip,
            encoder_dtype=args.encoder_dtype,
            gradient_weight=args.gradient_weight,
            dead_after_tokens=args.dead_after_tokens,
        )
        for k, expansion, latents, lr, target_l0 in combos
    ]


def default_hook(acts: str, hook: str | None) -> str:
    """``hook``, or the store's only hook; a store with several needs --hook."""
    if hook:
        return hook
    hooks = ActivationStore.open(acts).hooks
    if len(hooks) > 1:
        raise DictionaryError(f"the store holds several hooks, choose one with --hook: {', '.join(hooks)}")
    return hooks[0]


def train_with_progress(
    train: Callable[[StepCallback], list[SavedDictionary]], console: Console
) -> list[SavedDictionary]:
    """``train(on_step)`` under a progress bar showing the first run's loss, FVU, L0 and dead fraction."""
    with stage_progress(console, "training", "steps") as update:

        def on_step(runs: list[TrainingRun], metrics: list[StepMetrics]) -> None:
            first, step = metrics[0], runs[0]
            update(
                step.step,
                step.config.steps,
                f"loss {first.loss:.4f}  FVU {first.fvu:.3f}  L0 {first.l0:.1f}  "
                f"dead {first.dead_fraction:.1%}" + (f"  (+{len(runs) - 1} more)" if len(runs) > 1 else ""),
            )

        return train(on_step)


def print_results(saved: list[SavedDictionary], console: Console) -> None:
    table = Table(title="trained dictionaries (held-out metrics on rows never trained on)")
    for column in ("folder", "latents", "train FVU", "held-out FVU", "L0", "dead", "dense", "tok/s"):
        table.add_column(column, justify="left" if column == "folder" else "right", overflow="fold")
    for item in saved:
        held, result = item.heldout, item.result
        table.add_row(
            str(item.path),
            f"{result.dictionary.d_latent:,}",
            f"{result.fvu:.3f}",
            f"{held.fvu:.3f}" if held else "-",
            f"{held.l0 if held else result.l0:.1f}",
            f"{held.dead_fraction if held else result.dead_fraction:.1%}",
            f"{held.dense_fraction:.1%}" if held else "-",
            f"{result.tokens_per_second:,.0f}",
        )
    console.print(table)


def main(args: argparse.Namespace) -> int:
    world = launch_or_join(args)
    if world is None:  # --workers processes trained and rank 0 printed the results
        return 0
    with process_group(world):
        return train_in_world(args, Console(quiet=not world.is_main), world)


def train_in_world(args: argparse.Namespace, console: Console, world: World) -> int:
    """Train as the flags say; in a data-parallel run rank 0 warns, reports and saves."""
    warn = partial(print, file=sys.stderr) if world.is_main else lambda _line: None
    output_options = {
        "out": args.out,
        "checkpoint_every": args.checkpoint_every,
        "resume": args.resume,
        "overwrite": args.overwrite,
        "device": args.device,
    }
    train: Callable[[StepCallback], list[SavedDictionary]]
    if args.model:
        if world.size > 1:
            raise DictionaryError("live training (--model) runs in one process; train several on a store")
        if not args.hook:
            raise DictionaryError("live training needs --hook (see `featurelens hooks --model ...`)")
        corpus = CorpusConfig(spec=args.corpus)
        live = LiveTraining(
            **output_options, model=args.model, tokens=args.tokens, corpus=corpus, seq_len=args.seq_len
        )
        configs = configs_from_args(args, args.hook, args.hook_out)
        train = partial(train_live, live, configs)
    else:
        job = StoreTraining(
            **output_options,
            acts=args.acts,
            epochs=args.epochs,
            steps=args.steps,
            holdout_tokens=args.holdout,
            keep_outliers=args.keep_outliers,
        )
        hook = default_hook(args.acts, args.hook)
        configs = configs_from_args(args, hook, args.hook_out)
        if args.arch == SEMI_NMF:  # fitted by passes, each reported on one line, not by steps
            if point_of(hook) != "mlp_neurons":
                warn(f"warning: seminmf is meant for MLP neurons (layers.N.mlp_neurons), not {hook}")
            with stage_progress(console, "semi-NMF", "rows") as update:
                saved = train_on_store(job, configs, on_pass=partial(print_pass, console), on_batch=update)
            return finish(saved, console)
        train = partial(train_on_store, job, configs, on_warning=warn)
    saved = train_with_progress(train, console)
    return finish(saved, console) if world.is_main else 0


def print_pass(console: Console, report: PassReport) -> None:
    console.print(report.line(), markup=False, highlight=False)


def finish(saved: list[SavedDictionary], console: Console) -> int:
    print_results(saved, console)
    console.print(f"evaluate in the model with: featurelens evaluate {saved[0].path}")
    return 0
