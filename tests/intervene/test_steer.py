"""Steering edits: nulls that must change nothing, and strengths that must change something."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import featurelens as fl
from featurelens.dictionaries import TopKDictionary
from featurelens.intervene import SteeringError, add_edit, clamp_edit, generate

HOOK = "layers.1.resid_post"


@pytest.fixture(scope="module")
def setup(tiny_model_dir: Path) -> tuple[fl.LanguageModel, TopKDictionary]:
    lm = fl.load_model(str(tiny_model_dir))
    torch.manual_seed(0)
    dictionary = TopKDictionary(32, 128, k=8, hook_in=HOOK)
    return lm, dictionary


def test_clamping_features_to_their_own_values_changes_nothing(
    setup: tuple[fl.LanguageModel, TopKDictionary],
) -> None:
    _, dictionary = setup
    x = torch.randn(2, 7, 32)
    codes = dictionary.encode(x.reshape(-1, 32))
    edit = clamp_edit(dictionary, {3: codes[:, 3], 40: codes[:, 40]})
    assert torch.equal(edit(x), x)
    changed = clamp_edit(dictionary, {3: 5.0})(x)
    expected = x.reshape(-1, 32) + (5.0 - codes[:, 3:4]) * dictionary.W_dec[3].detach()
    torch.testing.assert_close(changed.reshape(-1, 32), expected, atol=1e-5, rtol=1e-5)


def test_add_moves_the_hook_along_the_decoder_direction(
    setup: tuple[fl.LanguageModel, TopKDictionary],
) -> None:
    _, dictionary = setup
    x = torch.randn(1, 5, 32)
    moved = add_edit(dictionary, {7: 2.5, 9: -1.0})(x)
    expected = x + 2.5 * dictionary.W_dec[7].detach() - dictionary.W_dec[9].detach()
    torch.testing.assert_close(moved, expected)


def test_null_edits_leave_generation_identical_and_strong_ones_do_not(
    setup: tuple[fl.LanguageModel, TopKDictionary],
) -> None:
    lm, dictionary = setup
    prompt = torch.tensor([[1, 5, 9, 13, 17, 21]])
    baseline = generate(lm, prompt, 12)
    assert baseline.shape == (1, 18)
    for edit in (add_edit(dictionary, {4: 0.0}), clamp_edit(dictionary, {}), add_edit(dictionary, {})):
        assert torch.equal(generate(lm, prompt, 12, HOOK, edit), baseline)
    steered = generate(lm, prompt, 12, HOOK, add_edit(dictionary, {4: 50.0}))
    assert not torch.equal(steered, baseline)


def test_bad_edits_are_refused(setup: tuple[fl.LanguageModel, TopKDictionary]) -> None:
    _, dictionary = setup
    with pytest.raises(SteeringError, match="out of range"):
        add_edit(dictionary, {128: 1.0})
    transcoder = TopKDictionary(32, 64, k=4, hook_in="layers.1.mlp_in", hook_out="layers.1.mlp_out")
    with pytest.raises(SteeringError, match="clamping needs"):
        clamp_edit(transcoder, {1: 1.0})
