"""Look at an atlas in the terminal: one feature's card, an overview, or a search.

A feature card shows its density and activations, a sparkline of its activation histogram (log-spaced
bins), its top contexts with each token highlighted by the feature's activation on it, quantile samples
from low to high activations, the tokens its decoder direction promotes and suppresses, and its
co-occurring and nearest features. --png writes the histogram as an image.

examples:
  featurelens show runs/demo/atlas.sqlite            # overview: the dictionary, its evaluation, densities
  featurelens show runs/demo/atlas.sqlite --sort density     # ... listing the densest features instead
  featurelens show runs/demo/atlas.sqlite 123        # one feature
  featurelens show runs/demo/atlas.sqlite 123 --png f123.png
  featurelens show runs/demo/atlas.sqlite --search "class method"
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from featurelens.atlas import Atlas, Context, Feature, Neighbour, TokenScore
from featurelens.atlas.reader import SORTABLE
from featurelens.errors import AtlasError

HELP = "show a feature card (or an atlas overview) in the terminal"
SPARKS = "▁▂▃▄▅▆▇█"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("atlas", help="atlas file written by `featurelens atlas`")
    parser.add_argument("feature", nargs="?", help="feature id (leave out for an overview)")
    parser.add_argument("--search", help="list the features whose top or output tokens match these words")
    parser.add_argument("--contexts", type=int, default=8, help="top contexts to print")
    parser.add_argument(
        "--sort",
        choices=SORTABLE,
        default="recommended",
        help="order of the overview's feature list (default recommended: the best-explained features of "
        "the middle density band first, the densest tenth and dead features last)",
    )
    parser.add_argument("--order", choices=("desc", "asc"), default="desc", help="direction of --sort")
    parser.add_argument("--limit", type=int, default=10, help="features the overview lists")
    parser.add_argument("--png", help="write the activation histogram (or the density histogram) as a PNG")


def sparkline(counts: list[float]) -> str:
    """One block character per value, scaled to the largest."""
    top = max(counts, default=0) or 1
    return "".join(
        SPARKS[min(len(SPARKS) - 1, int(c / top * (len(SPARKS) - 1) + 0.5))] if c else " " for c in counts
    )


def highlighted(context: Context, scale: float) -> Text:
    """The context's tokens, each on a background as bright as the feature's activation on it."""
    text = Text()
    for i, (token, value) in enumerate(zip(context.tokens, context.activations, strict=True)):
        shown = token.replace("\n", "↵")
        strength = max(0.0, min(1.0, value / scale)) if scale > 0 else 0.0
        style = f"on rgb({int(60 + 195 * strength)},{int(40 + 100 * strength)},0)" if value > 0 else ""
        text.append(shown, style=style + (" bold underline" if i == context.centre else ""))
    return text


def _scores(items: list[TokenScore]) -> str:
    return "  ".join(f"{item.text.strip() or repr(item.text)} {item.value:+.2f}" for item in items) or "—"


def _neighbours(items: list[Neighbour], label: str) -> str:
    return "  ".join(f"#{n.feature} ({label} {n.value:.2f})" for n in items) or "—"


def print_feature(atlas: Atlas, feature: Feature, console: Console, contexts: int) -> None:
    meta = atlas.meta
    console.rule(f"[bold]feature {feature.id}[/] · {meta['hook_in']} · {meta['arch']} · {meta['model']}")
    if not feature.count:
        console.print(f"never fired on the {meta['tokens']:,} tokens mapped (a dead feature)")
    else:
        console.print(
            f"density {feature.density:.3%} ({feature.count:,} of {meta['tokens']:,} tokens) · "
            f"mean {feature.mean_activation:.3g} · max {feature.max_activation:.3g}"
        )
        edges = feature.histogram.edges
        console.print(
            f"activations {sparkline([float(c) for c in feature.histogram.counts])}  "
            f"{edges[0]:.3g} … {edges[-1]:.3g} (log scale)"
        )
        console.print("top tokens: " + "  ".join(f"{t!r}×{n}" for t, n in feature.top_tokens[:10]))
    for explanation in feature.explanations:
        auroc = explanation.detection_auroc
        console.print(
            f"[bold]{explanation.text}[/] — {explanation.method}, detection AUROC "
            f"{'—' if auroc is None else f'{auroc:.2f}'} (scored by {explanation.scorer})"
        )
    console.print(f"promotes:   {_scores(feature.output_top)}")
    console.print(f"suppresses: {_scores(feature.output_bottom)}")
    if feature.input_top:
        console.print(f"reads (input embeddings): {_scores(feature.input_top)}")
    scale = feature.max_activation or 0.0
    if feature.top:
        table = Table(title="top activating contexts", show_header=True, box=None, expand=False)
        table.add_column("act", justify="right")
        table.add_column("context (centre underlined)")
        for context in feature.top[:contexts]:
            table.add_row(f"{context.activation:.3g}", highlighted(context, scale))
        console.print(table)
    if feature.quantiles:
        table = Table(title="quantile samples, low to high", show_header=True, box=None)
        table.add_column("bin", justify="right")
        table.add_column("act", justify="right")
        table.add_column("context")
        shown: set[int | None] = set()
        for context in feature.quantiles:  # the first sample of each bin
            if context.bin not in shown:
                shown.add(context.bin)
                table.add_row(str(context.bin), f"{context.activation:.3g}", highlighted(context, scale))
        console.print(table)
    console.print(f"co-occurring: {_neighbours(feature.cooccurring, 'J')}")
    console.print(f"nearest:      {_neighbours(feature.nearest, 'cos')}")


def list_title(sort: str, descending: bool) -> str:
    """The overview table's title: what its order puts first."""
    if sort == "recommended":
        return "recommended features" if descending else "least recommended features"
    if sort == "density":
        return "densest features" if descending else "rarest features"
    return f"features by {sort.replace('_', ' ')}, {'highest' if descending else 'lowest'} first"


