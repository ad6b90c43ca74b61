"""`featurelens explain` as a user runs it: a real subprocess over a planted atlas."""

from __future__ import annotations

from pathlib import Path

import pytest

from featurelens.atlas import Atlas, AtlasSettings
from tests.atlas.conftest import planted_atlas
from tests.cli.test_cli import assert_one_line_error, featurelens


@pytest.fixture(scope="module")
def atlas_path(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("explain-cli")
    settings = AtlasSettings(top_k=6, before=4, after=2, quantile_bins=5, per_bin=4, negatives=10)
    return planted_atlas(root, tiny_model_dir, settings)


def test_explain_stores_scored_baselines_and_a_rerun_reuses_them(atlas_path: Path) -> None:
    result = featurelens("explain", str(atlas_path), "--features", "top:10")
    assert result.returncode == 0, result.stderr
    assert "baseline" in result.stdout and "features/min" in result.stdout
    with Atlas.open(atlas_path) as atlas:
        explained = [f for f in atlas.features(limit=32) if f.explanation is not None]
        assert len(explained) == 10 and all((f.explanation_score or 0) >= 0.9 for f in explained)
    again = featurelens("explain", str(atlas_path), "--features", "top:10")
    assert "10 of 10 features were already explained" in again.stdout


def test_bad_explain_options_are_one_line(atlas_path: Path, tmp_path: Path) -> None:
    assert_one_line_error(featurelens("explain", str(atlas_path), "--features", "top:x"), "--features")
    assert_one_line_error(featurelens("explain", str(atlas_path), "--explainer", "openai"), "--base-url")
    assert_one_line_error(featurelens("explain", str(tmp_path / "none.sqlite")), "does not exist")
