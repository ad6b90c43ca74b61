"""Features explained and scored per minute on this machine: the baseline before and after its rewrite,
and the bundled model.

Copies an atlas (default: the one `featurelens run` writes, runs/demo/atlas.sqlite) to scratch files with
no explanations, so nothing is cached from earlier runs, then times `featurelens explain` there:

* the baseline as it was before the batched n-gram rewrite (featurelens at :data:`OLD`, extracted with
  `git archive`) and as it is now, each in its own process, alternating old, new, old, new (--rounds), on
  the same --baseline-features; the time is explain_atlas's own (opening the atlas, explaining, scoring,
  storing), without the interpreter's start. Mean detection/fuzzing AUROC of the keyword scorer on the same
  held-out examples: the old explanations by the old scorer (what the old featurelens stored), the old
  explanations by the current scorer, and the new ones by the current scorer;
* the local bundled SmolLM2-135M-Instruct (explainer and scorer) on the densest --local-features
  (0: skip), with the baseline scored by the same model.

Writes benchmarks/results/explain.txt.

    .venv/bin/python benchmarks/explain.py [--atlas runs/demo/atlas.sqlite] [--local-features 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import describe, matmul_peak_gflops, vector_flags, versions

from featurelens.atlas import Atlas
from featurelens.explain import ExplainJob, ExplainSummary, explain_atlas
from featurelens.explain.pipeline import split_rows
from featurelens.explain.scoring import Words, keyword_scores

RESULTS = Path(__file__).resolve().parent / "results" / "explain.txt"
ROOT = Path(__file__).resolve().parent.parent
OLD = "cb119c7619fdd88ba3a902aab58d2c0bf773d0eb"  # the last commit with the per-feature token-lift baseline
RUN = """
import json, statistics, sys, time
import featurelens
from featurelens.explain import ExplainJob, explain_atlas
started = time.perf_counter()
summary = explain_atlas(ExplainJob(sys.argv[1], features=sys.argv[2]))
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "source": featurelens.__file__,
    "explained": summary.explained.get("baseline", 0),
    "detection": statistics.mean(summary.detection_auroc["baseline"]),
    "fuzzing": statistics.mean(summary.fuzzing_auroc["baseline"])}))
"""


def fresh_copy(atlas: Path, to: Path) -> Path:
    """``atlas`` copied to ``to`` without explanations."""
    shutil.copy(atlas, to)
    with sqlite3.connect(to) as db:
        db.executescript(
            "DROP TABLE IF EXISTS explanations; DROP TABLE IF EXISTS explanation_skips;"
            "UPDATE search SET explanations = '';"
        )
    return to


def timed_run(source: Path, atlas: Path, features: str) -> dict[str, float]:
    """explain_atlas with the baseline, in a fresh process importing featurelens from ``source``."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(atlas), features], env=env, capture_output=True, text=True, check=True
    )
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found.pop("source").startswith(str(source)), "featurelens was not imported from the version asked"
    return dict(found)


def rescored(atlas: Path) -> tuple[float, float]:
    """Mean detection and fuzzing AUROC of the baseline explanations stored in ``atlas``, scored again by
    the current keyword scorer on the same held-out examples (same seeds)."""
    found, fuzzed = [], []
    with Atlas.open(atlas) as opened:
        with sqlite3.connect(atlas) as db:
            texts = dict(
                db.execute("SELECT feature, text FROM explanations WHERE method = 'baseline'").fetchall()
            )
        words = Words.of(opened.vocab())
        ids = sorted(texts)
        for first in range(0, len(ids), 256):
            batch = opened.examples(ids[first : first + 256])
            _, activating, silent = split_rows(batch, ExplainJob(str(atlas)).n_examples)
            features = batch.features.tolist()
            for detection, fuzzing in keyword_scores(
                [texts[f] for f in features], batch, activating, silent, words, features
            ):
                found += [detection.auroc] if detection.auroc is not None else []
                fuzzed += [fuzzing.auroc] if fuzzing.auroc is not None else []
    return statistics.mean(found), statistics.mean(fuzzed)


