"""Atlases built end to end from real stores and a real (tiny) HF model, against known answers."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import featurelens as fl
from featurelens.atlas import Atlas, AtlasJob, AtlasSettings, build_atlas
from featurelens.atlas.accumulate import HISTOGRAM_EDGES
from featurelens.atlas.write import partial_path
from featurelens.dictionaries import TopKDictionary
from featurelens.errors import AtlasError
from tests.atlas.conftest import HOOK, SEQ, WIDTH, magnitude

SETTINGS = AtlasSettings(
    top_k=6, before=4, after=2, quantile_bins=4, per_bin=3, negatives=5, chunk_tokens=300
)


def build(planted: dict[str, Any], out: Path, **overrides: Any) -> Path:
    fields = {
        "dictionary": str(planted["root"] / "sae"),
        "out": str(out),
        "acts": str(planted["root"] / "acts"),
        "model": planted["model"],
        "settings": SETTINGS,
        **overrides,
    }
    build_atlas(AtlasJob(**fields))
    return out


def test_planted_token_features_are_mapped_exactly(planted: dict[str, Any], tmp_path: Path) -> None:
    tokens = planted["tokens"]
    with Atlas.open(build(planted, tmp_path / "a.sqlite")) as atlas:
        assert len(atlas) == WIDTH and atlas.meta["tokens"] == len(tokens) and atlas.meta["source"] == "store"
        for j in range(WIDTH):
            feature = atlas.feature(j)
            count = int((tokens == j).sum())
            assert feature.count == count and feature.density == count / len(tokens)
            assert feature.max_activation == magnitude(j) and feature.mean_activation == magnitude(j)
            reference, _ = np.histogram([magnitude(j)], bins=HISTOGRAM_EDGES)
            first = int(np.flatnonzero(reference)[0])
            assert feature.histogram.counts == [count]
            assert feature.histogram.edges == HISTOGRAM_EDGES[first : first + 2]
            assert len(feature.top) == min(SETTINGS.top_k, count)
            assert len(feature.quantiles) == min(SETTINGS.samples, count)
            for context in feature.top + feature.quantiles:
                assert context.token_ids[context.centre] == j and context.activation == magnitude(j)
                assert (
                    context.token_ids
                    == tokens[context.row - context.centre :][: len(context.token_ids)].tolist()
                )
                expected = [magnitude(j) if t == j else 0.0 for t in context.token_ids]
                assert context.activations == expected
                sequence_start = context.row // (SEQ - 1) * (SEQ - 1)
                assert context.row - context.centre == max(sequence_start, context.row - SETTINGS.before)
            assert len(feature.negatives) == SETTINGS.negatives
            for context in feature.negatives:
                assert j not in context.token_ids
            assert feature.cooccurring == []  # k = 1: two latents never fire together
            assert feature.top_tokens[0][1] == len(feature.top)
        assert [f.id for f in atlas.features(sort="density", limit=3)] == [
            int(t) for t in np.argsort(-np.bincount(tokens, minlength=48)[:WIDTH], kind="stable")[:3]
        ]


def test_same_inputs_give_an_identical_atlas(planted: dict[str, Any], tmp_path: Path) -> None:
    first, second = build(planted, tmp_path / "1.sqlite"), build(planted, tmp_path / "2.sqlite")
    reseeded = build(
        planted, tmp_path / "3.sqlite", settings=AtlasSettings(**{**SETTINGS.__dict__, "seed": 9})
    )

    def dump(path: Path, table: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(path) as db:
            return sorted(db.execute(f"SELECT * FROM {table}").fetchall(), key=repr)

    tables = ["features", "examples", "tokens", "vocab", "token_effects", "neighbours"]
    for table in tables:
        assert dump(first, table) == dump(second, table), table
    assert dump(first, "examples") != dump(reseeded, "examples")
    meta = [dict(dump(p, "meta")) for p in (first, second)]
    assert {**meta[0], "created": None} == {**meta[1], "created": None}


def test_search_finds_a_feature_by_its_top_token(planted: dict[str, Any], tmp_path: Path) -> None:
    with Atlas.open(build(planted, tmp_path / "a.sqlite")) as atlas:
        words = {j: atlas.feature(j).top_tokens[0][0] for j in range(WIDTH)}
        word_feature = next(j for j, word in words.items() if word.isalnum())
        found = atlas.search(words[word_feature])
        assert found and found[0] in {j for j, word in words.items() if word == words[word_feature]}
        assert atlas.search("   ") == []


def test_neurons_are_mapped_with_logit_effects_through_the_down_projection(
    planted: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "neurons.sqlite"
    build_atlas(
        AtlasJob(
            "layers.1.mlp_neurons",
            str(out),
            tokens=2_000,
            model=planted["model"],
            seq_len=64,
            settings=SETTINGS,
        )
    )
    lm = fl.load_model(planted["model"])
    with Atlas.open(out) as atlas:
        assert atlas.meta["kind"] == "neurons" and atlas.meta["source"] == "live"
        assert len(atlas) == 64  # the tiny llama's intermediate size
        feature = atlas.feature(7)
        down = lm.model.model.layers[1].mlp.down_proj.weight.detach()[:, 7]
        gamma = lm.model.model.norm.weight.detach()
        unit = down / down.pow(2).mean().sqrt()
        logits = lm.model.lm_head.weight.detach() @ (gamma * unit)
        reference = logits.topk(SETTINGS.n_tokens_effects)
        assert [t.token for t in feature.output_top] == reference.indices.tolist()
        assert [t.value for t in feature.output_top] == pytest.approx(reference.values.tolist(), rel=1e-3)
        assert feature.input_top == []  # neurons read through gated projections: no input effects
        assert feature.top and all(c.activation > 0 for c in feature.top)


def test_an_interrupted_build_leaves_nothing_that_opens_as_an_atlas(
    planted: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "a.sqlite"

    def interrupt(_n: int, _expected: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_atlas(
            AtlasJob(
                str(planted["root"] / "sae"),
                str(out),
                acts=str(planted["root"] / "acts"),
                model=planted["model"],
                settings=SETTINGS,
            ),
            on_tokens=interrupt,
        )
    assert not out.exists()

    import featurelens.atlas.write as write

    def fail(*_args: Any) -> Any:
        raise OSError("disk full")

    monkeypatch.setattr(write, "_neighbour_rows", fail)
    with pytest.raises(OSError):
        build(planted, out)
    assert not out.exists() and partial_path(out).exists()
    with pytest.raises(AtlasError, match="not a complete featurelens atlas"):
        Atlas.open(partial_path(out))


def test_bad_inputs_are_refused_clearly(planted: dict[str, Any], tmp_path: Path) -> None:
    narrow = TopKDictionary(16, 64, k=2, hook_in=HOOK)
    narrow.save(tmp_path / "narrow")
    with pytest.raises(AtlasError, match=r"reads 16-wide activations at layers\.1\.resid_post"):
        build(planted, tmp_path / "x.sqlite", dictionary=str(tmp_path / "narrow"))
    out = build(planted, tmp_path / "a.sqlite")
    with pytest.raises(AtlasError, match="already exists"):
        build(planted, out)
    with Atlas.open(out) as atlas:
        for bad in (WIDTH, -1, 1.5, "3", True):
            with pytest.raises(AtlasError, match="feature"):
                atlas.feature(bad)  # type: ignore[arg-type]
        with pytest.raises(AtlasError, match="cannot sort"):
            atlas.features(sort="nonsense")
    (tmp_path / "text.sqlite").write_text("not a database")
    sqlite3.connect(tmp_path / "other.sqlite").execute("CREATE TABLE t (x)").connection.close()
    for path in ("text.sqlite", "other.sqlite", "missing.sqlite"):
        with pytest.raises(AtlasError, match=r"not a|does not exist"):
            Atlas.open(tmp_path / path)
    with pytest.raises(AtlasError, match="--top-k must be at least 1"):
        AtlasJob("x", "y", settings=AtlasSettings(top_k=0))
