"""Explain the features of an atlas and score every explanation on held-out examples, against a baseline.

Explainers: baseline (no language model: the tokens the feature fires on, alone or after the token before
them, chosen for the keyword scorer, plus the tokens it promotes), local (a transformers model; default
the bundled SmolLM2) or openai (any OpenAI-compatible endpoint: vLLM, llama.cpp server, ollama, hosted
APIs; key from --api-key-env).
Scorers: detection (does a text make the feature fire?) and fuzzing (are the marked tokens the ones that
fire?) on quantile samples the explainer never saw plus silent contexts, reported as balanced accuracy and
AUROC with a bootstrap interval. The default scorer is keyword matching for the baseline (instant) and the
explainer's own model otherwise; the baseline is always scored by the same scorer on the same examples as
the LLM, and the summary says how often the LLM beat it. Results go into the atlas (searchable, shown by
`featurelens show` and the web app); a rerun does only what is missing; replies are cached on disk.

examples:
  featurelens explain runs/demo/atlas.sqlite                                  # baseline, densest 200
  featurelens explain runs/demo/atlas.sqlite --explainer local --features top:20
  featurelens explain runs/demo/atlas.sqlite --explainer openai --base-url http://localhost:8080/v1 \\
      --api-model llama-3-8b --features random:100 --concurrency 8
"""

from __future__ import annotations

import argparse
import statistics

from rich.console import Console
from rich.table import Table

from featurelens.cli.progress import stage_progress
from featurelens.explain import ExplainJob, ExplainSummary, explain_atlas
from featurelens.explain.pipeline import EXPLAINERS, SCORERS

HELP = "explain features with the baseline or an LLM, scored on held-out examples"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("atlas", help="atlas file written by `featurelens atlas`")
    add_explain_arguments(parser)
    parser.add_argument(
        "--scorer", choices=SCORERS, help="default: keyword for baseline, else the explainer's"
    )
    parser.add_argument("--base-url", help="openai: endpoint base URL, e.g. http://localhost:8080/v1")
    parser.add_argument("--api-model", help="openai: model name to request")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", help="openai: variable holding the key")
    parser.add_argument("--concurrency", type=int, default=4, help="openai: requests in flight")
    parser.add_argument("--timeout", type=float, default=60.0, help="openai: seconds per request")
    parser.add_argument("--retries", type=int, default=3, help="openai: retries with backoff")
    parser.add_argument(
        "--candidates", type=int, default=1, help="explanations to try; the best scored is kept"
    )
    parser.add_argument("--cache", help="reply cache file (default: next to the atlas)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fuzzing decoys and bootstrap")
    parser.add_argument("--device", default=None, help="local: auto (default), cpu, cuda, cuda:N")


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with `featurelens run`."""
    parser.add_argument("--explainer", choices=EXPLAINERS, default="baseline", help="who writes explanations")
    parser.add_argument("--features", default="top:200", help="top:N (densest), random:N, all, or 3,7,10-20")
    parser.add_argument("--model", default="smollm2", help="local: the explaining/scoring model")


def explain_with_progress(job: ExplainJob, console: Console) -> ExplainSummary:
    with stage_progress(console, "explaining", "features", per_minute=True) as update:
        return explain_atlas(job, on_feature=lambda done, total: update(done, total))


def print_explain_summary(summary: ExplainSummary, console: Console) -> None:
    if summary.already_done:
        console.print(f"{summary.already_done:,} of {summary.features:,} features were already explained")
    table = Table(title=f"explanations ({summary.seconds:.1f} s)", box=None)
    for column in ("method", "features", "detection AUROC (mean)", "fuzzing AUROC (mean)"):
        table.add_column(column)
    for method, count in summary.explained.items():
        found = summary.detection_auroc.get(method, [])
        fuzzed = summary.fuzzing_auroc.get(method, [])
        table.add_row(
            method,
            f"{count:,}",
            f"{statistics.mean(found):.3f}" if found else "—",
            f"{statistics.mean(fuzzed):.3f}" if fuzzed else "—",
        )
    if summary.explained:
        console.print(table)
    if summary.compared:
        beat, compared = summary.llm_beats_baseline, summary.compared
        console.print(f"the LLM beat the baseline (detection AUROC) on {beat} of {compared} features")
    for reason, count in summary.skipped.most_common():
        console.print(f"skipped {count:,}: {reason}")


def main(args: argparse.Namespace) -> int:
    console = Console()
    job = ExplainJob(
        atlas=args.atlas,
        explainer=args.explainer,
        scorer=args.scorer,
        features=args.features,
        model=args.model,
        base_url=args.base_url,
        api_model=args.api_model,
        api_key_env=args.api_key_env,
        concurrency=args.concurrency,
        timeout=args.timeout,
        retries=args.retries,
        candidates=args.candidates,
        cache=args.cache,
        seed=args.seed,
        device=args.device,
    )
    print_explain_summary(explain_with_progress(job, console), console)
    return 0
