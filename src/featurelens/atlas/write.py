"""Write a finished accumulation into an atlas file, atomically (see :mod:`featurelens.atlas.schema`)."""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featurelens.atlas.accumulate import AtlasAccumulator, Selection, sequence_bounds
from featurelens.atlas.effects import Ranked
from featurelens.atlas.schema import BLOB_DTYPE, DDL, FORMAT, VERSION


@dataclass(frozen=True)
class AtlasContents:
    """Everything an atlas file holds. Token arrays are [N] over the measured rows, in stream order."""

    meta: dict[str, Any]
    tokens: np.ndarray
    sequences: np.ndarray
    positions: np.ndarray
    vocab: dict[int, str]
    stats: AtlasAccumulator
    output_effects: tuple[Ranked, Ranked] | None
    input_effects: Ranked | None
    nearest: Ranked | None


def partial_path(path: Path) -> Path:
    """Where an atlas is built before it is renamed to ``path``; never opens as an atlas."""
    return path.with_name(f".{path.name}.partial")


def write_atlas(path: Path, contents: AtlasContents) -> None:
    """Write ``contents`` to ``path`` through a temporary file renamed into place when complete."""
    temporary = partial_path(path)
    temporary.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(temporary)
    try:
        connection.execute("PRAGMA journal_mode = OFF")
        connection.execute("PRAGMA synchronous = OFF")
        connection.executescript(DDL)
        _insert(connection, contents)
        connection.execute("INSERT INTO meta VALUES ('complete', 'true')")
        connection.commit()
    finally:
        connection.close()
    os.replace(temporary, path)


def _insert(connection: sqlite3.Connection, contents: AtlasContents) -> None:
    meta = {"format": FORMAT, "version": VERSION, **contents.meta}
    connection.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
    n = len(contents.tokens)
    connection.executemany(
        "INSERT INTO tokens VALUES (?, ?, ?, ?)",
        zip(
            range(n),
            contents.tokens.tolist(),
            contents.sequences.tolist(),
            contents.positions.tolist(),
            strict=True,
        ),
    )
    connection.executemany("INSERT INTO vocab VALUES (?, ?)", sorted(contents.vocab.items()))
    top_tokens = _top_tokens(contents)
    connection.executemany(
        "INSERT INTO features VALUES (?, ?, ?, ?, ?, ?, ?, ?)", _feature_rows(contents, top_tokens)
    )
    connection.executemany("INSERT INTO examples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", _example_rows(contents))
    connection.executemany("INSERT INTO token_effects VALUES (?, ?, ?, ?, ?)", _effect_rows(contents))
    connection.executemany("INSERT INTO neighbours VALUES (?, ?, ?, ?, ?, ?)", _neighbour_rows(contents))
    output_top = contents.output_effects[0].ids.tolist() if contents.output_effects else None
    connection.executemany(
        "INSERT INTO search (rowid, top_tokens, output_tokens, explanations) VALUES (?, ?, ?, '')",
        (
            (
                latent,
                " ".join(text for text, count in tokens for _ in range(count)),
                " ".join(contents.vocab[t] for t in output_top[latent]) if output_top else "",
            )
            for latent, tokens in enumerate(top_tokens)
        ),
    )


def _top_tokens(contents: AtlasContents) -> list[list[tuple[str, int]]]:
    """Per latent, the texts of the tokens at its top rows with their counts, most frequent first."""
    rows = contents.stats.top.row.T.tolist()
    return [
        Counter(
            contents.vocab[int(contents.tokens[r])].strip() or contents.vocab[int(contents.tokens[r])]
            for r in latent_rows
            if r >= 0
        ).most_common()
        for latent_rows in rows
    ]


def _feature_rows(
    contents: AtlasContents, top_tokens: list[list[tuple[str, int]]]
) -> Iterator[tuple[Any, ...]]:
    stats = contents.stats
    histogram = stats.histogram.view(stats.d_latent, -1).numpy()
    n_rows = max(stats.rows, 1)
    for latent in range(stats.d_latent):
        count = int(stats.count[latent])
        bins = np.flatnonzero(histogram[latent])
        first = int(bins[0]) if len(bins) else None
        counts = histogram[latent, bins[0] : bins[-1] + 1].tolist() if len(bins) else []
        yield (
            latent,
            count,
            count / n_rows,
            float(stats.total[latent]) / count if count else None,
            float(stats.max[latent]) if count else None,
            first,
            json.dumps(counts),
            json.dumps(top_tokens[latent]),
        )


