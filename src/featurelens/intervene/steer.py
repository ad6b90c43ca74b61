"""Steering: add directions or edit features inside the forward pass and see what the model does.

* :func:`add_features` — ``x + sum_j strength_j * W_dec[j]`` at a dictionary's ``hook_out``. Decoder rows
  have unit norm, so a strength is in the feature's own activation units (compare it with the feature's
  max activation in the atlas). Clamping goes through :class:`~featurelens.intervene.edits.FeatureEdit`.
* :func:`steering_sweep` — greedy generations and target-token log-probabilities over a list of
  strengths of one steering vector (see :mod:`featurelens.intervene.vectors`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from featurelens.dictionaries.base import Dictionary
from featurelens.intervene.context import generate_with_edits, run_with_edits
from featurelens.intervene.edits import Add, InterventionError
from featurelens.intervene.vectors import SteeringVector
from featurelens.models import LanguageModel


def add_features(dictionary: Dictionary, strengths: Mapping[int, float]) -> Add:
    """An edit adding ``strength * W_dec[j]`` for each feature j (at ``dictionary.hook_out``)."""
    bad = [i for i in strengths if not 0 <= i < dictionary.d_latent]
    if bad:
        raise InterventionError(
            f"feature(s) {bad} out of range: the dictionary has features 0..{dictionary.d_latent - 1}"
        )
    direction = torch.zeros(dictionary.d_out, dtype=dictionary.W_dec.dtype)
    for feature, strength in strengths.items():
        direction += strength * dictionary.W_dec.detach()[feature].cpu()
    return Add(direction)


@dataclass(frozen=True)
class SweepRow:
    """One strength: the mean log-probability of the target tokens (minus that of the ``against``
    tokens, when given) as the next token after each prompt, its shift from strength 0, and the greedy
    continuation of every prompt."""

    strength: float
    target_logprob: float
    shift: float
    continuations: list[str]


def _single_tokens(lm: LanguageModel, texts: Sequence[str]) -> list[int]:
    found = []
    for text in texts:
        ids = lm.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise InterventionError(f"target {text!r} is {len(ids)} tokens; a target must be one token")
        found.append(int(ids[0]))
    return found


def steering_sweep(
    lm: LanguageModel,
    vector: SteeringVector,
    prompts: Sequence[str],
    strengths: Sequence[float],
    targets: Sequence[str] = (),
    new_tokens: int = 16,
    positions: str = "all",
    against: Sequence[str] = (),
) -> list[SweepRow]:
    """Add ``strength * vector`` at its hook (at ``positions``: ``all``, ``prompt`` or ``generated``) for
    each strength; measure the target tokens' log-probability right after each prompt (relative to the
    ``against`` tokens' when given) and generate."""
    if not prompts:
        raise InterventionError("steering needs at least one prompt to continue")
    target_ids, against_ids = _single_tokens(lm, targets), _single_tokens(lm, against)
    encoded = [torch.tensor([lm.tokenizer.encode(p)]) for p in prompts]
    width = lm.capture(encoded[0], [vector.hook])[vector.hook].shape[-1]
    vector.check_fits(lm, int(width))
    rows, base = [], None
    for strength in [0.0, *[s for s in strengths if s != 0.0]]:
        edits = {vector.hook: Add(vector.vector, strength=float(strength))}
        logprobs, texts = [], []
        for ids in encoded:
            if target_ids:
                last = run_with_edits(lm, ids, edits, positions)[0, -1].float().log_softmax(-1)
                contrast = float(last[against_ids].mean()) if against_ids else 0.0
                logprobs.append(float(last[target_ids].mean()) - contrast)
            out = generate_with_edits(lm, ids, new_tokens, edits, positions)
            texts.append(lm.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
        mean = sum(logprobs) / len(logprobs) if logprobs else float("nan")
        base = mean if base is None else base
        rows.append(SweepRow(float(strength), mean, mean - base, texts))
    order = {float(s): i for i, s in enumerate(strengths)}
    return sorted(rows, key=lambda row: order.get(row.strength, -1))
