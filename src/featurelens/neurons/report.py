"""The neuron report: every unit of every requested hook, from a store or live, in one streaming pass.

Per unit (see :mod:`featurelens.neurons.statistics` for how each is kept): firing, zero and near-zero
rates; mean, spread, skewness and kurtosis; extremes and where the largest magnitude occurred; outlier and
massive-activation rates relative to the hook's median magnitude; the variance explained by position; and
the token, previous token and bigram that explain its strong activations (coverage and lift). Units are
flagged ``dead`` (never fires: on a signed hook such as the residual stream, a channel that is always
negative), ``always_on``, ``outlier`` (beyond ``outlier_multiple`` x the hook's median magnitude on at least
``outlier_rate`` of rows: a systematic outlier channel, not one spike), ``massive`` (an entry >= the first
``massive`` multiple), ``positional`` (η² of position >= ``positional``) and token-, previous-token- or
bigram-specific.

Live runs keep every position and special token and drop no row: attention-sink rows (position 0) are where
massive activations live. A store gives the rows it holds (by default without position 0).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from featurelens.capture.rows import Rows, live_row_chunks, store_rows
from featurelens.capture.store import ActivationStore
from featurelens.corpus import CorpusConfig
from featurelens.errors import FeatureLensError, NeuronError
from featurelens.models import load_model, load_tokenizer
from featurelens.models.hook_names import resolve_hooks
from featurelens.neurons.statistics import NeuronSettings, UnitStatistics
from featurelens.neurons.tables import (
    RowContext,
    hook_summary,
    massive_table,
    positional_table,
    unit_table,
)

DEFAULT_HOOKS = ("layers.*.mlp_neurons", "layers.*.resid_post")


@dataclass(frozen=True)
class NeuronJob:
    """What to report on; the CLI maps its flags onto these fields one to one.

    ``hooks`` are names or shell-style patterns (``layers.*.mlp_neurons``); empty means every hook of the
    store, or :data:`DEFAULT_HOOKS` live. Activations come from the store ``acts`` or, without one, from
    ``model`` run on ``corpus`` (``tokens`` tokens in sequences of ``seq_len``).
    """

    out: str = "runs/neurons"
    hooks: tuple[str, ...] = ()
    acts: str | None = None
    model: str = "smollm2"
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    tokens: int = 50_000
    seq_len: int = 256
    batch_size: int = 8
    chunk_tokens: int = 8192
    device: str | None = None
    overwrite: bool = False
    resume: bool = False
    checkpoint_seconds: float = 300.0
    settings: NeuronSettings = field(default_factory=NeuronSettings)

    def __post_init__(self) -> None:
        checks = [
            (self.tokens > 0, f"--tokens must be a positive number of tokens, got {self.tokens}"),
            (self.seq_len >= 2, f"--seq-len must be at least 2, got {self.seq_len}"),
            (self.batch_size > 0, f"--batch-size must be positive, got {self.batch_size}"),
            (self.chunk_tokens > 0, f"--chunk-tokens must be positive, got {self.chunk_tokens}"),
            (
                self.checkpoint_seconds > 0,
                f"--checkpoint-seconds must be positive, got {self.checkpoint_seconds}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise NeuronError(message)

    def identity(self) -> dict[str, Any]:
        """The fields that decide the result (a resumed run must match them)."""
        fields = asdict(self)
        runtime = ("out", "device", "overwrite", "resume", "checkpoint_seconds")
        return json.loads(json.dumps({k: v for k, v in fields.items() if k not in runtime}))


@dataclass
class NeuronReport:
    """The report's tables (pyarrow; ``.to_pandas()`` for DataFrames) and what made them.

    ``layers``: one row per hook, the layer x statistic summary; ``units``: one row per unit of every hook;
    ``massive``: the largest massive activations with their rows, positions and tokens; ``positional``: the
    mean per position of every positional unit; ``meta``: source, model, settings, rows and timing.
    """

    layers: pa.Table
    units: pa.Table
    massive: pa.Table
    positional: pa.Table
    meta: dict[str, Any]


@dataclass
class _Source:
    chunks: Iterator[Rows]
    hooks: list[str]
    expected_rows: int
    tokenizer: Any
    description: dict[str, Any]


def _source(job: NeuronJob, skip_rows: int = 0) -> _Source:
    """Where the rows come from, starting after the first ``skip_rows`` (a resumed run)."""
    if job.acts is not None:
        store = ActivationStore.open(job.acts)
        hooks = resolve_hooks(job.hooks or ("*",), store.hooks)
        spec = str(store.manifest.get("model", {}).get("spec", ""))
        try:
            tokenizer = load_tokenizer(spec) if spec else None
        except FeatureLensError:
            tokenizer = None  # token ids are still reported; only their text is missing
        n = min(job.tokens, store.n_tokens)
        description = {
            "source": "store",
            "store": str(store.path),
            "model": spec,
            "skip_positions": store.manifest.get("config", {}).get("skip_positions"),
        }
        chunks = store_rows(store, hooks, n, job.chunk_tokens, first_row=skip_rows)
        return _Source(chunks, hooks, n, tokenizer, description)
    lm = load_model(job.model, device=job.device)
    hooks = resolve_hooks(job.hooks or DEFAULT_HOOKS, list(lm.hook_points))
    chunks = live_row_chunks(
        lm,
        hooks,
        job.corpus,
        seq_len=job.seq_len,
        n_tokens=job.tokens,
        batch_size=job.batch_size,
        skip_sequences=skip_rows // job.seq_len,  # live keeps every position: seq_len rows per sequence
        first_row=skip_rows,
    )
    sequences = -(-job.tokens // job.seq_len)
    description = {
        "source": "live",
        "model": job.model,
        "corpus": asdict(job.corpus),
        "seq_len": job.seq_len,
        "skip_positions": 0,
    }
    return _Source(chunks, hooks, sequences * job.seq_len, lm.tokenizer, description)


class ReportState:
    """The running report: one :class:`UnitStatistics` per hook and every row's token context so far.

    :meth:`save` / :meth:`load` write and read it as one safetensors file (renamed into place), so an
    interrupted report resumes exactly where its last checkpoint was.
    """

    def __init__(self, settings: NeuronSettings) -> None:
        self.settings = settings
        self.stats: dict[str, UnitStatistics] = {}
        self.context: dict[str, list[np.ndarray]] = {"tokens": [], "previous": [], "positions": []}
        self.rows = 0

    def add(self, chunk: Rows, hooks: Sequence[str]) -> None:
        rows = torch.from_numpy(chunk.rows.astype(np.int64))
        where = torch.from_numpy(chunk.positions.astype(np.int64))
        for hook in hooks:
            acts = chunk.acts[hook]
            if hook not in self.stats:
                self.stats[hook] = UnitStatistics(acts.shape[1], self.settings)
            try:
                self.stats[hook].update(acts, rows, where)
            except NeuronError as error:
                raise NeuronError(f"{hook}: {error}") from None
        for name, values in self.context.items():
            values.append(getattr(chunk, name).astype(np.int64))
        self.rows += len(chunk.tokens)

    def save(self, path: Path, identity: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        tensors = {f"{hook}/{name}": t for hook, u in self.stats.items() for name, t in u.state().items()}
        for name, values in self.context.items():
            joined = np.concatenate(values) if values else np.empty(0, np.int64)
            tensors[f"context/{name}"] = torch.from_numpy(joined)
        metadata = {"identity": json.dumps(identity, sort_keys=True), "hooks": json.dumps(list(self.stats))}
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.partial")
        save_file(tensors, str(partial), metadata=metadata)
        os.replace(partial, path)

    @classmethod
    def load(cls, path: Path, identity: dict[str, Any], settings: NeuronSettings) -> ReportState:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        except (OSError, ValueError) as error:
            raise NeuronError(f"{path} is damaged ({error}); rerun with --overwrite") from error
        if metadata.get("identity") != json.dumps(identity, sort_keys=True):
            raise NeuronError(
                f"{path} holds a report with other settings; rerun with the same, or --overwrite"
            )
        state = cls(settings)
        for hook in json.loads(metadata["hooks"]):
            prefix = f"{hook}/"
            own = {name[len(prefix) :]: t for name, t in tensors.items() if name.startswith(prefix)}
            state.stats[hook] = UnitStatistics(int(own["max_abs"].numel()), settings)
            state.stats[hook].load_state(own)
        for name in state.context:
            state.context[name] = [tensors[f"context/{name}"].numpy()]
        state.rows = len(state.context["tokens"][0])
        return state

    def report(self, hooks: Sequence[str], tokenizer: Any) -> NeuronReport:
        if not self.stats:
            raise NeuronError("the source held no rows to report on")
        stats, settings = self.stats, self.settings
        tokens, previous, positions = (np.concatenate(self.context[name]) for name in self.context)
        context = RowContext(tokens, previous, positions, tokenizer)
        unit_tables = [unit_table(hook, stats[hook], context, settings) for hook in hooks]
        layers = pa.Table.from_pylist(
            [hook_summary(hook, stats[hook], t) for hook, t in zip(hooks, unit_tables, strict=True)]
        )
        massive = massive_table(hooks, stats, context)
        positional = positional_table(hooks, stats, unit_tables)
        meta = {"settings": asdict(settings), "rows": len(context.tokens), "hooks": list(hooks)}
        return NeuronReport(layers, pa.concat_tables(unit_tables), massive, positional, meta)


def report_from_rows(
    chunks: Iterator[Rows],
    hooks: Sequence[str],
    settings: NeuronSettings,
    tokenizer: Any = None,
    on_rows: Callable[[int], None] | None = None,
) -> NeuronReport:
    """The report over ``chunks`` of aligned rows (the pure core of :func:`run_neuron_report`)."""
    state = ReportState(settings)
    for chunk in chunks:
        state.add(chunk, hooks)
        if on_rows:
            on_rows(len(chunk.tokens))
    return state.report(hooks, tokenizer)


def checkpoint_path(out: str | Path) -> Path:
    """Where an unfinished report on ``out`` keeps its state: ``.NAME.checkpoint.safetensors`` beside it."""
    out = Path(out)
    return out.with_name(f".{out.name}.checkpoint.safetensors")


def run_neuron_report(job: NeuronJob, on_rows: Callable[[int, int], None] | None = None) -> NeuronReport:
    """Stream ``job``'s activations once and return the report (``save_report`` writes it).

    The state is checkpointed every ``checkpoint_seconds`` beside ``job.out``; with ``job.resume`` a run
    continues from it (the same result as an uninterrupted run). ``on_rows(n, expected)`` is called after
    each chunk of n rows with the expected total (progress bars).
    """
    started = time.perf_counter()
    checkpoint = checkpoint_path(job.out)
    identity = job.identity()
    state = ReportState(job.settings)
    if checkpoint.exists():
        if job.resume:
            state = ReportState.load(checkpoint, identity, job.settings)
        elif not job.overwrite:
            raise NeuronError(
                f"an interrupted report on {job.out} exists ({checkpoint.name}); add --resume to continue it "
                "or --overwrite to start again"
            )
    source = _source(job, state.rows)
    if on_rows and state.rows:
        on_rows(state.rows, source.expected_rows)
    saved = time.perf_counter()
    for chunk in source.chunks:
        state.add(chunk, source.hooks)
        if on_rows:
            on_rows(len(chunk.tokens), source.expected_rows)
        if time.perf_counter() - saved >= job.checkpoint_seconds:
            state.save(checkpoint, identity)
            saved = time.perf_counter()
    report = state.report(source.hooks, source.tokenizer)
    checkpoint.unlink(missing_ok=True)  # the pass is whole; a later run starts afresh
    seconds = time.perf_counter() - started
    report.meta.update(source.description)
    report.meta.update(seconds=seconds, rows_per_second=report.meta["rows"] / max(seconds, 1e-9))
    return report
