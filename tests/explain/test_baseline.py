"""The batched baseline and keyword scorer on a planted two-token pattern: latent 5 fires on token B only
right after token A (B also occurs often without A), latent 7 on token C wherever it is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featurelens.atlas import Atlas, AtlasSettings, Context
from featurelens.explain import ExplainJob, explain_atlas
from featurelens.explain.baseline import Patterns, describe
from featurelens.explain.pipeline import split_examples, split_rows
from featurelens.explain.scoring import (
    Pattern,
    Words,
    detection,
    fuzzing,
    keyword_asker,
    keyword_scores,
    patterns,
    word,
)
from tests.atlas.conftest import N_SEQ, SEQ, planted_atlas

A, B, C = 10, 11, 20
PAIR, CONTEXT = 5, 7  # the latents: B after A, and C anywhere
SETTINGS = AtlasSettings(top_k=8, before=4, after=2, quantile_bins=5, per_bin=6, negatives=20)


def planted_tokens() -> np.ndarray:
    """Random tokens 3..47 without A, B or C, then 120 pairs A B, 240 lone Bs (never after A) and 150 Cs,
    none at a sequence's first position."""
    rng = np.random.default_rng(1)
    others = np.setdiff1d(np.arange(3, 48), [A, B, C])
    tokens = rng.choice(others, size=(N_SEQ, SEQ - 1)).astype(np.int32)
    slots = rng.permutation([(s, p) for s in range(N_SEQ) for p in range(2, SEQ - 2, 3)])
    for i, (s, p) in enumerate(slots[: 120 + 240 + 150]):
        if i < 120:
            tokens[s, p - 1 : p + 1] = [A, B]
        else:
            tokens[s, p] = B if i < 360 else C
    return tokens


def latent_of(sequence: np.ndarray) -> np.ndarray:
    after_a = np.concatenate([[False], sequence[:-1] == A])
    return np.where((sequence == B) & after_a, PAIR, np.where(sequence == C, CONTEXT, -1))


@pytest.fixture(scope="module")
def atlas_path(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("pair")
    path = planted_atlas(root, tiny_model_dir, SETTINGS, tokens=planted_tokens(), latent_of=latent_of)
    explain_atlas(ExplainJob(str(path), features="all"))
    return path


def test_a_token_that_fires_only_after_another_is_explained_by_both(atlas_path: Path) -> None:
    with Atlas.open(atlas_path) as atlas:
        vocab = atlas.vocab()
        a, b = (describe(word(vocab[t])) for t in (A, B))
        pair, alone = atlas.feature(PAIR), atlas.feature(CONTEXT)
        (explained,) = pair.explanations
        assert explained.text.startswith(f"fires on {b} after {a}")
        assert Pattern(word(vocab[B]), word(vocab[A])) in patterns(explained.text)
        assert patterns(alone.explanations[0].text)[0] == Pattern(word(vocab[C]), None)  # no context needed
        # the held-out windows that fire hold "A B"; a silent one cannot: the known answer is perfect
        assert explained.detection_auroc == 1.0 and explained.fuzzing_auroc == 1.0
        # what the old baseline could say at best, scored by the same scorer on the same examples
        held = split_examples(
            {"top": pair.top, "quantile": pair.quantiles, "negative": pair.negatives}, SETTINGS.top_k
        )
        for old in (f"fires on {b}", f"fires on {b} (often after {a})"):
            worse = detection(keyword_asker, old, held.activating, held.silent, PAIR)
            assert worse.auroc is not None and worse.auroc < 0.9 < explained.detection_auroc
        assert {t for t, _ in pair.top_tokens} == {vocab[B].strip()}  # the atlas alone shows only B


def test_the_batched_keyword_scores_equal_the_scorer_on_contexts(atlas_path: Path) -> None:
    """keyword_scores (array ops over many features) against keyword_asker on each feature's records."""
    with Atlas.open(atlas_path) as atlas:
        vocab = atlas.vocab()
        batch = atlas.examples(range(len(atlas)))
        _, activating, silent = split_rows(batch, SETTINGS.top_k)
        texts = [f'fires on "{word(vocab[t])}" after "{word(vocab[A])}", any token after "{word(vocab[C])}"'
                 for t in range(len(atlas))]  # fmt: skip
        batched = keyword_scores(texts, batch, activating, silent, Words.of(vocab), list(range(len(atlas))))
        compared = 0
        for i, feature in enumerate(batch.features.tolist()):
            held = split_examples(batch.contexts(i, vocab), SETTINGS.top_k)
            if not held.activating or not held.silent:
                continue
            found, fuzzed = batched[i]
            assert found == detection(keyword_asker, texts[i], held.activating, held.silent, feature)
            assert fuzzed == fuzzing(keyword_asker, texts[i], held.activating, feature)
            compared += 1
        assert compared >= 2


def test_the_keyword_scorer_conditions_on_the_token_before() -> None:
    ids = [1, 2, 3, 2]
    context = Context("top", 0, None, 3, 1.0, ids, [" a", " b", "\n", " b"], [0.0, 0.0, 0.0, 1.0], 3)
    questions: list[tuple[Context, set[int] | None]] = [(context, {1}), (context, {3}), (context, None)]
    assert keyword_asker('fires on "b" after "a"', questions) == [1.0, 0.0, 1.0]
    assert keyword_asker('fires on "b" after "↵"', questions) == [0.0, 1.0, 1.0]
    assert keyword_asker('fires on any token after "↵"', questions) == [0.0, 1.0, 1.0]
    assert keyword_asker('fires on "b"', questions) == [1.0, 1.0, 1.0]
    assert keyword_asker('fires on "c" after "a"; promotes "b"', questions) == [0.0, 0.0, 0.0]


def test_every_nameable_word_reads_back_from_its_phrase() -> None:
    texts = [" the", "\n", "\n  ", " ", '"', ' "a', "“", "”", 'x"”', "a, b", "after", "any token", "'"]
    words = Words.of(dict(enumerate(texts)))
    table = Patterns.of(words)
    n = len(words.texts)
    for w in range(n):
        for after in (-1, *range(n)):
            for key in (table.key(np.array(w), np.array(after)), table.key(np.array(-1), np.array(w))):
                parts = [words.texts[x] for x in (w, after) if x >= 0]
                if not all(table.named[words.index[t]] for t in parts):
                    continue
                (read,) = patterns("fires on " + table.phrase(int(key)) + "; promotes x")
                expected = (
                    Pattern(words.texts[w], None if after < 0 else words.texts[after])
                    if key == table.key(np.array(w), np.array(after))
                    else Pattern(None, words.texts[w])
                )
                assert read == expected
    assert not table.named[words.index['x"”']]  # a word holding both quotes cannot be quoted