def _key_order(latents: np.ndarray, kinds: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """The permutation that puts rows in (feature, kind, rank) primary-key order. ``kinds`` are codes of
    the kind names in sorted order: SQLite appends to a WITHOUT ROWID table in key order far faster
    than it inserts all over its B-tree."""
    return np.lexsort((ranks, kinds, latents))


def _example_rows(contents: AtlasContents) -> Iterator[tuple[Any, ...]]:
    stats, settings = contents.stats, contents.stats.settings
    start, stop = (bound.numpy() for bound in sequence_bounds(contents.sequences))
    slots, bins = stats.quantile_order()
    sample = Selection(
        stats.samples.score.gather(0, slots),
        stats.samples.row.gather(0, slots),
        stats.samples.value.gather(0, slots),
        stats.samples.window.gather(0, slots[:, :, None].expand_as(stats.samples.window)),
    )
    kinds = ("negative", "quantile", "top")  # sorted, as the primary key compares them
    columns: list[tuple[np.ndarray, ...]] = []
    blobs: list[bytes | None] = []
    for code, (selection, selection_bins) in enumerate(
        ((stats.negatives, None), (sample, bins), (stats.top, None))
    ):
        ranks, latents = np.nonzero(selection.row.numpy() >= 0)
        rows = selection.row.numpy()[ranks, latents]
        first = np.maximum(rows - settings.before, start[rows])
        last = np.minimum(rows + settings.after, stop[rows] - 1)
        width = selection.window.shape[2]
        if width:
            raw = selection.window.numpy()[ranks, latents].astype(BLOB_DTYPE).tobytes()
            size = np.dtype(BLOB_DTYPE).itemsize
            begin = (np.arange(len(rows)) * width + first - (rows - settings.before)) * size
            end = begin + (last - first + 1) * size
            blobs += [raw[a:b] for a, b in zip(begin.tolist(), end.tolist(), strict=True)]
        else:
            blobs += [None] * len(rows)
        row_bins = (
            selection_bins.numpy()[ranks, latents] if selection_bins is not None else np.full(len(rows), -1)
        )
        value = selection.value.numpy()[ranks, latents]
        columns.append((latents, np.full(len(rows), code), ranks, row_bins, rows, value, first, last))
    latents, codes, ranks, row_bins, rows, value, first, last = (
        np.concatenate(c) for c in zip(*columns, strict=True)
    )
    order = _key_order(latents, codes, ranks)
    yield from zip(
        latents[order].tolist(),
        [kinds[c] for c in codes[order].tolist()],
        ranks[order].tolist(),
        [None if b < 0 else b for b in row_bins[order].tolist()],
        rows[order].tolist(),
        value[order].tolist(),
        first[order].tolist(),
        last[order].tolist(),
        [blobs[i] for i in order.tolist()],
        strict=True,
    )


def _ranked_rows(
    named: dict[str, Ranked], extra: dict[str, np.ndarray] | None = None
) -> Iterator[tuple[Any, ...]]:
    """Rows (feature, kind, rank, other, value[, extra]) of each ranking [d_latent, n] by kind, in
    primary-key order; ``extra`` gives a further column [d_latent, n] per kind."""
    kinds = sorted(named)
    columns: list[tuple[np.ndarray, ...]] = []
    for code, kind in enumerate(kinds):
        ids = named[kind].ids.numpy()
        latents, ranks = np.nonzero(ids >= 0)
        more = (extra[kind][latents, ranks],) if extra is not None else ()
        values = named[kind].values.numpy()[latents, ranks]
        columns.append((latents, np.full(len(latents), code), ranks, ids[latents, ranks], values, *more))
    if not columns:
        return
    latents, codes, ranks, *rest = (np.concatenate(c) for c in zip(*columns, strict=True))
    order = _key_order(latents, codes, ranks)
    yield from zip(
        latents[order].tolist(),
        [kinds[c] for c in codes[order].tolist()],
        ranks[order].tolist(),
        *(column[order].tolist() for column in rest),
        strict=True,
    )


def _effect_rows(contents: AtlasContents) -> Iterator[tuple[Any, ...]]:
    named = {}
    if contents.output_effects is not None:
        named = {"output_top": contents.output_effects[0], "output_bottom": contents.output_effects[1]}
    if contents.input_effects is not None:
        named["input_top"] = contents.input_effects
    return _ranked_rows(named)


def _neighbour_rows(contents: AtlasContents) -> Iterator[tuple[Any, ...]]:
    """Neighbour rows; the co-occurrence count column is NULL for the nearest-by-decoder kind."""
    named, counts = {}, {}
    cooccurring = contents.stats.cooccurring(contents.stats.settings.n_neighbours)
    if cooccurring is not None:
        ids, jaccard, count = cooccurring
        named["cooccurring"] = Ranked(ids, jaccard)
        counts["cooccurring"] = count.numpy().astype(float)
    if contents.nearest is not None:
        named["nearest"] = contents.nearest
        counts["nearest"] = np.full(contents.nearest.ids.shape, np.nan)
    for latent, kind, rank, other, value, count in _ranked_rows(named, counts):
        yield latent, kind, rank, other, value, None if math.isnan(count) else int(count)


def effect_token_ids(contents_effects: list[Ranked]) -> set[int]:
    """Every token id named by some token-effect list."""
    return {int(t) for ranked in contents_effects for t in torch.unique(ranked.ids).tolist()}