def seconds(runs: list[dict[str, float]]) -> str:
    return ", ".join(f"{run['seconds']:.1f}" for run in runs)


def mean(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f}" if values else "—"


def local_row(label: str, summary: ExplainSummary, method: str) -> str:
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
    parser.add_argument("--baseline-features", default="all", help="top:N, random:N, all, or ids")
    parser.add_argument("--rounds", type=int, default=2, help="old, new pairs of baseline runs")
    parser.add_argument("--local-features", type=int, default=5)
    args = parser.parse_args()
    peak = matmul_peak_gflops()
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        archive = subprocess.run(["git", "archive", OLD, "src"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(scratch)], input=archive.stdout, check=True)
        sources = {"old": scratch / "src", "new": ROOT / "src"}
        with Atlas.open(args.atlas) as opened:
            n_features, tokens = len(opened), opened.meta["tokens"]
        runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
        for round_ in range(args.rounds):
            for version in ("old", "new"):
                copy = fresh_copy(Path(args.atlas), scratch / f"{version}-{round_}.sqlite")
                runs[version].append(timed_run(sources[version], copy, args.baseline_features))
                print(version, runs[version][-1], flush=True)
        old_rescored = rescored(scratch / "old-0.sqlite")
        local = None
        if args.local_features:
            copy = fresh_copy(Path(args.atlas), scratch / "local.sqlite")
            local = explain_atlas(
                ExplainJob(str(copy), explainer="local", features=f"top:{args.local_features}")
            )
    rate = {v: [r["explained"] / r["seconds"] * 60 for r in found] for v, found in runs.items()}
    best = {v: max(rates) for v, rates in rate.items()}
    old, new = runs["old"][0], runs["new"][0]
    lines = [
        f"# explain benchmark: atlas of {n_features:,} features over {tokens:,} tokens ({args.atlas})",
        f"# {describe(peak)}",
        f"# {vector_flags()}",
        f"# {versions(('torch', 'transformers', 'featurelens'))}; old baseline: featurelens at {OLD[:7]}",
        "",
        "| baseline (keyword scorer) | features | seconds (each round) | features/min (best) "
        "| detection AUROC | fuzzing AUROC |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| old: token lift, per feature (old scorer) | {int(old['explained']):,} | "
        f"{seconds(runs['old'])} | {best['old']:,.0f} | "
        f"{old['detection']:.3f} | {old['fuzzing']:.3f} |",
        f"| old explanations (current scorer) | {int(old['explained']):,} | — | — | "
        f"{old_rescored[0]:.3f} | {old_rescored[1]:.3f} |",
        f"| new: n-gram patterns, batched (current scorer) | {int(new['explained']):,} | "
        f"{seconds(runs['new'])} | {best['new']:,.0f} | "
        f"{new['detection']:.3f} | {new['fuzzing']:.3f} |",
        "",
        f"new / old speed: {best['new'] / best['old']:.1f}x (best rounds; per round: "
        + ", ".join(f"{n / o:.1f}x" for n, o in zip(rate["new"], rate["old"], strict=True))
        + f"); detection AUROC {old['detection']:.3f} -> {new['detection']:.3f}, fuzzing "
        f"{old['fuzzing']:.3f} -> {new['fuzzing']:.3f}",
    ]
    if local is not None:
        method = "local:smollm2"
        lines += [
            "",
            "| explainer (scorer) | features | seconds | features/min | detection AUROC | fuzzing AUROC |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            local_row("baseline (scored by SmolLM2-135M)", local, "baseline"),
            local_row("SmolLM2-135M (scored by SmolLM2-135M)", local, method),
            "",
            f"the LLM beat the baseline on {local.llm_beats_baseline} of {local.compared} features "
            "(detection AUROC, same examples, same scorer); both rows share one timing: per feature the LLM "
            "writes an explanation and both explanations are scored",
        ]
    text = "\n".join(lines)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text + "\n")


if __name__ == "__main__":
    main()
