"""Read an atlas file: ``fl.Atlas.open(path)``, typed feature records, full-text search."""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from featurelens.atlas.explanations import Explanation, read_explanations
from featurelens.atlas.schema import BLOB_DTYPE, FORMAT, VERSION
from featurelens.errors import AtlasError
from featurelens.paths import RemotePath, location, readable

TABLES = ("features", "examples", "tokens", "vocab", "token_effects", "neighbours")
SORTABLE = ("id", "density", "count", "mean_activation", "max_activation", "explanation_score")


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
class TokenScore:
    token: int
    text: str
    value: float


@dataclass(frozen=True)
class Neighbour:
    """Another feature: Jaccard index (co-occurring, with ``count`` rows both fired) or cosine (nearest)."""

    feature: int
    value: float
    count: int | None


@dataclass(frozen=True)
class Histogram:
    """Counts of non-zero activations per bin; ``edges`` has one more entry than ``counts``."""

    edges: list[float]
    counts: list[int]


@dataclass(frozen=True)
class FeatureSummary:
    """One feature in a list; ``explanation`` is its best-scoring one (by detection AUROC), if any."""

    id: int
    count: int
    density: float
    mean_activation: float | None
    max_activation: float | None
    explanation: str | None
    explanation_score: float | None


@dataclass(frozen=True)
class Feature(FeatureSummary):
    """Everything the atlas knows about one feature (see :mod:`featurelens.atlas.schema`)."""

    histogram: Histogram
    top_tokens: list[tuple[str, int]]
    top: list[Context]
    quantiles: list[Context]
    negatives: list[Context]
    output_top: list[TokenScore]
    output_bottom: list[TokenScore]
    input_top: list[TokenScore]
    cooccurring: list[Neighbour]
    nearest: list[Neighbour]
    explanations: list[Explanation]


