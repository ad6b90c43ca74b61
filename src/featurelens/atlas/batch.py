"""The examples of many features at once, as padded arrays: one query for a whole batch of features.

:meth:`featurelens.atlas.Atlas.examples` reads them; the baseline explainer and the keyword scorer work on
the arrays directly, and :meth:`ExampleBatch.contexts` turns one feature's rows into the
:class:`~featurelens.atlas.reader.Context` records everything else shows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from featurelens.atlas.schema import BLOB_DTYPE, EXAMPLE_KINDS

BATCH_COLUMNS = "feature, kind, rank, bin, row, activation, first_row, last_row, activations"


@dataclass(frozen=True)
class Context:
    """A window of text around one row: token texts and ids with the feature's activation on each.

    ``centre`` is the index of the example's row within the window; ``bin`` the quantile bin (0 = lowest
    activations) of a quantile sample, else None.
    """

    kind: str
    rank: int
    bin: int | None
    row: int
    activation: float
    token_ids: list[int]
    tokens: list[str]
    activations: list[float]
    centre: int


@dataclass(frozen=True)
class ExampleBatch:
    """Every example (top, quantile, negative) of the features ``features`` [F] (sorted, unique).

    E examples sorted by feature, kind, rank; windows padded to W = the longest one:

    * ``owner`` [E]: index into ``features``; ``kind`` [E]: index into :data:`EXAMPLE_KINDS`; ``rank``,
      ``bin`` (-1: none), ``row`` (the centre row), ``first`` (the window's first row), ``length`` [E];
    * ``tokens`` [E, W] int64 token ids (-1 past the window's end); ``activations`` [E, W] float64 (0 past
      the end; float16 precision except at the centre, which holds the exact ``activation``);
    * ``counts`` [F]: rows each feature fired on; ``output_top`` [F, n] token ids its decoder promotes
      most, best first (-1 padded).
    """

    features: np.ndarray
    counts: np.ndarray
    output_top: np.ndarray
    owner: np.ndarray
    kind: np.ndarray
    rank: np.ndarray
    bin: np.ndarray
    row: np.ndarray
    first: np.ndarray
    length: np.ndarray
    tokens: np.ndarray
    activations: np.ndarray

    @property
    def centre(self) -> np.ndarray:
        """[E] index of each example's centre row within its window."""
        return self.row - self.first

    @property
    def valid(self) -> np.ndarray:
        """[E, W] True inside each window."""
        return np.arange(self.tokens.shape[1]) < self.length[:, None]

    def bounds(self) -> np.ndarray:
        """[F + 1] where each feature's examples start (and the last one ends) in the E rows."""
        return np.searchsorted(self.owner, np.arange(len(self.features) + 1))

    def contexts(self, index: int, vocab: dict[int, str]) -> dict[str, list[Context]]:
        """Feature ``features[index]``'s examples as records, by kind, in rank order."""
        found: dict[str, list[Context]] = {kind: [] for kind in EXAMPLE_KINDS}
        start, stop = self.bounds()[index : index + 2]
        for e in range(start, stop):
            n = int(self.length[e])
            ids = self.tokens[e, :n].tolist()
            kind = EXAMPLE_KINDS[self.kind[e]]
            found[kind].append(
                Context(
                    kind,
                    int(self.rank[e]),
                    int(self.bin[e]) if self.bin[e] >= 0 else None,
                    int(self.row[e]),
                    float(self.activations[e, self.centre[e]]),
                    ids,
                    [vocab.get(t, f"<{t}>") for t in ids],
                    self.activations[e, :n].tolist(),
                    int(self.centre[e]),
                )
            )
        return found


def read_batch(db: sqlite3.Connection, stream: np.ndarray, features: Sequence[int]) -> ExampleBatch:
    """The examples of ``features`` from an open atlas, with window tokens taken from ``stream`` [N] (the
    token id of every row)."""
    ids = np.unique(np.asarray(features, dtype=np.int64))
    marks = ",".join("?" * len(ids))
    wanted = ids.tolist()
    rows = db.execute(
        f"SELECT {BATCH_COLUMNS} FROM examples WHERE feature IN ({marks}) ORDER BY feature, kind, rank",
        wanted,
    ).fetchall()
    counts = dict(db.execute(f"SELECT id, count FROM features WHERE id IN ({marks})", wanted).fetchall())
    effects = db.execute(
        f"SELECT feature, rank, token FROM token_effects WHERE kind = 'output_top' AND feature IN ({marks})",
        wanted,
    ).fetchall()
    feature, kind, rank, bin_, row, activation, first, last, blobs = (
        zip(*rows, strict=True) if rows else ((),) * 9
    )
    owner = np.searchsorted(ids, np.asarray(feature, dtype=np.int64))
    first_row = np.asarray(first, dtype=np.int64)
    length = np.asarray(last, dtype=np.int64) - first_row + 1
    width = int(length.max()) if len(length) else 0
    valid = np.arange(width) < length[:, None]
    tokens = np.where(valid, stream[np.minimum(first_row[:, None] + np.arange(width), len(stream) - 1)], -1)
    activations = np.zeros(valid.shape)
    stored = np.array([blob is not None for blob in blobs], dtype=bool)
    if stored.any():
        values = np.frombuffer(b"".join(blob for blob in blobs if blob is not None), BLOB_DTYPE)
        activations[valid & stored[:, None]] = values
    centre_row = np.asarray(row, dtype=np.int64)
    activations[np.arange(len(rows)), centre_row - first_row] = np.asarray(activation, dtype=np.float64)
    width_top = 1 + max((r for _, r, _ in effects), default=-1)
    output_top = np.full((len(ids), width_top), -1, dtype=np.int64)
    for f, r, token in effects:
        output_top[np.searchsorted(ids, f), r] = token
    return ExampleBatch(
        features=ids,
        counts=np.array([counts.get(f, 0) for f in wanted], dtype=np.int64),
        output_top=output_top,
        owner=owner,
        kind=np.array([EXAMPLE_KINDS.index(k) for k in kind], dtype=np.int64),
        rank=np.asarray(rank, dtype=np.int64),
        bin=np.array([-1 if b is None else b for b in bin_], dtype=np.int64),
        row=centre_row,
        first=first_row,
        length=length,
        tokens=tokens,
        activations=activations,
    )
