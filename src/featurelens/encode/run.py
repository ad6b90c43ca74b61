"""`featurelens encode` end to end: inputs (files, or two hooks of a store), the cross-validated encoding
model, and the output folder.

Output folder (written under a temporary name, renamed when whole)::

    results.json        the job, a summary, and per target: raw R² (pooled and per fold), alpha (median
                        over folds), ceilings, normalised score, p-value, and the reason for any NaN
    targets.parquet     the same per-target columns, one row per target
    r2_vs_ceiling.png   a histogram of raw R², and raw R² against the ceiling when there are repeats
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from featurelens.corpus import CorpusConfig
from featurelens.encode.experiment import EncodeSettings, EncodingResult, Progress, cross_validate_encoding
from featurelens.encode.inputs import EncodeInputs, file_inputs, live_inputs, store_inputs
from featurelens.errors import EncodeError
from featurelens.folders import check_output_folder, staged_folder
from featurelens.jsonio import finite

STORE_MAX_TARGETS = 256


@dataclass(frozen=True)
class EncodeJob:
    """What to encode; the CLI maps its flags onto these fields one to one.

    Either files ``x`` (features) and ``y`` (recordings; ``repeats_axis`` for repeated ones, ``groups`` for
    runs), or a store ``acts``, or (neither given) ``model`` run live on ``corpus``: its ``hook`` predicting
    ``target_hook`` over the first ``tokens`` rows (grouped by document), at most ``max_targets`` target
    units (default 256 for hooks, every column of a file).
    """

    out: str = "runs/encode"
    x: str | None = None
    y: str | None = None
    repeats_axis: int | None = None
    groups: str | None = None
    acts: str | None = None
    model: str = "smollm2"
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    seq_len: int = 256
    batch_size: int = 8
    device: str | None = None
    hook: str = "layers.10.resid_post"
    target_hook: str = "layers.20.mlp_neurons"
    tokens: int = 4000
    max_targets: int | None = None
    overwrite: bool = False
    settings: EncodeSettings = field(default_factory=EncodeSettings)

    def __post_init__(self) -> None:
        files = self.x is not None or self.y is not None
        if files and self.acts is not None:
            raise EncodeError("give either --x and --y (files) or --acts (a store), not both")
        if files and (self.x is None or self.y is None):
            raise EncodeError("files need both --x (features) and --y (recordings)")
        if self.max_targets is not None and self.max_targets < 1:
            raise EncodeError(f"--max-targets must be positive, got {self.max_targets}")


def encode_inputs(job: EncodeJob) -> EncodeInputs:
    """The arrays ``job`` names."""
    if job.acts is not None:
        return store_inputs(
            job.acts,
            job.hook,
            job.target_hook,
            job.tokens,
            job.max_targets or STORE_MAX_TARGETS,
            job.settings.seed,
        )
    if job.x is None or job.y is None:
        return live_inputs(
            job.model,
            job.hook,
            job.target_hook,
            job.corpus,
            tokens=job.tokens,
            seq_len=job.seq_len,
            batch_size=job.batch_size,
            max_targets=job.max_targets or STORE_MAX_TARGETS,
            folds=job.settings.folds,
            seed=job.settings.seed,
            device=job.device,
        )
    inputs = file_inputs(job.x, job.y, job.repeats_axis, job.groups)
    if job.max_targets is not None and len(inputs.names) > job.max_targets:
        y = inputs.y[..., : job.max_targets]
        source = {**inputs.source, "target_columns": f"first {job.max_targets} of {len(inputs.names)}"}
        return EncodeInputs(inputs.x, y, inputs.groups, inputs.names[: job.max_targets], source)
    return inputs


def run_encode(job: EncodeJob, progress: Progress | None = None) -> tuple[EncodingResult, dict[str, Any]]:
    """Fit and score the job's encoding model; returns the result and the run's description."""
    started = time.perf_counter()
    inputs = encode_inputs(job)
    result = cross_validate_encoding(inputs.x, inputs.y, job.settings, inputs.groups, inputs.names, progress)
    meta = {
        "job": job_record(job),
        **inputs.source,
        "features": int(inputs.x.shape[1]),
        "seconds": time.perf_counter() - started,
    }
    return result, meta


def check_encode_out(out: str | Path, overwrite: bool) -> Path:
    """``out`` as a path, if results may be written there (call it before the work, too)."""
    return check_output_folder(out, overwrite, "results.json", "encoding result folder", EncodeError)


def save_encode(result: EncodingResult, meta: dict[str, Any], out: str | Path, overwrite: bool) -> Path:
    """Write the output folder (see the module docstring)."""
    out = check_encode_out(out, overwrite)
    rows = result.target_rows()
    for row, fold_r2 in zip(rows, result.fold_r2.T.tolist(), strict=True):
        row["fold_r2"] = fold_r2
    payload = {"format": "featurelens.encode", **meta, **result.summary(), "targets": rows}
    with staged_folder(out) as staging:
        (staging / "results.json").write_text(json.dumps(finite(payload), indent=1))
        table = [{k: v for k, v in row.items() if k != "fold_r2"} for row in rows]
        pq.write_table(pa.Table.from_pylist(table), staging / "targets.parquet")
        plot_scores(result, staging / "r2_vs_ceiling.png")
    return out


def job_record(job: EncodeJob) -> dict[str, Any]:
    """The job's fields for results.json (settings are recorded by the result)."""
    return {k: v for k, v in asdict(job).items() if k != "settings"}


def plot_scores(result: EncodingResult, path: Path) -> None:
    """Histogram of raw held-out R²; with a ceiling, raw R² against it (the line raw = ceiling)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if result.ceiling is not None else 1
    figure, axes = plt.subplots(1, panels, figsize=(4.4 * panels, 3.6), squeeze=False)
    raw = result.raw_r2[np.isfinite(result.raw_r2)]
    axes[0, 0].hist(raw, bins=min(50, max(5, len(raw) // 4)), color="C0")
    axes[0, 0].axvline(0, color="grey", lw=0.8)
    axes[0, 0].set(xlabel="held-out R² (raw)", ylabel="targets", title=f"{len(raw)} targets")
    if result.ceiling is not None:
        axis = axes[0, 1]
        axis.scatter(result.ceiling, result.raw_r2, s=8, alpha=0.7)
        finite_values = np.concatenate([result.ceiling, result.raw_r2])
        finite_values = finite_values[np.isfinite(finite_values)]
        low, high = (float(finite_values.min()), float(finite_values.max())) if len(finite_values) else (0, 1)
        axis.plot([low, high], [low, high], color="grey", lw=0.8, ls="--", label="raw = ceiling")
        axis.set(xlabel=f"noise ceiling ({result.settings.ceiling})", ylabel="held-out R² (raw)")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
