"""The report's tables from the running statistics: one row per unit, per hook, per massive entry, and the
position profiles of positional units."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from featurelens.models.hook_names import layer_of, point_of
from featurelens.neurons.statistics import NeuronSettings, UnitStatistics
from featurelens.neurons.tokens import KeyExplanation, bigram_keys, explain_by_key


@dataclass(frozen=True)
class RowContext:
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


def explanations(stats: UnitStatistics, context: RowContext, settings: NeuronSettings) -> dict[str, Any]:
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


def specific(explanation: KeyExplanation, settings: NeuronSettings) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return (explanation.coverage >= settings.token_coverage) & (explanation.lift >= settings.token_lift)


def unit_table(hook: str, stats: UnitStatistics, context: RowContext, settings: NeuronSettings) -> pa.Table:
    width = stats.width
    median = float(stats.median_abs or 0.0)
    fire_rate = stats.rate("fires").numpy()
    max_abs = stats.max_abs.numpy()
    max_over_median = max_abs / median if median > 0 else np.full(width, np.inf)
    max_row = stats.max_abs_row.numpy()
    massive = stats.massive_rates().numpy()
    position_r2 = stats.position_variance_explained().numpy()
    explained = explanations(stats, context, settings)
    token, previous, bigram = explained["token"], explained["previous"], explained["bigram"]
    token_specific = specific(token, settings)
    previous_specific = specific(previous, settings) & ~token_specific
    bigram_specific = specific(bigram, settings) & ~token_specific & ~previous_specific
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


def hook_summary(hook: str, stats: UnitStatistics, units: pa.Table) -> dict[str, Any]:
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
        "median_row_norm": float(stats.median_norm or 0.0),
        "sink_rows": stats.sink_rows,
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


def massive_table(hooks: Sequence[str], stats: dict[str, UnitStatistics], context: RowContext) -> pa.Table:
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


def positional_table(
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
