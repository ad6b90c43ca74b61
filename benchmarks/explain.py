"""Features explained and scored per minute on this machine: the baseline, and the bundled model.

Copies an atlas (default: the one `featurelens run` writes, runs/demo/atlas.sqlite) to a scratch file, so
nothing is cached from earlier runs, then times `featurelens explain` there: the baseline (keyword scorer)
on the densest --baseline-features features, and the local bundled SmolLM2-135M-Instruct (explainer and
scorer) on the densest --local-features. Prints features/min, the mean detection/fuzzing AUROC of each
method on the same features, and how often the LLM beat the baseline; writes benchmarks/results/explain.txt.

    .venv/bin/python benchmarks/explain.py [--atlas runs/demo/atlas.sqlite] [--local-features 10]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from machine import describe, matmul_peak_gflops, versions

from featurelens.atlas import Atlas
from featurelens.explain import ExplainJob, ExplainSummary, explain_atlas

RESULTS = Path(__file__).resolve().parent / "results" / "explain.txt"


def mean(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f}" if values else "—"


def row(label: str, summary: ExplainSummary, method: str) -> str:
    count = summary.explained.get(method, 0)
    rate = count / summary.seconds * 60 if summary.seconds else 0.0
    return (
        f"| {label} | {count} | {summary.seconds:.1f} | {rate:,.1f} | "
        f"{mean(summary.detection_auroc.get(method, []))} | {mean(summary.fuzzing_auroc.get(method, []))} |"
    )


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--atlas", default="runs/demo/atlas.sqlite")
    parser.add_argument("--baseline-features", type=int, default=2000)
    parser.add_argument("--local-features", type=int, default=10)
    args = parser.parse_args()
    peak = matmul_peak_gflops()
    with tempfile.TemporaryDirectory() as scratch:
        atlas = Path(scratch) / "atlas.sqlite"
        shutil.copy(args.atlas, atlas)
        with Atlas.open(atlas) as opened:
            n_features, tokens = len(opened), opened.meta["tokens"]
        baseline = explain_atlas(ExplainJob(str(atlas), features=f"top:{args.baseline_features}"))
        local_job = ExplainJob(str(atlas), explainer="local", features=f"top:{args.local_features}")
        local = explain_atlas(local_job)
    method = "local:smollm2"
    lines = [
        f"# explain benchmark: atlas of {n_features:,} features over {tokens:,} tokens ({args.atlas})",
        f"# {describe(peak)}",
        f"# {versions(('torch', 'transformers', 'featurelens'))}",
        "",
        "| explainer (scorer) | features | seconds | features/min | detection AUROC | fuzzing AUROC |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        row("baseline (keyword)", baseline, "baseline"),
        row("baseline (scored by SmolLM2-135M)", local, "baseline"),
        row("SmolLM2-135M (scored by SmolLM2-135M)", local, method),
        "",
        f"the LLM beat the baseline on {local.llm_beats_baseline} of {local.compared} features "
        "(detection AUROC, same examples, same scorer); the second and third rows share one timing: "
        "per feature the LLM writes an explanation and both explanations are scored",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text + "\n")


if __name__ == "__main__":
    main()
