"""Steering: feature edits whose nulls change nothing, steering vectors with known directions, and a sweep
that flips the planted model's answer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import featurelens as fl
from featurelens.dictionaries import TopKDictionary
from featurelens.intervene import (
    FeatureEdit,
    InterventionError,
    SteeringVector,
    add_features,
    generate_with_edits,
    steering_sweep,
    steering_vector,
)
from featurelens.intervene.vectors import logistic_direction, paired_activations
from tests.intervene.planted import COPIED, save_planted

HOOK = "layers.1.resid_post"


@pytest.fixture(scope="module")
def setup(tiny_model_dir: Path) -> tuple[fl.LanguageModel, TopKDictionary]:
    lm = fl.load_model(str(tiny_model_dir))
    torch.manual_seed(0)
    dictionary = TopKDictionary(32, 128, k=8, hook_in=HOOK)
    return lm, dictionary


def test_add_moves_the_hook_along_the_decoder_direction(
    setup: tuple[fl.LanguageModel, TopKDictionary],
) -> None:
    _, dictionary = setup
    x = torch.randn(1, 5, 32)
    edit = add_features(dictionary, {7: 2.5, 9: -1.0})
    expected = x + 2.5 * dictionary.W_dec[7].detach() - dictionary.W_dec[9].detach()
    torch.testing.assert_close(edit.replacement(x, None), expected)  # type: ignore[arg-type]


def test_null_edits_leave_generation_identical_and_strong_ones_do_not(
    setup: tuple[fl.LanguageModel, TopKDictionary],
) -> None:
    lm, dictionary = setup
    prompt = torch.tensor([[1, 5, 9, 13, 17, 21]])
    baseline = generate_with_edits(lm, prompt, 12)
    assert baseline.shape == (1, 18)
    for edit in (add_features(dictionary, {4: 0.0}), FeatureEdit(dictionary), add_features(dictionary, {})):
        assert torch.equal(generate_with_edits(lm, prompt, 12, {HOOK: edit}), baseline)
    steered = generate_with_edits(lm, prompt, 12, {HOOK: add_features(dictionary, {4: 50.0})})
    assert not torch.equal(steered, baseline)


def test_bad_edits_are_refused(setup: tuple[fl.LanguageModel, TopKDictionary]) -> None:
    _, dictionary = setup
    with pytest.raises(InterventionError, match="out of range"):
        add_features(dictionary, {128: 1.0})
    transcoder = TopKDictionary(32, 64, k=4, hook_in="layers.1.mlp_in", hook_out="layers.1.mlp_out")
    with pytest.raises(InterventionError, match="reads and writes one hook"):
        FeatureEdit(transcoder, clamp={1: 1.0})


def test_the_probe_direction_equals_scikit_learns_logistic_regression() -> None:
    from sklearn.linear_model import LogisticRegression

    generator = torch.Generator().manual_seed(0)
    axis = torch.zeros(16)
    axis[3] = 1.0
    negative = torch.randn(200, 16, generator=generator) * torch.linspace(0.5, 3.0, 16)
    positive = torch.randn(200, 16, generator=generator) * torch.linspace(0.5, 3.0, 16) + 2.0 * axis
    l2 = 1e-2
    probe = logistic_direction(positive, negative, l2=l2).double()
    x = torch.cat([positive, negative]).double()
    scale = (x - x.mean(0)).pow(2).mean().sqrt()
    standardised = ((x - x.mean(0)) / scale).numpy()
    labels = [1] * 200 + [0] * 200
    reference = LogisticRegression(C=1 / (2 * l2 * len(x)), tol=1e-10, max_iter=10_000).fit(
        standardised, labels
    )
    expected = torch.from_numpy(reference.coef_[0]) / scale
    torch.testing.assert_close(probe, expected, rtol=1e-3, atol=1e-4)
    assert torch.nn.functional.cosine_similarity(probe, axis.double(), dim=0) > 0.9


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> fl.LanguageModel:
    return fl.load_model(str(save_planted(tmp_path_factory.mktemp("planted"))))


def test_steering_vectors_point_along_the_planted_channel(planted: fl.LanguageModel) -> None:
    positive = ["w1 A* w2 w3 Q", "w4 w5 A* Q", "A* w3 w3 w1 Q"]
    negative = ["w1 B* w2 w3 Q", "w4 w5 B* Q", "B* w3 w3 w1 Q"]
    pos, neg = paired_activations(planted, positive, negative, "layers.0.resid_mid")
    for method in ("mean", "pca", "probe"):
        vector = steering_vector(planted, positive, negative, "layers.0.resid_mid", method=method)
        if method == "mean":
            torch.testing.assert_close(vector.vector, (pos - neg).mean(0))
        assert int(vector.vector.abs().argmax()) == COPIED, method
        assert float(vector.vector[COPIED]) == pytest.approx(float((pos - neg).mean(0)[COPIED]), rel=0.05)


def test_a_sweep_flips_the_planted_answer_and_saved_vectors_round_trip(
    planted: fl.LanguageModel, tmp_path: Path
) -> None:
    positive, negative = ["w1 A* w2 Q", "A* w3 w1 Q"], ["w1 B* w2 Q", "B* w3 w1 Q"]
    vector = steering_vector(planted, positive, negative, "layers.0.resid_mid")
    loaded = SteeringVector.load(vector.save(tmp_path / "vector"))
    assert torch.equal(loaded.vector, vector.vector) and loaded.meta() == vector.meta()
    rows = steering_sweep(planted, loaded, ["w2 A* w4 Q"], [-1.0, 0.0, 1.0], targets=[" A"], new_tokens=1)
    by_strength = {row.strength: row for row in rows}
    assert [row.strength for row in rows] == [-1.0, 0.0, 1.0]
    assert by_strength[0.0].continuations == ["A"] and by_strength[-1.0].continuations == ["B"]
    assert (
        by_strength[0.0].shift == 0.0 and by_strength[-1.0].shift < -10 < 0 <= by_strength[1.0].shift + 1e-3
    )
    wrong_width = SteeringVector(torch.ones(31), "layers.0.resid_mid", "mean", planted.name, 2)
    with pytest.raises(InterventionError, match="width 31"):
        steering_sweep(planted, wrong_width, ["w1 Q"], [1.0])
    other_model = SteeringVector(torch.ones(32), "layers.0.resid_mid", "mean", "someone-else", 2)
    with pytest.raises(InterventionError, match="made on 'someone-else'"):
        steering_sweep(planted, other_model, ["w1 Q"], [1.0])
    with pytest.raises(InterventionError, match="not a steering vector folder"):
        SteeringVector.load(tmp_path)
