"""Evaluate a dictionary inside its model on held-out text.

Runs the model on --tokens tokens the dictionary was not trained on (the corpus continues after the
captured part) and reports: fraction of variance unexplained, L0, dead and dense latent fractions,
cosine similarity and L2 ratio of the reconstruction, and the model's next-token loss with the
dictionary spliced in at its hook, against the clean model and zero ablation (CE loss recovered: 1 is
perfect, 0 as bad as zeroing), plus KL to the clean model. Results go to PATH/evaluation.json too.

Model and corpus come from the dictionary's training.json; dictionaries trained elsewhere (SAELens,
sparsify folders) need --model and are measured on the bundled corpus unless --corpus says otherwise.

examples:
  featurelens evaluate runs/demo/sae
  featurelens evaluate runs/demo/sae --tokens 50000 --json
  featurelens evaluate path/to/saelens_sae --model smollm2 --corpus docs/
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from featurelens.capture.store import write_json_atomic
from featurelens.cli.progress import token_progress
from featurelens.corpus import CorpusConfig
from featurelens.dictionaries.base import Dictionary, DictionaryError
from featurelens.evaluate import Evaluation, evaluate_in_model, heldout_sequences
from featurelens.models import load_model
from featurelens.paths import location, readable
from featurelens.training.from_store import read_training

HELP = "measure a dictionary: FVU, L0, dead latents, CE loss recovered"
EVALUATION = "evaluation.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="dictionary folder (featurelens, SAELens or sparsify)")
    parser.add_argument(
        "--tokens", dest="eval_tokens", type=int, default=20_000, help="held-out tokens to evaluate on"
    )
    add_evaluation_arguments(parser)
    parser.add_argument("--model", help="model the dictionary belongs to (default: from training.json)")
    parser.add_argument("--corpus", help="text to evaluate on (default: the training corpus, held out)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default: as trained)")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")


def add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with `featurelens run`."""
    parser.add_argument("--eval-batch-size", type=int, default=8, help="sequences per forward pass")
    parser.add_argument("--no-loss", action="store_true", help="skip the spliced-loss forward passes")


def evaluate_folder(
    path: str | Path,
    console: Console,
    *,
    tokens: int,
    batch_size: int = 8,
    with_loss: bool = True,
    model: str | None = None,
    corpus: str | None = None,
    seq_len: int | None = None,
    device: str | None = None,
) -> tuple[Evaluation, bool]:
    """Evaluate the dictionary in ``path`` (a folder or URL) and write ``path/evaluation.json``.

    Returns the evaluation and whether its text is held out (the training corpus after the captured part).
    """
    if tokens < 1:
        raise DictionaryError(f"--tokens must be a positive number of tokens, got {tokens}")
    if batch_size < 1:
        raise DictionaryError(f"--eval-batch-size must be positive, got {batch_size}")
    folder = readable(path)  # a remote folder's JSON and safetensors files, copied to the cache
    dictionary = Dictionary.load(folder)
    training = read_training(folder) or {}
    if model is None and "model" not in training:
        raise DictionaryError(f"{path} has no training.json saying which model it belongs to; pass --model")
    corpus_config = CorpusConfig(**training["corpus"]) if "corpus" in training and corpus is None else None
    corpus_config = corpus_config or CorpusConfig(spec=corpus or "bundled")
    seq_len = seq_len or int(training.get("seq_len", 256))
    held_out = corpus is None and "captured_tokens" in training
    skip = math.ceil(training["captured_tokens"] / training["seq_len"]) if held_out else 0
    lm = load_model(model or training["model"], device=device)
    sequences = heldout_sequences(corpus_config, lm.tokenizer, seq_len, skip, tokens)
    with token_progress(console, "evaluating", total=sequences.numel()) as advance:
        evaluation = evaluate_in_model(
            dictionary,
            lm,
            sequences,
            batch_size=batch_size,
            skip_positions=int(training.get("skip_positions", 1)),
            keep_special=bool(training.get("keep_special", False)),
            max_norm=training.get("max_norm"),
            with_loss=with_loss,
            on_tokens=advance,
        )
    record: dict[str, Any] = {
        **evaluation.to_dict(),
        "model": model or training["model"],
        "corpus": corpus_config.spec,
        "held_out": held_out,
        "tokens_run": int(sequences.numel()),
    }
    if folder.is_dir() and (folder / "config.json").is_file():
        write_json_atomic(location(path) / EVALUATION, record)
    return evaluation, held_out


def print_evaluation(evaluation: Evaluation, console: Console, *, held_out: bool) -> None:
    title = "evaluation on held-out tokens" if held_out else "evaluation (text not known to be held out)"
    table = Table(show_header=False, box=None, title=title)
    rec = evaluation.reconstruction
    table.add_row("tokens measured", f"{rec.n_tokens:,}")
    table.add_row("fraction of variance unexplained", f"{rec.fvu:.4f}")
    table.add_row("L0 (active latents per token)", f"{rec.l0:.1f}")
    table.add_row("dead latents (never fired)", f"{rec.dead_fraction:.1%}")
    table.add_row("dense latents (fire on >10% of tokens)", f"{rec.dense_fraction:.1%}")
    table.add_row("cosine(x, x̂)", f"{rec.cosine_similarity:.4f}")
    table.add_row("L2 ratio ‖x̂‖/‖x‖", f"{rec.l2_ratio:.4f}")
    if evaluation.loss is not None:
        loss = evaluation.loss
        table.add_row("next-token loss: clean", f"{loss.clean:.4f} nats")
        table.add_row("  with the dictionary spliced in", f"{loss.spliced:.4f} nats")
        table.add_row("  with the activation zeroed", f"{loss.zero_ablated:.4f} nats")
        table.add_row("CE loss recovered", f"{loss.ce_loss_recovered:.1%}")
        table.add_row("KL(clean ‖ spliced)", f"{loss.kl_to_clean:.4f} nats/token")
    console.print(table)


def main(args: argparse.Namespace) -> int:
    console = Console(stderr=args.json)
    evaluation, held_out = evaluate_folder(
        args.path,
        console,
        tokens=args.eval_tokens,
        batch_size=args.eval_batch_size,
        with_loss=not args.no_loss,
        model=args.model,
        corpus=args.corpus,
        seq_len=args.seq_len,
        device=args.device,
    )
    if args.json:
        print(json.dumps(evaluation.to_dict(), indent=2))
    else:
        print_evaluation(evaluation, console, held_out=held_out)
    return 0
