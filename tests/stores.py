"""Activation stores written directly from arrays: planted rows for tests of the stages that read stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featurelens.capture.store import FORMAT, ShardRows, StoreWriter


def write_rows_store(
    root: Path,
    tokens: np.ndarray,
    docs: np.ndarray,
    positions: np.ndarray,
    acts: dict[str, np.ndarray],
    model: str,
    seq_len: int,
) -> Path:
    """A finished store at ``root`` of rows [n] with activations hook -> float32 [n, width], written as two
    shards split at a sequence boundary (``seq_len`` rows per sequence)."""
    manifest = {
        "format": FORMAT,
        "model": {"spec": model},
        "hooks": {hook: {"width": x.shape[1]} for hook, x in acts.items()},
        "dtype": "float32",
        "seq_len": seq_len,
        "corpus": {"spec": "bundled"},
        "config": {"skip_positions": 0},
    }
    writer = StoreWriter(root, manifest)
    half = len(tokens) // 2 // seq_len * seq_len
    for index, part in enumerate((slice(0, half), slice(half, None))):
        shard = ShardRows(
            tokens[part],
            docs[part],
            positions[part],
            {hook: x[part] for hook, x in acts.items()},
            {hook: np.linalg.norm(x[part], axis=1) for hook, x in acts.items()},
        )
        writer.write_shard(index, shard)
    writer.finish(2, 10.0)
    return root
