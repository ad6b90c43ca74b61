"""Read an atlas file: ``fl.Atlas.open(path)``, typed feature records, full-text search."""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from featurelens.atlas.batch import Context, ExampleBatch, read_batch
from featurelens.atlas.explanations import Explanation, read_explanations
from featurelens.atlas.schema import FORMAT, VERSION
from featurelens.errors import AtlasError
from featurelens.paths import RemotePath, location, readable

TABLES = ("features", "examples", "tokens", "vocab", "token_effects", "neighbours")
SORTABLE = (
    "recommended",
    "id",
    "density",
    "count",
    "mean_activation",
    "max_activation",
    "explanation_score",
)
RECOMMENDED_MIN_COUNT = 10  # fewer firings leave too few examples to judge (or score) a feature by
RECOMMENDED_DENSE_SHARE = 0.1  # the densest tenth of the features that fired: mostly punctuation, spaces


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
        self._densities: np.ndarray | None = None

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
        return self.examples([feature]).contexts(0, self.vocab())

    def examples(self, features: Sequence[int]) -> ExampleBatch:
        """Every example of ``features`` as padded arrays, read in one query (for work on many features)."""
        for feature in features:
            self.check_id(feature)
        return read_batch(self._db, self.token_stream(), features)

    def token_stream(self) -> np.ndarray:
        """[N] the token id of every mapped row, in stream order (read once)."""
        if self._stream is None:
            rows = self._db.execute("SELECT token FROM tokens ORDER BY row")
            self._stream = np.fromiter((token for (token,) in rows), dtype=np.int64)
        return self._stream

    def _token_effects(self, feature: int) -> dict[str, list[TokenScore]]:
        found: dict[str, list[TokenScore]] = {"output_top": [], "output_bottom": [], "input_top": []}
        rows = self._db.execute(
            "SELECT kind, token, value FROM token_effects WHERE feature = ? ORDER BY kind, rank", (feature,)
        ).fetchall()
        vocab = self.vocab()
        for kind, token, value in rows:
            found[kind].append(TokenScore(token, vocab.get(token, f"<{token}>"), value))
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

    def densities(self) -> np.ndarray:
        """[n_features] float64: every feature's density, by id (read once: the atlas never changes)."""
        if self._densities is None:
            rows = self._db.execute("SELECT density FROM features ORDER BY id")
            self._densities = np.fromiter((d for (d,) in rows), dtype=np.float64)
        return self._densities

    def density_histogram(self, per_decade: int) -> tuple[list[float], list[int], int]:
        """Edges (log10 density: whole decades around the features that fired, ``per_decade`` bins each),
        counts of features per bin, and how many features never fired; no edges if none fired."""
        densities = self.densities()
        logs = np.log10(densities[densities > 0])
        if not len(logs):
            return [], [], len(densities)
        low = math.floor(logs.min())
        high = max(math.ceil(logs.max()), low + 1)
        n_bins = (high - low) * per_decade
        bins = np.minimum(n_bins - 1, ((logs - low) / (high - low) * n_bins).astype(np.int64))
        edges = [low + i * (high - low) / n_bins for i in range(n_bins + 1)]
        return edges, np.bincount(bins, minlength=n_bins).tolist(), len(densities) - len(logs)

    def dense_cut(self) -> float:
        """The density from which a feature counts as dense for ``sort="recommended"``: that of the
        ceil(:data:`RECOMMENDED_DENSE_SHARE` x n) th densest of the n features that fired (inf if none did).
        """
        fired = self.densities()[self.densities() > 0]
        if not len(fired):
            return math.inf
        rank = len(fired) - math.ceil(len(fired) * RECOMMENDED_DENSE_SHARE)
        return float(np.partition(fired, rank)[rank])

    def recommended_rule(self) -> str:
        """One line saying what ``sort="recommended"`` puts first on this atlas, with its numbers."""
        cut = self.dense_cut()
        if math.isinf(cut):
            return "no feature ever fired: by id"
        return (
            f"best-explained first among the features that fired at least {RECOMMENDED_MIN_COUNT} times and "
            f"on under {100 * cut:.3g}% of tokens; then those that fired fewer times, the densest "
            f"{RECOMMENDED_DENSE_SHARE:.0%} (from {100 * cut:.3g}%), and the dead"
        )

    def features(
        self, *, sort: str = "density", descending: bool = True, limit: int = 50, offset: int = 0
    ) -> list[FeatureSummary]:
        """One page of feature summaries sorted by ``sort`` (one of :data:`SORTABLE`), ties by id.

        ``recommended`` puts first what a researcher would look at first. Features fall in four groups,
        in this order: (0) the middle band, features that fired at least :data:`RECOMMENDED_MIN_COUNT`
        times and are less dense than :meth:`dense_cut` (so the densest tenth of the atlas, mostly
        punctuation and whitespace features, is never on the first screen); (1) features that fired, but
        fewer times than that; (2) the dense ones; (3) dead features (never fired). Within a group,
        features with a scored explanation come first, by their best explanation's detection AUROC, then
        the rest; then by density (more evidence first). ``descending=False`` reverses all that. Every order
        breaks its ties by ascending id.
        """
        if sort not in SORTABLE:
            raise AtlasError(f"cannot sort by {sort!r}; choose one of {', '.join(SORTABLE)}")
        if limit < 0 or offset < 0:
            raise AtlasError(f"limit and offset must be >= 0, got {limit} and {offset}")
        explained = self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'explanations'").fetchone()
        best = (
            "(SELECT feature, text, MAX(detection_auroc) AS score FROM explanations GROUP BY feature)"
            if explained
            else "(SELECT NULL AS feature, NULL AS text, NULL AS score)"
        )
        parameters: tuple[float | int, ...] = ()
        if sort == "recommended":
            group = (
                "CASE WHEN f.count = 0 THEN 3 WHEN f.density >= ? THEN 2 WHEN f.count < ? THEN 1 ELSE 0 END"
            )
            parameters = (self.dense_cut(), RECOMMENDED_MIN_COUNT)
            keys = [(group, False), ("e.score IS NULL", False), ("e.score", True), ("f.density", True)]
            order = ", ".join(f"{key} {'DESC' if down == descending else 'ASC'}" for key, down in keys)
        else:
            column = "e.score" if sort == "explanation_score" else f"f.{sort}"
            order = f"{column} IS NULL, {column} {'DESC' if descending else 'ASC'}"
        rows = self._db.execute(
            "SELECT f.id, f.count, f.density, f.mean_activation, f.max_activation, e.text, e.score "
            f"FROM features f LEFT JOIN {best} e ON e.feature = f.id "
            f"ORDER BY {order}, f.id LIMIT ? OFFSET ?",
            (*parameters, limit, offset),
        )
        return [FeatureSummary(*row) for row in rows]

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
