"""Steering: edit a dictionary's features inside the forward pass and generate.

Two edits, both functions of a hook's tensor [batch, seq, width]:

* **add** (at ``hook_out``): ``x + sum_j strength_j * W_dec[j]``. Decoder rows have unit norm, so a strength
  is in the feature's own activation units (compare it with the feature's max activation in the atlas).
* **clamp** (an SAE or neurons, at its hook): ``x + decode(c') - decode(c)`` with ``c = encode(x)`` and ``c'``
  equal to ``c`` except the clamped features. The reconstruction error is kept, so clamping a feature to the
  value it already has leaves ``x`` exactly unchanged.

Generation is greedy, so with and without an edit differ only by the edit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from featurelens.dictionaries.base import Dictionary
from featurelens.errors import FeatureLensError
from featurelens.models import LanguageModel
from featurelens.models.tracing import replacing

Edit = Callable[[torch.Tensor], torch.Tensor]


class SteeringError(FeatureLensError):
    """An edit that cannot be applied: unknown feature, or clamping a transcoder."""


def _check_features(dictionary: Dictionary, features: Mapping[int, object]) -> list[int]:
    ids = list(features)
    bad = [i for i in ids if not 0 <= i < dictionary.d_latent]
    if bad:
        raise SteeringError(
            f"feature(s) {bad} out of range: the dictionary has features 0..{dictionary.d_latent - 1}"
        )
    return ids


def add_edit(dictionary: Dictionary, strengths: Mapping[int, float]) -> Edit:
    """Add ``strength * W_dec[j]`` for each feature j to every position of the tensor at ``hook_out``."""
    ids = _check_features(dictionary, strengths)
    if not ids:
        return lambda x: x
    weights = torch.tensor([strengths[i] for i in ids], dtype=dictionary.W_dec.dtype)
    delta = (weights[:, None] * dictionary.W_dec.detach()[ids]).sum(0)

    def edit(x: torch.Tensor) -> torch.Tensor:
        return x + delta.to(x.device, x.dtype)

    return edit


def clamp_edit(dictionary: Dictionary, values: Mapping[int, float | torch.Tensor]) -> Edit:
    """Set each feature j to ``values[j]`` (a number, or a tensor broadcastable to [batch, seq]) through
    encode → edit → decode, keeping the reconstruction error. SAEs and neurons only."""
    if dictionary.is_transcoder:
        raise SteeringError(
            "clamping needs a dictionary that reads and writes one hook; add to a transcoder's output"
        )
    ids = _check_features(dictionary, values)

    def edit(x: torch.Tensor) -> torch.Tensor:
        if not ids:
            return x
        flat = x.reshape(-1, x.shape[-1]).float()
        codes = dictionary.encode(flat)
        edited = codes.clone()
        for i in ids:
            value = values[i]
            edited[:, i] = value.reshape(-1).to(codes) if isinstance(value, torch.Tensor) else value
        change = dictionary.decode(edited) - dictionary.decode(codes)
        return x + change.reshape(x.shape).to(x.dtype)

    return edit


@torch.no_grad()
def generate(
    lm: LanguageModel,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    hook: str | None = None,
    edit: Edit | None = None,
) -> torch.Tensor:
    """Greedy continuation [batch, seq + new] of ``input_ids`` [batch, seq], with ``edit`` applied at
    ``hook`` on every forward pass when given."""
    input_ids = input_ids.to(lm.device)
    kwargs = {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "use_cache": True,
        "attention_mask": torch.ones_like(input_ids),
        "pad_token_id": getattr(lm.tokenizer, "eos_token_id", None) or 0,
    }
    if hook is None or edit is None:
        return lm.model.generate(input_ids, **kwargs)  # type: ignore[operator]
    with replacing(lm.hook_point(hook), edit):
        return lm.model.generate(input_ids, **kwargs)  # type: ignore[operator]