class Atlas:
    """A finished atlas, opened read-only. ``len(atlas)`` is its number of features."""

    def __init__(self, path: Path, connection: sqlite3.Connection, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta
        self._db = connection
        self.n_features = int(meta["d_latent"])
        self._edges: list[float] = meta["histogram_edges"]
        self._stream: np.ndarray | None = None
        self._vocab: dict[int, str] | None = None

    @classmethod
    def open(cls, path: str | Path | RemotePath) -> Atlas:
        """Open ``path``; anything that is not a complete featurelens atlas raises :class:`AtlasError`.

        ``path`` may be an fsspec URL: SQLite cannot read a remote file, so the atlas is downloaded to the
        local cache (once per version of the file) and opened there; ``atlas.path`` is that local copy.
        """
        source = location(path)
        if not source.is_file():
            raise AtlasError(f"{source} does not exist or is not a file; build one with `featurelens atlas`")
        path = readable(source)
        try:
            connection = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
            )
            rows = connection.execute("SELECT key, value FROM meta").fetchall()
            meta = {key: json.loads(value) for key, value in rows}
        except (sqlite3.DatabaseError, json.JSONDecodeError) as error:
            raise AtlasError(f"{source} is not a featurelens atlas ({error})") from None
        if meta.get("format") != FORMAT or not meta.get("complete"):
            connection.close()
            raise AtlasError(
                f"{source} is not a complete featurelens atlas (no {FORMAT} meta, or unfinished)"
            )
        if meta.get("version") != VERSION:
            connection.close()
            raise AtlasError(
                f"{source} is atlas version {meta.get('version')}; this featurelens reads {VERSION}"
            )
        return cls(path, connection, meta)

    def __len__(self) -> int:
        return self.n_features

    def __enter__(self) -> Atlas:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def check_id(self, feature: Any) -> int:
        """``feature`` as an int in range, else :class:`AtlasError` saying what is accepted."""
        if isinstance(feature, bool) or not isinstance(feature, int | np.integer):
            raise AtlasError(f"feature id must be an integer, got {feature!r}")
        if not 0 <= feature < self.n_features:
            raise AtlasError(
                f"feature {feature} is out of range: this atlas has {self.n_features} features "
                f"(0..{self.n_features - 1})"
            )
        return int(feature)

    def feature(self, feature: int) -> Feature:
        """The full record of one feature."""
        feature = self.check_id(feature)
        row = self._db.execute("SELECT * FROM features WHERE id = ?", (feature,)).fetchone()
        _, count, density, mean, maximum, hist_first, hist_counts, top_tokens = row
        counts = json.loads(hist_counts)
        first = hist_first or 0
        examples = self._examples(feature)
        effects = self._token_effects(feature)
        neighbours = self._neighbours(feature)
        explanations = read_explanations(self._db, feature)
        scored = [e for e in explanations if e.detection_auroc is not None]
        best = max(scored, key=lambda e: e.detection_auroc or 0.0) if scored else None
        return Feature(
            id=feature,
            count=count,
            density=density,
            mean_activation=mean,
            max_activation=maximum,
            explanation=best.text if best else None,
            explanation_score=best.detection_auroc if best else None,
            histogram=Histogram(self._edges[first : first + len(counts) + 1] if counts else [], counts),
            top_tokens=[(text, n) for text, n in json.loads(top_tokens)],
            top=examples["top"],
            quantiles=examples["quantile"],
            negatives=examples["negative"],
            output_top=effects["output_top"],
            output_bottom=effects["output_bottom"],
            input_top=effects["input_top"],
            cooccurring=neighbours["cooccurring"],
            nearest=neighbours["nearest"],
            explanations=explanations,
        )

    def _examples(self, feature: int) -> dict[str, list[Context]]:
        found: dict[str, list[Context]] = {"top": [], "quantile": [], "negative": []}
        rows = self._db.execute(
            "SELECT kind, rank, bin, row, activation, first_row, last_row, activations FROM examples "
            "WHERE feature = ? ORDER BY kind, rank",
            (feature,),
        ).fetchall()
        for kind, rank, bin_, row, activation, first, last, blob in rows:
            ids = [
                t
                for (t,) in self._db.execute(
                    "SELECT token FROM tokens WHERE row BETWEEN ? AND ? ORDER BY row", (first, last)
                )
            ]
            values = np.frombuffer(blob, BLOB_DTYPE).tolist() if blob is not None else [0.0] * len(ids)
            values[row - first] = activation  # the exact value (the blob holds float16)
            found[kind].append(
                Context(kind, rank, bin_, row, activation, ids, self._texts(ids), values, row - first)
            )
        return found

    def _texts(self, ids: list[int]) -> list[str]:
        marks = ",".join("?" * len(set(ids)))
        texts = dict(
            self._db.execute(f"SELECT token, text FROM vocab WHERE token IN ({marks})", list(set(ids)))
        )
        return [texts.get(i, f"<{i}>") for i in ids]

    def _token_effects(self, feature: int) -> dict[str, list[TokenScore]]:
        found: dict[str, list[TokenScore]] = {"output_top": [], "output_bottom": [], "input_top": []}
        rows = self._db.execute(
            "SELECT kind, token, value FROM token_effects WHERE feature = ? ORDER BY kind, rank", (feature,)
        ).fetchall()
        texts = self._texts([token for _, token, _ in rows]) if rows else []
        for (kind, token, value), text in zip(rows, texts, strict=True):
            found[kind].append(TokenScore(token, text, value))
        return found

    def _neighbours(self, feature: int) -> dict[str, list[Neighbour]]:
        found: dict[str, list[Neighbour]] = {"cooccurring": [], "nearest": []}
        rows = self._db.execute(
            "SELECT kind, other, value, count FROM neighbours WHERE feature = ? ORDER BY kind, rank",
            (feature,),
        )
        for kind, other, value, count in rows:
            found[kind].append(Neighbour(other, value, count))
        return found

    def features(
        self, *, sort: str = "density", descending: bool = True, limit: int = 50, offset: int = 0
    ) -> list[FeatureSummary]:
        """One page of feature summaries sorted by ``sort`` (one of :data:`SORTABLE`)."""
        if sort not in SORTABLE:
            raise AtlasError(f"cannot sort by {sort!r}; choose one of {', '.join(SORTABLE)}")
        if limit < 0 or offset < 0:
            raise AtlasError(f"limit and offset must be >= 0, got {limit} and {offset}")
        direction = "DESC" if descending else "ASC"
        explained = self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'explanations'").fetchone()
        best = (
            "(SELECT feature, text, MAX(detection_auroc) AS score FROM explanations GROUP BY feature)"
            if explained
            else "(SELECT NULL AS feature, NULL AS text, NULL AS score)"
        )
        column = "e.score" if sort == "explanation_score" else f"f.{sort}"
        rows = self._db.execute(
            "SELECT f.id, f.count, f.density, f.mean_activation, f.max_activation, e.text, e.score "
            f"FROM features f LEFT JOIN {best} e ON e.feature = f.id "
            f"ORDER BY {column} IS NULL, {column} {direction}, f.id LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [FeatureSummary(*row) for row in rows]

    def token_counts(self) -> dict[int, int]:
        """How often each token id occurs among the mapped tokens (the background for token lift)."""
        return dict(self._db.execute("SELECT token, COUNT(*) FROM tokens GROUP BY token").fetchall())

    def vocab(self) -> dict[int, str]:
        """Decoded text of every token id the atlas mentions (read once)."""
        if self._vocab is None:
            self._vocab = dict(self._db.execute("SELECT token, text FROM vocab").fetchall())
        return self._vocab

    def table(self, name: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Column names and every row of one table of :mod:`featurelens.atlas.schema` (for exports)."""
        if name not in TABLES:
            raise AtlasError(f"unknown atlas table {name!r}; tables: {', '.join(TABLES)}")
        cursor = self._db.execute(f"SELECT * FROM {name}")
        return [column[0] for column in cursor.description], cursor.fetchall()

    def search(self, query: str, limit: int = 20) -> list[int]:
        """Feature ids whose top tokens, output tokens or explanations match ``query``, best first (bm25).

        Every word matches as a prefix (``date`` finds ``dates``); features matching more words rank higher.
        """
        words = re.findall(r"\w+", query)
        if not words:
            return []
        match = " OR ".join(f'"{word}"*' for word in words)
        rows = self._db.execute(
            "SELECT rowid FROM search WHERE search MATCH ? ORDER BY rank LIMIT ?", (match, max(limit, 0))
        )
        return [feature for (feature,) in rows]
