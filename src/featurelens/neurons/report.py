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

import fnmatch
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from featurelens.capture.rows import Rows, live_row_chunks, store_rows
from featurelens.capture.store import ActivationStore
from featurelens.corpus import CorpusConfig
from featurelens.errors import FeatureLensError, NeuronError
from featurelens.models import load_model, load_tokenizer
from featurelens.models.loading import describe_names
from featurelens.neurons.statistics import NeuronSettings, UnitStatistics
from featurelens.neurons.tokens import KeyExplanation, bigram_keys, explain_by_key

DEFAULT_HOOKS = ("layers.*.mlp_neurons", "layers.*.resid_post")
LAYER_HOOK = re.compile(r"^layers\.(\d+)\.(.+)$")


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
    settings: NeuronSettings = field(default_factory=NeuronSettings)

    def __post_init__(self) -> None:
        checks = [
            (self.tokens > 0, f"--tokens must be a positive number of tokens, got {self.tokens}"),
            (self.seq_len >= 2, f"--seq-len must be at least 2, got {self.seq_len}"),
            (self.batch_size > 0, f"--batch-size must be positive, got {self.batch_size}"),
            (self.chunk_tokens > 0, f"--chunk-tokens must be positive, got {self.chunk_tokens}"),
        ]
        for ok, message in checks:
            if not ok:
                raise NeuronError(message)


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


