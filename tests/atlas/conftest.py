"""A planted store and dictionary whose atlas is known exactly: latent j fires only on token j."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from featurelens.capture.store import FORMAT, ShardRows, StoreWriter
from featurelens.dictionaries import TopKDictionary

HOOK = "layers.1.resid_post"
WIDTH, SEQ, N_SEQ = 32, 64, 40


def magnitude(token: int) -> float:
    return 1.0 + token / 4  # exact in binary


def plant(
    root: Path,
    tiny_model_dir: Path,
    tokens: np.ndarray | None = None,
    latent_of: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, Any]:
    """A store where the activation of a row whose latent is j >= 0 is magnitude(j) * e_j (others: -0.5
    everywhere), and a TopK k=1 dictionary with identity encoder and decoder: latent j fires exactly on
    those rows. By default ``tokens`` [N_SEQ, SEQ - 1] are random below 48 and ``latent_of`` (tokens of one
    sequence [SEQ - 1] -> latent per row, -1 for none) maps token t < 32 to latent t."""
    if tokens is None:
        tokens = np.random.default_rng(0).integers(0, 48, size=(N_SEQ, SEQ - 1)).astype(np.int32)
    latents = np.stack([(latent_of or _own_token)(sequence) for sequence in tokens]).reshape(-1)
    flat = tokens.reshape(-1)
    acts = np.full((len(flat), WIDTH), -0.5, dtype=np.float32)
    planted_rows = np.flatnonzero(latents >= 0)
    acts[planted_rows] = 0.0
    acts[planted_rows, latents[planted_rows]] = [magnitude(t) for t in latents[planted_rows]]
    positions = np.tile(np.arange(1, SEQ, dtype=np.int32), N_SEQ)
    manifest = {
        "format": FORMAT,
        "model": {"spec": str(tiny_model_dir)},
        "hooks": {HOOK: {"width": WIDTH}},
        "dtype": "float32",
        "seq_len": SEQ,
        "corpus": {"spec": "bundled"},
        "config": {},
    }
    writer = StoreWriter(root / "acts", manifest)
    rows = ShardRows(flat, np.zeros_like(flat), positions, {HOOK: acts}, {HOOK: np.linalg.norm(acts, axis=1)})
    writer.write_shard(0, rows)
    writer.finish(1, 10.0)
    dictionary = TopKDictionary(WIDTH, WIDTH, k=1, hook_in=HOOK)
    with torch.no_grad():
        for weight in (dictionary.W_enc, dictionary.W_dec):
            weight.copy_(torch.eye(WIDTH))
        dictionary.b_enc.zero_()
        dictionary.b_dec.zero_()
    dictionary.save(root / "sae")
    return {"root": root, "tokens": flat, "model": str(tiny_model_dir)}


def _own_token(sequence: np.ndarray) -> np.ndarray:
    return np.where(sequence < WIDTH, sequence, -1)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Any]:
    return plant(tmp_path_factory.mktemp("planted"), tiny_model_dir)


def planted_atlas(root: Path, tiny_model_dir: Path, settings: Any, **planting: Any) -> Path:
    """The planted store and dictionary under ``root`` (``planting``: see :func:`plant`), mapped into
    ``root/atlas.sqlite``."""
    from featurelens.atlas import AtlasJob, build_atlas

    planted = plant(root, tiny_model_dir, **planting)
    out = root / "atlas.sqlite"
    build_atlas(
        AtlasJob(
            str(root / "sae"), str(out), acts=str(root / "acts"), model=planted["model"], settings=settings
        )
    )
    return out
