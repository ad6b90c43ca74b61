"""List every hook point of a model with the shape of its tensor.

Shapes are for one sequence of 4 tokens: [batch, seq, width]. Names mean the same tensor on every
architecture; see the README's "Hook points" table.

examples:
  featurelens hooks                      # the bundled SmolLM2-135M
  featurelens hooks --model ./my-model --layer 3
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from featurelens.models import load_model

HELP = "list a model's hook points and their shapes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="smollm2", help="smollm2 (bundled), a local folder, a .gguf file or a hub id"
    )
    parser.add_argument("--layer", type=int, default=None, help="show only this layer's points")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N")


def main(args: argparse.Namespace) -> int:
    lm = load_model(args.model, device=args.device)
    shapes = lm.shapes()
    module_names = {id(module): name for name, module in lm.model.named_modules()}
    table = Table(title=f"{lm.name}: {lm.n_layers} layers, d_model={lm.d_model}")
    table.add_column("hook point")
    table.add_column("shape", justify="right")
    table.add_column("module")
    for name, point in lm.hook_points.items():
        if args.layer is not None and point.layer != args.layer:
            continue
        table.add_row(
            name, str(list(shapes[name])), f"{point.side} of {module_names.get(id(point.module), '?')}"
        )
    Console().print(table)
    return 0