def print_overview(
    atlas: Atlas, console: Console, sort: str = "recommended", descending: bool = True, limit: int = 10
) -> None:
    meta = atlas.meta
    console.rule(f"[bold]atlas[/] {atlas.path}")
    console.print(
        f"{meta['kind']} {meta['arch']} · {meta['d_latent']:,} features · {meta['hook_in']} of "
        f"{meta['model']} · {meta['tokens']:,} tokens ({meta['source']})"
    )
    evaluation = meta.get("evaluation") or {}
    if evaluation:
        shown = {
            "fvu": "FVU {:.3f}",
            "l0": "L0 {:.1f}",
            "dead_fraction": "dead {:.1%}",
            "ce_loss_recovered": "CE loss recovered {:.1%}",
        }
        parts = [
            form.format(evaluation[key]) for key, form in shown.items() if evaluation.get(key) is not None
        ]
        console.print("evaluation: " + " · ".join(parts))
    edges, counts, dead = atlas.density_histogram(per_decade=4)
    if counts:
        console.print(
            f"density (log10 {edges[0]:.0f} … {edges[-1]:.0f}): {sparkline([float(c) for c in counts])}   "
            f"dead: {dead:,}"
        )
    table = Table(title=list_title(sort, descending), box=None)
    for column in ("id", "density", "max", "top tokens", "AUROC"):
        table.add_column(column)
    table.add_column("best explanation", no_wrap=True, overflow="ellipsis", max_width=60)
    for summary in atlas.features(sort=sort, descending=descending, limit=limit):
        record = atlas.feature(summary.id)
        tokens = "  ".join(repr(t) for t, _ in record.top_tokens[:5])
        score = "" if summary.explanation_score is None else f"{summary.explanation_score:.2f}"
        table.add_row(
            str(summary.id),
            f"{summary.density:.2%}",
            f"{summary.max_activation or 0:.3g}",
            tokens,
            score,
            summary.explanation or "",
        )
    console.print(table)
    if sort == "recommended":
        console.print(f"recommended order: {atlas.recommended_rule()}", style="dim")
    console.print(f"one feature: featurelens show {atlas.path} ID    search: ... --search WORDS")
    console.print(f"other orders: --sort KEY, one of {', '.join(SORTABLE)}; --order asc reverses")


def print_search(atlas: Atlas, query: str, console: Console) -> None:
    found = atlas.search(query)
    if not found:
        console.print(f"no feature's top or output tokens match {query!r}")
        return
    table = Table(title=f"features matching {query!r}", box=None)
    for column in ("id", "density", "top tokens", "promotes"):
        table.add_column(column)
    for feature_id in found:
        record = atlas.feature(feature_id)
        table.add_row(
            str(feature_id),
            f"{record.density:.2%}",
            "  ".join(repr(t) for t, _ in record.top_tokens[:5]),
            "  ".join(s.text.strip() for s in record.output_top[:5]),
        )
    console.print(table)


def write_png(path: Path, title: str, edges: Sequence[float], counts: Sequence[float], xlabel: str) -> None:
    """A bar chart of ``counts`` over bins ``edges`` (log x axis), written atomically to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if path.suffix.lower() != ".png":
        raise AtlasError(f"--png needs a file name ending in .png, got {path}")
    figure, axes = plt.subplots(figsize=(6, 3), dpi=120)
    widths = [b - a for a, b in pairwise(edges)]
    axes.bar(
        edges[:-1], counts, width=widths, align="edge", color="#d9822b", edgecolor="#8a4b0f", linewidth=0.3
    )
    axes.set_xscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("count")
    axes.set_title(title)
    figure.tight_layout()
    temporary = path.with_name(f".{path.name}.partial.png")
    figure.savefig(temporary)
    plt.close(figure)
    os.replace(temporary, path)


def main(args: argparse.Namespace) -> int:
    console = Console()
    with Atlas.open(args.atlas) as atlas:
        if args.search is not None:
            print_search(atlas, args.search, console)
            return 0
        if args.feature is None:
            if args.limit < 1:
                raise AtlasError(f"--limit must be at least 1, got {args.limit}")
            print_overview(atlas, console, args.sort, args.order == "desc", args.limit)
            if args.png:
                densities = atlas.densities()
                densities = densities[densities > 0]
                edges = np.logspace(math.log10(densities.min()) if len(densities) else -6, 0, 41)
                counts, _ = np.histogram(densities, bins=edges)
                title = f"feature densities ({len(atlas):,} features)"
                write_png(Path(args.png), title, edges.tolist(), counts.tolist(), "density")
            return 0
        if not args.feature.lstrip("-").isdigit():
            raise AtlasError(f"feature id must be an integer, got {args.feature!r}")
        feature = atlas.feature(int(args.feature))
        print_feature(atlas, feature, console, args.contexts)
        if args.png:
            if not feature.count:
                raise AtlasError(f"feature {feature.id} never fired: there is no histogram to draw")
            write_png(
                Path(args.png),
                f"feature {feature.id}: non-zero activations",
                feature.histogram.edges,
                [float(c) for c in feature.histogram.counts],
                "activation",
            )
            console.print(f"wrote {args.png}")
    return 0
