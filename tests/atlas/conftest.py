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
    those rows. By default ``tokens`` [n_seq, SEQ - 1] are N_SEQ sequences of random ids below 48 and
    ``latent_of`` (tokens of one sequence [SEQ - 1] -> latent per row, -1 for none) maps token t < 32 to
    latent t."""
    if tokens is None:
        tokens = np.random.default_rng(0).integers(0, 48, size=(N_SEQ, SEQ - 1)).astype(np.int32)
    n_seq = len(tokens)
    latents = np.stack([(latent_of or _own_token)(sequence) for sequence in tokens]).reshape(-1)
    flat = tokens.reshape(-1)
    acts = np.full((len(flat), WIDTH), -0.5, dtype=np.float32)
    planted_rows = np.flatnonzero(latents >= 0)
    acts[planted_rows] = 0.0
    acts[planted_rows, latents[planted_rows]] = [magnitude(t) for t in latents[planted_rows]]
    positions = np.tile(np.arange(1, SEQ, dtype=np.int32), n_seq)
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


# An atlas whose recommended order is known: token (= latent) counts among 80 x 63 = 5,040 rows. Of the 29
# latents that fire, the three densest (0, 1, 2) are the densest tenth (ceil(2.9) = 3); 28 fires 4 times
# (under 10); 29..31 never fire; 3..27 fire 20, 25, ..., 140 times (the middle band).
DENSE_LATENTS, RARE_LATENT, DEAD_LATENTS = (0, 1, 2), 28, (29, 30, 31)
BAND_LATENTS = tuple(range(3, 28))
COUNTS = {0: 1500, 1: 900, 2: 600, RARE_LATENT: 4, **{j: 20 + 5 * (j - 3) for j in BAND_LATENTS}}
# Detection AUROCs planted as explanations: 5 and 20 tie (20 fires more often, so it comes first).
SCORES = {10: 0.95, 20: 0.90, 5: 0.90, 0: 0.99, RARE_LATENT: 1.0}

# The recommended order of that atlas once SCORES are planted (BY_DENSITY: the band, densest first).
BY_DENSITY = sorted(BAND_LATENTS, key=lambda j: -COUNTS[j])  # the band's counts are distinct
EXPLAINED = [10, 20, 5]  # by planted AUROC: 0.95, then the 0.90 tie broken by density (20 fires more)
RECOMMENDED = [
    *EXPLAINED,
    *[j for j in BY_DENSITY if j not in EXPLAINED],
    RARE_LATENT,
    *DENSE_LATENTS,  # 0 is explained (0.99), then 1 and 2 by density, which is their order anyway
    *DEAD_LATENTS,
]


def varied_tokens() -> np.ndarray:
    """[80, 63] token ids with each latent's count as in COUNTS; the 36 other rows are tokens 32..47."""
    filler = 80 * (SEQ - 1) - sum(COUNTS.values())
    flat = np.concatenate(
        [np.repeat(np.array(list(COUNTS)), list(COUNTS.values())), 32 + np.arange(filler) % 16]
    )
    return np.random.default_rng(1).permutation(flat).astype(np.int32).reshape(80, SEQ - 1)


def plant_scores(atlas: Path) -> None:
    """Store one explanation per feature of SCORES, with that detection AUROC."""
    from featurelens.atlas.explanations import Explanation, ExplanationWriter

    writer = ExplanationWriter(atlas)
    for feature, auroc in SCORES.items():
        scores = (0.9, auroc, auroc - 0.05, min(auroc + 0.05, 1.0), 20, 10)
        explanation = Explanation(
            feature,
            "planted",
            "none",
            f"planted {feature}",
            "keyword",
            *scores,
            *(None,) * 4,
            0,
            0,
            "",
            0,
            "",
        )
        writer.save([(feature, [explanation], {})])
    writer.close()
