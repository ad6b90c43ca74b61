"""Find the attention heads that carry an in-context task and make its function vector.

An in-context prompt shows --shots demonstrations ("Q: go\\nA: went") and asks for one more ("Q: eat\\nA:").
Each head's mean output at the last token of such prompts is patched into the same prompts with their
answers shuffled among the demonstrations; a head's effect is the rise in the probability of the right
answer. The function vector is the sum of the --top-heads heads' mean contributions to the residual
stream; it is added at the last token of zero-shot prompts ("Q: eat\\nA:", no demonstrations) at each
of --add-layers, the layer is chosen on the training queries, and the accuracy of held-out queries is
reported with and without it (graded on the answer's first token).

Tasks: --task past-tense (default), plural, antonym, uppercase (built in), or a JSON-lines file of
{"input": "go", "output": "went"}. Writes OUT/vector (vector.safetensors + vector.json: add it to any
prompt with `featurelens steer --vector OUT/vector`) and OUT/report.json (every head ranked, the
accuracies per layer).

examples:
  featurelens function-vector                              # past tense on the bundled model
  featurelens function-vector --task antonym --top-heads 6
  featurelens function-vector --task my_task.jsonl --model ./my-model --add-layers 4,8,12
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from featurelens.cli.progress import stage_progress
from featurelens.intervene import InterventionError
from featurelens.intervene.function_vectors import (
    BUILT_IN_TASKS,
    FunctionVectorReport,
    function_vector_experiment,
    read_task,
)
from featurelens.intervene.heads import head_layout
from featurelens.models import load_model

HELP = "find the heads behind an in-context task and add its function vector to zero-shot prompts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--task", default="past-tense", help=f"built-in ({', '.join(BUILT_IN_TASKS)}) or a JSON-lines file"
    )
    parser.add_argument("--model", default="smollm2", help="model to look inside (default: bundled smollm2)")
    parser.add_argument("--shots", type=int, default=5, help="demonstrations per in-context prompt")
    parser.add_argument("--prompts", type=int, default=16, help="in-context prompts that rank the heads")
    parser.add_argument("--top-heads", type=int, default=10, help="heads summed into the vector")
    parser.add_argument("--layers", help="comma list of layers whose heads are ranked (default all)")
    parser.add_argument(
        "--add-layers", help="comma list of layers to try adding the vector at (default every 3rd, first 2/3)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split and demonstrations")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per forward pass")
    parser.add_argument("--out", default="runs/function-vector", help="folder for vector/ and report.json")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")


def parse_layers(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InterventionError(f"{flag} {text!r} is not a comma list of layer numbers, e.g. 3,6,9") from None


def print_report(report: FunctionVectorReport, console: Console) -> None:
    table = Table(title=f"top heads for {report.task} (rise in p(right answer), shuffled prompts)", box=None)
    for column in ("head", "effect", "in vector"):
        table.add_column(column, justify="left" if column == "head" else "right")
    for rank, (layer, head, effect) in enumerate(report.heads[:15]):
        table.add_row(f"L{layer}H{head}", f"{effect:+.4f}", "yes" if rank < report.top_heads else "")
    console.print(table)
    layers = ", ".join(f"{layer}: {train:.2f}/{test:.2f}" for layer, train, test in report.by_layer)
    console.print(f"zero-shot accuracy with the vector by layer (train/held-out): {layers}")
    console.print(
        f"held-out queries ({report.test_pairs}): in-context {report.icl:.2f}, shuffled labels "
        f"{report.shuffled:.2f}, zero-shot {report.zero_shot:.2f}, zero-shot + vector at layer "
        f"{report.layer} {report.zero_shot_with_vector:.2f} (gain {report.gain:+.2f})"
    )


def main(args: argparse.Namespace) -> int:
    console = Console()
    pairs = read_task(args.task)
    counts = {"--shots": args.shots, "--prompts": args.prompts, "--top-heads": args.top_heads}
    for flag, value in {**counts, "--batch-size": args.batch_size}.items():
        if value < 1:
            raise InterventionError(f"{flag} must be 1 or more, not {value}")
    layers = parse_layers(args.layers, "--layers")
    add_layers = parse_layers(args.add_layers, "--add-layers")
    lm = load_model(args.model, device=args.device)
    task = Path(args.task).stem if args.task not in BUILT_IN_TASKS else args.task
    per_layer = head_layout(lm, 0)[0]
    total = per_layer * (lm.n_layers if layers is None else len(layers))
    with stage_progress(console, "patching heads", "heads", total) as update:
        done = [0]

        def advance(count: int) -> None:
            done[0] += count
            update(done[0])

        report = function_vector_experiment(
            lm,
            pairs,
            task=task,
            shots=args.shots,
            prompts=args.prompts,
            top_heads=args.top_heads,
            layers=layers,
            add_layers=add_layers,
            seed=args.seed,
            batch_size=args.batch_size,
            on_variants=advance,
        )
    print_report(report, console)
    out = Path(args.out)
    report.vector.save(out / "vector")
    partial = out / ".report.json.partial"
    partial.write_text(json.dumps(report.to_dict(), indent=1))
    os.replace(partial, out / "report.json")
    console.print(f"wrote {out / 'vector'} and {out / 'report.json'}")
    return 0
