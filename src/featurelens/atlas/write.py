"""Write a finished accumulation into an atlas file, atomically (see :mod:`featurelens.atlas.schema`)."""

from __future__ import annotations

import json
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


def _example_rows(contents: AtlasContents) -> Iterator[tuple[Any, ...]]:
    stats, settings = contents.stats, contents.stats.settings
    start, stop = (bound.numpy() for bound in sequence_bounds(contents.sequences))
    order, bins = stats.quantile_order()
    sample = Selection(
        stats.samples.score.gather(0, order),
        stats.samples.row.gather(0, order),
        stats.samples.value.gather(0, order),
        stats.samples.window.gather(0, order[:, :, None].expand_as(stats.samples.window)),
    )
    for kind, selection, selection_bins in (
        ("top", stats.top, None),
        ("quantile", sample, bins),
        ("negative", stats.negatives, None),
    ):
        ranks, latents = np.nonzero(selection.row.numpy() >= 0)
        rows = selection.row.numpy()[ranks, latents]
        first = np.maximum(rows - settings.before, start[rows])
        last = np.minimum(rows + settings.after, stop[rows] - 1)
        width = selection.window.shape[2]
        blobs: list[bytes | None] = [None] * len(rows)
        if width:
            raw = selection.window.numpy()[ranks, latents].astype(BLOB_DTYPE).tobytes()
            size = np.dtype(BLOB_DTYPE).itemsize
            begin = (np.arange(len(rows)) * width + first - (rows - settings.before)) * size
            end = begin + (last - first + 1) * size
            blobs = [raw[a:b] for a, b in zip(begin.tolist(), end.tolist(), strict=True)]
        row_bins = (
            selection_bins[ranks, latents].tolist() if selection_bins is not None else [None] * len(rows)
        )
        yield from zip(
            latents.tolist(),
            [kind] * len(rows),
            ranks.tolist(),
            row_bins,
            rows.tolist(),
            selection.value.numpy()[ranks, latents].tolist(),
            first.tolist(),
            last.tolist(),
            blobs,
            strict=True,
        )


def _ranked_rows(feature_kind: str, ranked: Ranked) -> Iterator[tuple[int, str, int, int, float]]:
    ids, values = ranked.ids.tolist(), ranked.values.tolist()
    for latent, (latent_ids, latent_values) in enumerate(zip(ids, values, strict=True)):
        for rank, (other, value) in enumerate(zip(latent_ids, latent_values, strict=True)):
            if other >= 0:
                yield latent, feature_kind, rank, other, value


def _effect_rows(contents: AtlasContents) -> Iterator[tuple[Any, ...]]:
    if contents.output_effects is not None:
        yield from _ranked_rows("output_top", contents.output_effects[0])
        yield from _ranked_rows("output_bottom", contents.output_effects[1])
    if contents.input_effects is not None:
        yield from _ranked_rows("input_top", contents.input_effects)


def _neighbour_rows(contents: AtlasContents) -> Iterator[tuple[Any, ...]]:
    cooccurring = contents.stats.cooccurring(contents.stats.settings.n_neighbours)
    if cooccurring is not None:
        ids, jaccard, counts = cooccurring
        count_list = counts.tolist()
        for latent, kind, rank, other, value in _ranked_rows("cooccurring", Ranked(ids, jaccard)):
            yield latent, kind, rank, other, value, count_list[latent][rank]
    if contents.nearest is not None:
        for row in _ranked_rows("nearest", contents.nearest):
            yield (*row, None)


def effect_token_ids(contents_effects: list[Ranked]) -> set[int]:
    """Every token id named by some token-effect list."""
    return {int(t) for ranked in contents_effects for t in torch.unique(ranked.ids).tolist()}
