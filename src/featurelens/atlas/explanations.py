"""Explanations stored in an atlas: the records, and a writer that adds them in place, a few features per
transaction (so an interrupted `featurelens explain` keeps what it finished and the file stays an atlas)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from featurelens.atlas.schema import EXPLANATIONS_DDL


@dataclass(frozen=True)
class Explanation:
    """One explanation of one feature and its scores on held-out examples (None where not measured)."""

    feature: int
    method: str
    model: str
    text: str
    scorer: str
    detection_balanced_accuracy: float | None
    detection_auroc: float | None
    detection_auroc_low: float | None
    detection_auroc_high: float | None
    detection_n: int
    detection_n_positive: int
    fuzzing_balanced_accuracy: float | None
    fuzzing_auroc: float | None
    fuzzing_auroc_low: float | None
    fuzzing_auroc_high: float | None
    fuzzing_n: int
    fuzzing_n_positive: int
    prompt_hash: str
    seconds: float
    created: str


COLUMNS = [field.name for field in fields(Explanation)]


def read_explanations(db: sqlite3.Connection, feature: int) -> list[Explanation]:
    """The feature's explanations (none when the atlas has never been explained)."""
    try:
        rows = db.execute(
            f"SELECT {', '.join(COLUMNS)} FROM explanations WHERE feature = ? ORDER BY method", (feature,)
        ).fetchall()
    except sqlite3.OperationalError:  # no explanations table yet
        return []
    return [Explanation(*row) for row in rows]


class ExplanationWriter:
    """Adds explanations and recorded skips to an existing atlas (opened read-write)."""

    def __init__(self, path: Path) -> None:
        from featurelens.atlas.reader import Atlas

        Atlas.open(path).close()  # refuses anything that is not a complete atlas
        self._db = sqlite3.connect(path)
        self._db.execute(
            "PRAGMA synchronous = OFF"
        )  # a killed run still rolls back cleanly; results recompute
        self._db.executescript(EXPLANATIONS_DDL)
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def done(self, method: str) -> set[int]:
        """Features that already have an explanation by ``method``."""
        rows = self._db.execute("SELECT feature FROM explanations WHERE method = ?", (method,))
        return {feature for (feature,) in rows}

    def save(self, results: Sequence[tuple[int, list[Explanation], dict[str, str]]]) -> None:
        """Store features' explanations and skips (by method), and refresh their search text, in one
        transaction: each result is (feature, explanations, skips)."""
        marks = ", ".join("?" * len(COLUMNS))
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with self._db:
            for feature, explanations, skips in results:
                self._db.executemany(
                    f"INSERT OR REPLACE INTO explanations ({', '.join(COLUMNS)}) VALUES ({marks})",
                    [tuple(getattr(e, name) for name in COLUMNS) for e in explanations],
                )
                self._db.executemany(
                    "DELETE FROM explanation_skips WHERE feature = ? AND method = ?",
                    [(feature, e.method) for e in explanations],
                )
                self._db.executemany(
                    "INSERT OR REPLACE INTO explanation_skips VALUES (?, ?, ?, ?)",
                    [(feature, method, reason, now) for method, reason in skips.items()],
                )
                texts = self._db.execute("SELECT text FROM explanations WHERE feature = ?", (feature,))
                self._db.execute(
                    "UPDATE search SET explanations = ? WHERE rowid = ?",
                    (" ".join(t for (t,) in texts), feature),
                )
