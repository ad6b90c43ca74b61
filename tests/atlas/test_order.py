"""The recommended order (the first screen of `featurelens show` and the web app) on an atlas whose feature
densities and explanation scores are planted: the best-explained features of the middle band come first,
the densest tenth, the rarely firing and the dead ones after."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from featurelens.atlas import Atlas, AtlasSettings
from tests.atlas.conftest import (
    BY_DENSITY,
    COUNTS,
    DEAD_LATENTS,
    DENSE_LATENTS,
    RARE_LATENT,
    RECOMMENDED,
    plant_scores,
    planted_atlas,
    varied_tokens,
)
from tests.cli.test_cli import featurelens

SETTINGS = AtlasSettings(top_k=6, before=4, after=2, quantile_bins=4, per_bin=3, negatives=5)


@pytest.fixture(scope="module")
def atlases(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    """The planted atlas twice: unexplained, and with the planted explanation scores."""
    root = tmp_path_factory.mktemp("order")
    plain = planted_atlas(root, tiny_model_dir, SETTINGS, tokens=varied_tokens())
    explained = shutil.copy(plain, root / "explained.sqlite")
    plant_scores(explained)
    return {"plain": plain, "explained": explained}


def test_the_planted_densities_are_what_the_order_is_tested_on(atlases: dict[str, Path]) -> None:
    with Atlas.open(atlases["plain"]) as atlas:
        counts = {f.id: f.count for f in atlas.features(sort="id", descending=False, limit=len(atlas))}
        assert counts == {j: COUNTS.get(j, 0) for j in range(len(atlas))}
        assert atlas.dense_cut() == COUNTS[2] / atlas.meta["tokens"]
        edges, histogram, dead = atlas.density_histogram(per_decade=5)
        logs = np.log10([n / atlas.meta["tokens"] for n in COUNTS.values()])
        assert edges[0] == np.floor(logs.min()) and edges[-1] == np.ceil(logs.max())
        assert histogram == np.histogram(logs, bins=edges)[0].tolist() and dead == len(DEAD_LATENTS)


def test_recommended_puts_the_best_explained_middle_band_first(atlases: dict[str, Path]) -> None:
    with Atlas.open(atlases["explained"]) as atlas:
        order = [f.id for f in atlas.features(sort="recommended", limit=len(atlas))]
        assert order == RECOMMENDED
        assert [f.explanation_score for f in atlas.features(sort="recommended", limit=3)] == [0.95, 0.9, 0.9]
        reverse = [f.id for f in atlas.features(sort="recommended", descending=False, limit=len(atlas))]
        assert reverse == [*DEAD_LATENTS, *RECOMMENDED[-4::-1]]  # ties (the dead) still by ascending id
        paged = [
            f.id
            for start in range(0, 32, 7)
            for f in atlas.features(sort="recommended", limit=7, offset=start)
        ]
        assert paged == RECOMMENDED
        assert "at least 10 times" in atlas.recommended_rule() and "densest 10%" in atlas.recommended_rule()


def test_without_explanations_the_band_comes_first_by_density(atlases: dict[str, Path]) -> None:
    with Atlas.open(atlases["plain"]) as atlas:
        order = [f.id for f in atlas.features(sort="recommended", limit=len(atlas))]
    assert order == [*BY_DENSITY, RARE_LATENT, *DENSE_LATENTS, *DEAD_LATENTS]


def listed_ids(stdout: str) -> list[int]:
    """The feature ids of the overview's table, in the order printed (rows start with an id)."""
    return [int(m) for m in re.findall(r"^\s*(\d+)\s+\d+\.\d+%", stdout, flags=re.MULTILINE)]


def test_show_lists_recommended_features_first_and_the_densest_on_request(atlases: dict[str, Path]) -> None:
    result = featurelens("show", str(atlases["explained"]))
    assert result.returncode == 0, result.stderr
    assert "recommended features" in result.stdout and "recommended order:" in result.stdout
    assert listed_ids(result.stdout) == RECOMMENDED[:10]

    densest = featurelens("show", str(atlases["explained"]), "--sort", "density", "--limit", "5")
    assert densest.returncode == 0, densest.stderr
    assert "densest features" in densest.stdout
    assert listed_ids(densest.stdout) == [0, 1, 2, 27, 26]

    last = featurelens("show", str(atlases["explained"]), "--order", "asc", "--limit", "3")
    assert "least recommended features" in last.stdout and listed_ids(last.stdout) == list(DEAD_LATENTS)
