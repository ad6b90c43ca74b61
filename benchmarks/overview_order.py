"""The overview's first query: a page of ``sort="recommended"`` (the default) against ``sort="density"``
(the default before it), on synthetic atlases of 9,216 and 1,000,000 features.

Each atlas is an SQLite file with the real schema: a features table of log-uniform densities (1e-6..0.3,
5% dead) and, for every live feature, one explanation with a uniform detection AUROC. Timed, alternating
the two orders A B A B, best of ``--repeats``: the first page (50 rows) on a freshly opened atlas (for
recommended this includes reading the density column for the dense cut), the same page again (the
column is then cached), and the page at offset n/2; and the /api/densities histogram as it was read
before (every feature summary) and now (the density column), each on a freshly opened atlas.
Run from the repository root::

    PYTHONPATH=$PWD/src:$PWD/benchmarks python benchmarks/overview_order.py
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from machine import cpu_name, vector_flags

from featurelens.atlas import Atlas
from featurelens.atlas.schema import DDL, EXPLANATIONS_DDL, FORMAT, VERSION

TOKENS = 10_000_000


def synthetic_atlas(path: Path, n: int, seed: int = 0) -> Path:
    """An atlas of ``n`` features with random densities and explanation scores (nothing else filled)."""
    rng = np.random.default_rng(seed)
    counts = np.round(TOKENS * 10 ** rng.uniform(-6, np.log10(0.3), n)).astype(np.int64)
    counts[rng.random(n) < 0.05] = 0
    with sqlite3.connect(path) as db:
        db.executescript(DDL + EXPLANATIONS_DDL)
        meta = {"format": FORMAT, "version": VERSION, "complete": True, "d_latent": n, "tokens": TOKENS}
        meta["histogram_edges"] = []
        db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        db.executemany(
            "INSERT INTO features VALUES (?, ?, ?, ?, ?, NULL, '[]', '[]')",
            ((i, int(c), c / TOKENS, 1.0 if c else None, 2.0 if c else None) for i, c in enumerate(counts)),
        )
        scores = rng.uniform(0.4, 1.0, n)
        db.executemany(
            "INSERT INTO explanations (feature, method, model, text, scorer, detection_auroc, prompt_hash, "
            "seconds, created) VALUES (?, 'baseline', '', ?, 'keyword', ?, '', 0, '')",
            ((int(i), f"explanation {i}", float(scores[i])) for i in np.flatnonzero(counts)),
        )
    return path


def best_of(repeats: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def fresh_page(path: Path, sort: str) -> None:
    with Atlas.open(path) as atlas:
        atlas.features(sort=sort, limit=50)


def time_order(path: Path, sort: str, repeats: int) -> list[float]:
    """Seconds: the first page on a fresh atlas, the first page again, the page at n/2."""
    with Atlas.open(path) as atlas:
        atlas.features(sort=sort, limit=50)
        return [
            best_of(repeats, partial(fresh_page, path, sort)),
            best_of(repeats, partial(atlas.features, sort=sort, limit=50)),
            best_of(repeats, partial(atlas.features, sort=sort, limit=50, offset=len(atlas) // 2)),
        ]


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--sizes", default="9216,1000000")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"# {cpu_name()}; {vector_flags()}; SQLite {sqlite3.sqlite_version}")
    print("| features | order | first page, fresh (ms) | first page again (ms) | page at n/2 (ms) |")
    print("|---:|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for n in (int(size) for size in args.sizes.split(",")):
            path = synthetic_atlas(Path(folder) / f"{n}.sqlite", n)
            best: dict[str, list[float]] = {}
            for _ in range(2):  # A B A B
                for sort in ("density", "recommended"):
                    timed = time_order(path, sort, args.repeats)
                    best[sort] = [min(pair) for pair in zip(best.get(sort, timed), timed, strict=True)]
            for sort, row in best.items():
                print(f"| {n:,} | {sort} | " + " | ".join(f"{1000 * t:.1f}" for t in row) + " |")
            old, new = [], []
            for _ in range(2):  # A B A B: the density histogram from every summary (before), from the column
                with Atlas.open(path) as atlas:
                    old.append(best_of(1, partial(atlas.features, limit=len(atlas))))
                with Atlas.open(path) as atlas:
                    new.append(best_of(1, partial(atlas.density_histogram, per_decade=5)))
            print(f"| {n:,} | /api/densities: every summary (before) | {1000 * min(old):.0f} | | |")
            print(f"| {n:,} | /api/densities: the density column (now) | {1000 * min(new):.0f} | | |")


if __name__ == "__main__":
    main()
