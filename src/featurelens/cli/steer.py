"""Make a steering vector from contrastive prompts and steer the model with it over a list of strengths.

The vector is built at one hook from the activations at the last token of positive and negative prompts
(--pairs: built-in `sentiment`, or a JSON-lines file of {"positive": ..., "negative": ...}), by --method:
mean (mean paired difference), pca (the axis the paired differences share) or probe (a logistic
regression's weights). Its scale is the average positive-negative gap along it, so strength 1 moves the
activation by that gap; strength 0 is the unsteered model. For each strength the vector is added at
--positions (all: prompt and generated tokens; prompt; generated) and the report gives the shift in
log-probability of the --target tokens (minus the --against tokens) right after each prompt, and greedy
continuations. Writes OUT/vector (vector.safetensors + vector.json; reuse it with --vector) and
OUT/sweep.json.

examples:
  featurelens steer                                    # sentiment on the bundled model
  featurelens steer --method probe --strengths=-8,-4,0,4,8 --prompt "The weather today is"
  featurelens steer --pairs my_pairs.jsonl --hook layers.12.resid_post --target " yes" --against " no"
  featurelens steer --vector runs/steer/vector --strengths 2,6
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from featurelens.intervene import InterventionError, SteeringVector, steering_sweep, steering_vector
from featurelens.intervene.contrasts import BUILT_IN, read_contrast_file
from featurelens.intervene.vectors import METHODS
from featurelens.models import load_model

HELP = "make a steering vector from contrastive prompts and steer generation with it"
DEFAULT_HOOK = "layers.10.resid_post"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pairs", default="sentiment", help=f"built-in ({', '.join(BUILT_IN)}) or a JSON-lines file"
    )
    parser.add_argument("--model", default="smollm2", help="model to steer (default: bundled smollm2)")
    parser.add_argument(
        "--hook", default=DEFAULT_HOOK, help=f"hook point to steer at (default {DEFAULT_HOOK})"
    )
    parser.add_argument("--method", choices=METHODS, default="mean", help="how the direction is found")
    parser.add_argument(
        "--position", type=int, default=-1, help="token of each pair prompt to read (default last)"
    )
    parser.add_argument("--vector", help="use this saved vector folder instead of making one")
    parser.add_argument(
        "--strengths",
        default="-6,-3,0,3,6",
        help="comma list of strengths, 1 = the mean gap (write --strengths=-4,0,4 if one is negative)",
    )
    parser.add_argument("--prompt", action="append", help="a prompt to continue (repeat; default: built-in)")
    parser.add_argument(
        "--target", action="append", help="a one-token target whose log-probability is reported"
    )
    parser.add_argument("--against", action="append", help="a one-token contrast target (subtracted)")
    parser.add_argument(
        "--positions", choices=("all", "prompt", "generated"), default="all", help="where to add"
    )
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens to generate per prompt")
    parser.add_argument("--out", default="runs/steer", help="folder for vector/ and sweep.json")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")


def parse_strengths(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InterventionError(f"--strengths {text!r} is not a comma list of numbers, e.g. -4,0,4") from None
    if not values or any(abs(v) > 1000 for v in values):
        raise InterventionError(f"--strengths {text!r}: give 1 or more numbers within ±1000")
    return values


def main(args: argparse.Namespace) -> int:
    console = Console()
    strengths = parse_strengths(args.strengths)
    if not 1 <= args.new_tokens <= 256:
        raise InterventionError(f"--new-tokens must be 1..256, not {args.new_tokens}")
    built_in = BUILT_IN.get(args.pairs)
    pairs = built_in[0] if built_in else read_contrast_file(args.pairs) if args.vector is None else []
    prompts = args.prompt or list(built_in[1] if built_in else [])
    targets = args.target or list(built_in[2] if built_in and not args.prompt else [])
    against = args.against or list(built_in[3] if built_in and not args.prompt else [])
    if not prompts:
        raise InterventionError("give --prompt TEXT (one or more) to continue while steering")
    lm = load_model(args.model, device=args.device)
    out = Path(args.out)
    if args.vector:
        vector = SteeringVector.load(args.vector)
    else:
        positive, negative = [p for p, _ in pairs], [n for _, n in pairs]
        vector = steering_vector(lm, positive, negative, args.hook, args.method, args.position)
        vector.save(out / "vector")
        console.print(
            f"steering vector at {vector.hook} by {vector.method} from {vector.pairs} pairs "
            f"(norm {vector.meta()['norm']:.2f}): {out / 'vector'}"
        )
    rows = steering_sweep(lm, vector, prompts, strengths, targets, args.new_tokens, args.positions, against)
    table = Table(title=f"steering at {vector.hook} ({args.positions} positions)", box=None)
    metric = "Δ log p(target)" + (" - log p(against)" if against else "")
    for column in ("strength", metric, f"continuation of {prompts[0]!r}"):
        table.add_column(column, justify="left" if column.startswith("continuation") else "right")
    for row in rows:
        shift = f"{row.shift:+.3f}" if targets else "-"
        table.add_row(f"{row.strength:g}", shift, row.continuations[0].replace("\n", " "))
    console.print(table)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "vector": vector.meta(),
        "prompts": prompts,
        "targets": targets,
        "against": against,
        "positions": args.positions,
        "rows": [row.__dict__ for row in rows],
    }
    partial = out / ".sweep.json.partial"
    partial.write_text(json.dumps(record, indent=1))
    os.replace(partial, out / "sweep.json")
    console.print(f"wrote {out / 'sweep.json'}")
    return 0
