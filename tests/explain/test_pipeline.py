"""Explaining a planted atlas (latent j fires exactly on token j): known answers, nulls, resumption, and
the local-model path end to end on a tiny random model."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoConfig, AutoModel

from featurelens.atlas import Atlas, AtlasSettings, Context, Feature
from featurelens.explain import ClientError, ExplainJob, explain_atlas
from featurelens.explain.pipeline import ExplainError, split_examples
from featurelens.explain.scoring import detection, keyword_asker, patterns, word
from tests.atlas.conftest import WIDTH, planted_atlas
from tests.conftest import build_tiny_tokenizer
from tests.explain.conftest import Behaviour

SETTINGS = AtlasSettings(top_k=6, before=4, after=2, quantile_bins=5, per_bin=4, negatives=10)


def by_kind(feature: Feature) -> dict[str, list[Context]]:
    return {"top": feature.top, "quantile": feature.quantiles, "negative": feature.negatives}


@pytest.fixture(scope="module")
def atlas_path(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("explain")
    return planted_atlas(root, tiny_model_dir, SETTINGS)


def test_baseline_names_the_planted_token_and_scores_far_above_a_shuffled_explanation(
    atlas_path: Path,
) -> None:
    summary = explain_atlas(ExplainJob(str(atlas_path), features="all"))
    assert summary.explained == {"baseline": WIDTH}
    with Atlas.open(atlas_path) as atlas:
        vocab = atlas.vocab()
        own, shuffled = [], []
        for j in range(3, WIDTH):  # 0..2 are the tokenizer's special tokens
            feature = atlas.feature(j)
            (explanation,) = feature.explanations
            assert explanation.method == "baseline" and explanation.scorer == "keyword"
            assert word(vocab[j]) in {pattern.word for pattern in patterns(explanation.text)}
            own.append(explanation.detection_balanced_accuracy)
            other = atlas.feature(3 + (j - 3 + 7) % (WIDTH - 3))
            held = split_examples(by_kind(other), SETTINGS.top_k)
            shuffled.append(
                detection(keyword_asker, explanation.text, held.activating, held.silent, 0).balanced_accuracy
            )
        assert min(own) >= 0.9
        assert abs(float(np.mean(shuffled)) - 0.5) < 0.1
        assert atlas.search(explanation.text.split('"')[1])  # explanations are searchable


def test_a_rerun_only_does_what_is_missing(atlas_path: Path) -> None:
    explain_atlas(ExplainJob(str(atlas_path), features="3-8"))
    again = explain_atlas(ExplainJob(str(atlas_path), features="3-8"))
    assert again.already_done == 6 and again.explained == {}


def test_the_local_model_explains_and_scores_end_to_end(atlas_path: Path, tiny_model_dir: Path) -> None:
    job = ExplainJob(
        str(atlas_path), explainer="local", model=str(tiny_model_dir), features="5,6", max_tokens=8
    )
    summary = explain_atlas(job)
    method = f"local:{tiny_model_dir}"
    assert summary.explained.get(method, 0) + sum(summary.skipped.values()) == 2
    with Atlas.open(atlas_path) as atlas:
        for feature in (5, 6):
            by_method = {e.method: e for e in atlas.feature(feature).explanations}
            assert by_method["baseline"].scorer == method  # the baseline is scored by the same model
            for explanation in by_method.values():
                assert 0.0 <= (explanation.detection_auroc or 0.0) <= 1.0
                assert (
                    explanation.detection_n
                    == len(split_examples(by_kind(atlas.feature(feature)), 10).activating) + 10
                )
    cached = explain_atlas(
        ExplainJob(str(atlas_path), explainer="local", model=str(tiny_model_dir), features="5,6")
    )
    # explained features are kept; skips (a random tiny model's replies loop) are retried
    assert cached.already_done == summary.explained.get(method, 0)


def test_an_unreachable_endpoint_stops_the_run_but_keeps_finished_work(atlas_path: Path) -> None:
    job = ExplainJob(
        str(atlas_path),
        explainer="openai",
        base_url="http://127.0.0.1:9/v1",
        api_model="m",
        retries=0,
        features="10-20",
        timeout=2,
    )
    with pytest.raises(ExplainError, match=r"failed on the first 5 features.*unreachable"):
        explain_atlas(job)
    with Atlas.open(atlas_path) as atlas:
        assert all(any(e.method == "baseline" for e in atlas.feature(f).explanations) for f in range(10, 15))


def test_a_model_that_cannot_generate_is_refused_in_one_line(atlas_path: Path, tmp_path: Path) -> None:
    encoder = tmp_path / "distilbert"  # an encoder without a causal LM head
    config = AutoConfig.for_model("distilbert", vocab_size=96, dim=32, hidden_dim=64, n_layers=2, n_heads=4)
    AutoModel.from_config(config).save_pretrained(encoder)
    build_tiny_tokenizer().save_pretrained(encoder)
    with pytest.raises(ClientError, match="cannot generate text"):
        explain_atlas(ExplainJob(str(atlas_path), explainer="local", model=str(encoder), features="3"))
    with pytest.raises(ExplainError, match="--features"):
        explain_atlas(ExplainJob(str(atlas_path), features="top:x"))
    with pytest.raises(ExplainError, match="needs --base-url"):
        ExplainJob(str(atlas_path), explainer="openai")


def test_a_looping_explainer_is_recorded_as_a_skip_never_shown(
    atlas_path: Path, endpoint: tuple[str, Behaviour]
) -> None:
    url, behaviour = endpoint
    behaviour.mode = "loop"
    job = ExplainJob(str(atlas_path), explainer="openai", base_url=url, api_model="m", features="30,31")
    summary = explain_atlas(job)
    assert not any(count for method, count in summary.explained.items() if method.startswith("openai"))
    with Atlas.open(atlas_path) as atlas, sqlite3.connect(atlas_path) as raw:
        for feature in (30, 31):
            methods = {e.method for e in atlas.feature(feature).explanations}
            assert methods == {"baseline"}  # the baseline is kept; the loop is not stored
        reasons = dict(raw.execute("SELECT feature, reason FROM explanation_skips WHERE feature IN (30, 31)"))
    assert set(reasons) == {30, 31} and all("repeats itself" in reason for reason in reasons.values())
