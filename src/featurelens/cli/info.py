"""Summarise an activation store: model, hooks, rows, dtype, size on disk and norm outliers.

examples:
  featurelens info runs/demo/acts
  featurelens info runs/demo/acts --json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from featurelens.capture import ActivationStore
from featurelens.paths import RemotePath, total_size

HELP = "summarise an activation store"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="store folder (or fsspec URL) written by `featurelens capture`")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")


def print_summary(manifest: dict[str, Any], console: Console, path: Path | RemotePath | None = None) -> None:
    table = Table(show_header=False, box=None)
    config = manifest["config"]
    table.add_row(
        "model",
        f"{manifest['model']['spec']} ({manifest['model']['class']}, "
        f"{manifest['model']['n_layers']} layers, d_model={manifest['model']['d_model']})",
    )
    table.add_row("corpus", f"{manifest['corpus']['spec']} (python {manifest['python']})")
    table.add_row(
        "rows",
        f"{manifest['n_rows']:,} stored of {config['n_tokens']:,} tokens requested "
        f"(seq_len {manifest['seq_len']}, first {config['skip_positions']} position(s) skipped, "
        f"special tokens {'kept' if config['keep_special'] else 'dropped'})",
    )
    table.add_row(
        "shards", f"{len(manifest['shards'])} x ≤{config['shard_tokens']:,} tokens, dtype {manifest['dtype']}"
    )
    if path is not None:
        table.add_row("on disk", f"{total_size(path) / 2**20:,.1f} MiB at {path}")
    outliers = manifest["outliers"]
    for hook, spec in manifest["hooks"].items():
        table.add_row(
            f"[bold]{hook}",
            f"width {spec['width']}, median norm {outliers['median_norm'][hook]:,.2f}, "
            f"{outliers['rows'][hook]:,} row(s) above {outliers['multiple']:g}x median",
        )
    console.print(table)


def main(args: argparse.Namespace) -> int:
    store = ActivationStore.open(args.path)
    if args.json:
        print(json.dumps(store.manifest, indent=2, sort_keys=True))
    else:
        print_summary(store.manifest, Console(), store.path)
    return 0