def resolve_hooks(patterns: Sequence[str], available: Sequence[str]) -> list[str]:
    """Hooks matching ``patterns`` (names or shell-style patterns), ordered by layer then as available."""
    chosen: list[str] = []
    for pattern in patterns:
        matched = [name for name in available if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            raise NeuronError(f"no hook matches {pattern!r}; available: {describe_names(list(available))}")
        chosen.extend(name for name in matched if name not in chosen)
    order = {name: i for i, name in enumerate(available)}
    return sorted(chosen, key=lambda name: (layer_of(name), order[name]))


def layer_of(hook: str) -> int:
    """The layer index in ``layers.i.<point>`` (-1 for embed, final_norm and other non-layer hooks)."""
    match = LAYER_HOOK.match(hook)
    return int(match.group(1)) if match else -1


def point_of(hook: str) -> str:
    """``layers.3.mlp_neurons`` -> ``mlp_neurons``; other hooks are their own point."""
    match = LAYER_HOOK.match(hook)
    return match.group(2) if match else hook


@dataclass
class _Source:
    chunks: Iterator[Rows]
    hooks: list[str]
    expected_rows: int
    tokenizer: Any
    description: dict[str, Any]


def _source(job: NeuronJob) -> _Source:
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
        return _Source(store_rows(store, hooks, n, job.chunk_tokens), hooks, n, tokenizer, description)
    lm = load_model(job.model, device=job.device)
    hooks = resolve_hooks(job.hooks or DEFAULT_HOOKS, list(lm.hook_points))
    chunks = live_row_chunks(
        lm, hooks, job.corpus, seq_len=job.seq_len, n_tokens=job.tokens, batch_size=job.batch_size
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


def report_from_rows(
    chunks: Iterator[Rows],
    hooks: Sequence[str],
    settings: NeuronSettings,
    tokenizer: Any = None,
    on_rows: Callable[[int], None] | None = None,
) -> NeuronReport:
    """The report over ``chunks`` of aligned rows (the pure core of :func:`run_neuron_report`)."""
    stats: dict[str, UnitStatistics] = {}
    tokens, previous, positions = [], [], []
    for chunk in chunks:
        rows = torch.from_numpy(chunk.rows.astype(np.int64))
        where = torch.from_numpy(chunk.positions.astype(np.int64))
        for hook in hooks:
            acts = chunk.acts[hook]
            if not torch.isfinite(acts).all():
                bad = torch.nonzero(~torch.isfinite(acts).all(1)).flatten()[:5].tolist()
                raise NeuronError(f"{hook} has NaN/Inf activations at rows {chunk.rows[bad].tolist()}")
            if hook not in stats:
                stats[hook] = UnitStatistics(acts.shape[1], settings)
            stats[hook].update(acts, rows, where)
        tokens.append(chunk.tokens)
        previous.append(chunk.previous)
        positions.append(chunk.positions)
        if on_rows:
            on_rows(len(chunk.tokens))
    if not stats:
        raise NeuronError("the source held no rows to report on")
    context = _RowContext(
        np.concatenate(tokens).astype(np.int64),
        np.concatenate(previous).astype(np.int64),
        np.concatenate(positions).astype(np.int64),
        tokenizer,
    )
    unit_tables = [_unit_table(hook, stats[hook], context, settings) for hook in hooks]
    units = pa.concat_tables(unit_tables)
    layers = pa.Table.from_pylist(
        [_hook_summary(hook, stats[hook], t) for hook, t in zip(hooks, unit_tables, strict=True)]
    )
    massive = _massive_table(hooks, stats, context)
    positional = _positional_table(hooks, stats, unit_tables)
    meta = {"settings": asdict(settings), "rows": len(context.tokens), "hooks": list(hooks)}
    return NeuronReport(layers, units, massive, positional, meta)


def run_neuron_report(job: NeuronJob, on_rows: Callable[[int, int], None] | None = None) -> NeuronReport:
    """Stream ``job``'s activations once and return the report (``save_report`` writes it).

    ``on_rows(n, expected)`` is called after each chunk of n rows with the expected total (progress bars).
    """
    started = time.perf_counter()
    source = _source(job)
    report = report_from_rows(
        source.chunks,
        source.hooks,
        job.settings,
        source.tokenizer,
        (lambda n: on_rows(n, source.expected_rows)) if on_rows else None,
    )
    seconds = time.perf_counter() - started
    report.meta.update(source.description)
    report.meta.update(seconds=seconds, rows_per_second=report.meta["rows"] / max(seconds, 1e-9))
    return report


@dataclass(frozen=True)
class _RowContext:
    """Token id, previous token id (-1 unknown) and position of every row [n_rows]; token texts on demand."""

    tokens: np.ndarray
    previous: np.ndarray
    positions: np.ndarray
    tokenizer: Any

    def texts(self, ids: np.ndarray) -> list[str]:
        ids = np.asarray(ids, dtype=np.int64)
        if self.tokenizer is None:
            return [f"<{i}>" if i >= 0 else "" for i in ids.tolist()]
        unique = [int(i) for i in np.unique(ids[ids >= 0])]
        decoded = dict(zip(unique, self.tokenizer.batch_decode([[i] for i in unique]), strict=True))
        return [decoded.get(int(i), "") for i in ids.tolist()]

    @property
    def vocab(self) -> int:
        return int(max(self.tokens.max(initial=0), self.previous.max(initial=0))) + 1


def _explanations(stats: UnitStatistics, context: _RowContext, settings: NeuronSettings) -> dict[str, Any]:
    rows = stats.top_rows.numpy()
    strong = stats.top_values.numpy() > settings.fire_threshold
    vocab = context.vocab
    keys = {
        "token": (context.tokens[rows], context.tokens),
        "previous": (context.previous[rows], context.previous),
        "bigram": (
            bigram_keys(context.previous[rows], context.tokens[rows], vocab),
            bigram_keys(context.previous, context.tokens, vocab),
        ),
    }
    return {
        name: explain_by_key(top, strong, every, settings.min_firing_rows)
        for name, (top, every) in keys.items()
    }


def _specific(explanation: KeyExplanation, settings: NeuronSettings) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return (explanation.coverage >= settings.token_coverage) & (explanation.lift >= settings.token_lift)


def _unit_table(hook: str, stats: UnitStatistics, context: _RowContext, settings: NeuronSettings) -> pa.Table:
    width = stats.width
    median = float(stats.median_abs or 0.0)
    fire_rate = stats.rate("fires").numpy()
    max_abs = stats.max_abs.numpy()
    max_over_median = max_abs / median if median > 0 else np.full(width, np.inf)
    max_row = stats.max_abs_row.numpy()
    massive = stats.massive_rates().numpy()
    position_r2 = stats.position_variance_explained().numpy()
    explained = _explanations(stats, context, settings)
    token, previous, bigram = explained["token"], explained["previous"], explained["bigram"]
    token_specific = _specific(token, settings)
    previous_specific = _specific(previous, settings) & ~token_specific
    bigram_specific = _specific(bigram, settings) & ~token_specific & ~previous_specific
    vocab = context.vocab
    first_word, second_word = np.divmod(np.where(bigram.key >= 0, bigram.key, 0), vocab)
    bigram_text = [
        f"{a}{b}" if key >= 0 else ""
        for a, b, key in zip(context.texts(first_word), context.texts(second_word), bigram.key, strict=True)
    ]
    columns: dict[str, Any] = {
        "hook": [hook] * width,
        "layer": np.full(width, layer_of(hook), dtype=np.int32),
        "unit": np.arange(width, dtype=np.int32),
        "fire_rate": fire_rate,
        "zero_rate": stats.rate("zeros").numpy(),
        "near_zero_rate": stats.rate("near_zero").numpy(),
        "mean": stats.mean().numpy(),
        "std": stats.variance().sqrt().numpy(),
        "skewness": stats.skewness().numpy(),
        "kurtosis": stats.kurtosis().numpy(),
        "min": stats.minimum.numpy(),
        "max": stats.maximum.numpy(),
        "max_abs": max_abs,
        "max_over_median": max_over_median,
        "max_abs_position": context.positions[max_row],
        "max_abs_token": context.tokens[max_row],
        "max_abs_token_text": context.texts(context.tokens[max_row]),
        "outlier_rate": stats.rate("outliers").numpy(),
        **{f"massive_{multiple:g}x_rate": massive[i] for i, multiple in enumerate(settings.massive)},
        "position_r2": position_r2,
        "token": token.key,
        "token_text": context.texts(token.key),
        "token_coverage": token.coverage,
        "token_lift": token.lift,
        "previous_token": previous.key,
        "previous_token_text": context.texts(previous.key),
        "previous_coverage": previous.coverage,
        "previous_lift": previous.lift,
        "bigram_text": bigram_text,
        "bigram_coverage": bigram.coverage,
        "bigram_lift": bigram.lift,
        "strong_rows": token.support,
        "dead": fire_rate == 0,
        "always_on": fire_rate >= settings.always_on,
        "outlier": stats.rate("outliers").numpy() >= settings.outlier_rate,
        "massive": massive[0] > 0,
        "positional": position_r2 >= settings.positional,
        "token_specific": token_specific,
        "previous_token_specific": previous_specific,
        "bigram_specific": bigram_specific,
    }
    return pa.table(columns)


def _hook_summary(hook: str, stats: UnitStatistics, units: pa.Table) -> dict[str, Any]:
    column = {name: units.column(name).to_numpy() for name in units.column_names if name != "hook"}
    n = max(stats.n_rows, 1)
    counts = stats.counts
    massive = stats.massive_counts.sum(1).tolist()
    settings = stats.settings
    summary = {
        "hook": hook,
        "layer": layer_of(hook),
        "point": point_of(hook),
        "width": stats.width,
        "rows": stats.n_rows,
        "median_abs": float(stats.median_abs or 0.0),
        "dead": int(column["dead"].sum()),
        "always_on": int(column["always_on"].sum()),
        "fire_rate": float(counts["fires"].sum()) / (n * stats.width),
        "zero_fraction": float(counts["zeros"].sum()) / (n * stats.width),
        "near_zero_fraction": float(counts["near_zero"].sum()) / (n * stats.width),
        "kurtosis": stats.pooled_kurtosis(),
        "median_unit_kurtosis": float(np.median(column["kurtosis"])),
        "max_over_median": float(column["max_over_median"].max()),
        "outlier_units": int(column["outlier"].sum()),
        **{f"massive_{m:g}x_entries": int(c) for m, c in zip(settings.massive, massive, strict=True)},
        "massive_units": int(column["massive"].sum()),
        "positional_units": int(column["positional"].sum()),
        "token_units": int(column["token_specific"].sum()),
        "previous_token_units": int(column["previous_token_specific"].sum()),
        "bigram_units": int(column["bigram_specific"].sum()),
        "position_r2_chance": float(
            (int((stats.position_counts.sum(1) > 0).sum()) - 1) / max(stats.n_rows - 1, 1)
        ),
    }
    return summary


def _massive_table(hooks: Sequence[str], stats: dict[str, UnitStatistics], context: _RowContext) -> pa.Table:
    records: list[dict[str, Any]] = []
    for hook in hooks:
        values, rows, units = (t.numpy() for t in stats[hook].events)
        median = float(stats[hook].median_abs or 1.0)
        texts = context.texts(context.tokens[rows])
        for value, row, unit, text in zip(values, rows, units, texts, strict=True):
            records.append(
                {
                    "hook": hook,
                    "layer": layer_of(hook),
                    "unit": int(unit),
                    "value": float(value),
                    "multiple_of_median": abs(float(value)) / median,
                    "row": int(row),
                    "position": int(context.positions[row]),
                    "token": int(context.tokens[row]),
                    "token_text": text,
                }
            )
    schema = pa.schema(
        [
            ("hook", pa.string()),
            ("layer", pa.int64()),
            ("unit", pa.int64()),
            ("value", pa.float64()),
            ("multiple_of_median", pa.float64()),
            ("row", pa.int64()),
            ("position", pa.int64()),
            ("token", pa.int64()),
            ("token_text", pa.string()),
        ]
    )
    records.sort(key=lambda r: -r["multiple_of_median"])
    return pa.Table.from_pylist(records, schema=schema)


def _positional_table(
    hooks: Sequence[str], stats: dict[str, UnitStatistics], unit_tables: Sequence[pa.Table]
) -> pa.Table:
    records: dict[str, list[Any]] = {"hook": [], "unit": [], "position": [], "mean": []}
    for hook, table in zip(hooks, unit_tables, strict=True):
        units = np.flatnonzero(table.column("positional").to_numpy())
        if not len(units):
            continue
        means = stats[hook].position_means()[:, units].numpy()
        present = np.flatnonzero(stats[hook].position_counts.sum(1).numpy() > 0)
        for j, unit in enumerate(units):
            records["hook"].extend([hook] * len(present))
            records["unit"].extend([int(unit)] * len(present))
            records["position"].extend(present.tolist())
            records["mean"].extend(means[present, j].tolist())
    return pa.table(
        records,
        schema=pa.schema(
            [("hook", pa.string()), ("unit", pa.int64()), ("position", pa.int64()), ("mean", pa.float64())]
        ),
    )
