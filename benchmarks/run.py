"""The main job, stage by stage: ``featurelens run`` timed on this machine, with the quality it reaches.

Runs ``featurelens run`` in a fresh output folder (a subprocess, as a user would) and prints the CPU's model
and vector flags, each stage's wall time (from the run's own ``run.json``) and the held-out FVU and CE loss
recovered of the dictionary it trained (from ``sae/evaluation.json``). The model's GGUF conversion is cached
after the first load anywhere on the machine, so a second run leaves those ~12 s out; ``--first-run`` puts
them back in, with an empty model cache, as on a fresh machine.

``--avx2`` runs the job as on a CPU without AVX-512 or bf16 units: torch's kernels, oneDNN, MKL and FBGEMM are
held to AVX2 (machine.py ``AVX2_ENVIRONMENT``) and the encoder selects in float32. It emulates the instruction
set, not that CPU's clock or memory, so an AVX2-only CPU can be slower.
``--previous`` runs the defaults before 2026-12-05 (200k tokens, 2 epochs of 4,096-token batches, two bundled-
model explanations) for a before/after in one sitting.

Reproduce (about 4-8 minutes per run on a quiet 2-core CPU)::

    .venv/bin/python benchmarks/run.py
    .venv/bin/python benchmarks/run.py --avx2 --first-run
    .venv/bin/python benchmarks/run.py --previous

The table is also appended to benchmarks/results/run.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import AVX2_ENVIRONMENT, describe, matmul_peak_gflops, vector_flags

RESULTS = Path(__file__).resolve().parent / "results" / "run.txt"
PREVIOUS_DEFAULTS = ["--tokens", "200000", "--epochs", "2", "--batch-size", "4096", "--explain-local", "2"]


def run_main_job(out: Path, options: list[str], environment: dict[str, str]) -> tuple[float, str]:
    """Wall seconds of ``featurelens run --out OUT OPTIONS`` and its stdout; exits if the run fails."""
    command = [str(Path(sys.executable).with_name("featurelens")), "run", "--out", str(out), *options]
    started = time.perf_counter()
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **environment, "COLUMNS": "120"}
    )
    if result.returncode != 0:
        sys.exit(f"featurelens run failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return time.perf_counter() - started, result.stdout


def report(out: Path, wall: float, label: str) -> list[str]:
    """Lines of the table: each stage's seconds and share, the total and the dictionary's quality."""
    times = json.loads((out / "run.json").read_text())
    evaluation = json.loads((out / "sae" / "evaluation.json").read_text())
    lines = [f"{label}: featurelens run in {wall:.0f} s wall ({times['seconds']:.0f} s in its stages)", ""]
    lines.append(f"{'stage':<10} {'seconds':>8} {'share':>6}")
    for stage in times["stages"]:
        share = stage["seconds"] / times["seconds"]
        lines.append(f"{stage['stage']:<10} {stage['seconds']:>8.1f} {share:>6.0%} {stage['note']}")
    lines.append(f"{'total':<10} {times['seconds']:>8.1f}")
    lines.append(
        f"held-out FVU {evaluation['fvu']:.3f}, CE loss recovered {evaluation['ce_loss_recovered']:.1%}, "
        f"L0 {evaluation['l0']:.1f}, dead {evaluation['dead_fraction']:.1%}"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--avx2", action="store_true", help="hold torch, oneDNN and MKL to AVX2")
    parser.add_argument("--previous", action="store_true", help="the defaults before 2026-12-05")
    parser.add_argument(
        "--first-run", action="store_true", help="empty model cache: include the GGUF conversion"
    )
    parser.add_argument("--keep", help="run in this folder and keep it (default: a temporary one)")
    parser.add_argument("options", nargs="*", help="more options for featurelens run (after --)")
    args = parser.parse_args()
    if args.avx2 and any(os.environ.get(k) != v for k, v in AVX2_ENVIRONMENT.items()):
        # held here too, so the header's matmul peak is the held one (the run inherits the environment)
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **AVX2_ENVIRONMENT})
    options = [*(PREVIOUS_DEFAULTS if args.previous else []), *args.options]
    environment = AVX2_ENVIRONMENT if args.avx2 else {}
    if args.avx2:
        options += ["--encoder-dtype", "float32"]
    header = [describe(matmul_peak_gflops()), vector_flags()]
    if args.avx2:
        header.append("emulating an AVX2-only CPU: " + ", ".join(f"{k}={v}" for k, v in environment.items()))
    label = ("previous defaults" if args.previous else "defaults") + (" " + " ".join(args.options)).rstrip()
    label += ", first run (model converted)" if args.first_run else ", model conversion cached"
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.keep) if args.keep else Path(scratch) / "run"
        if args.first_run:
            environment = {**environment, "FEATURELENS_CACHE": str(Path(scratch) / "cache")}
        wall, _ = run_main_job(out, options, environment)
        lines = [*header, "", *report(out, wall, label), ""]
    print("\n".join(lines))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as results:
        results.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
