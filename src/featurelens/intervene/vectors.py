"""Steering vectors from contrastive prompt pairs, saved as safetensors + JSON.

From the activations at one hook and position (default the last token) of ``positive`` and ``negative``
prompts, three directions:

* ``mean`` — the mean difference ``mean(positive - negative)`` (paired);
* ``pca`` — the first principal axis of the paired differences (uncentred: the axis they share, as
  PCA over pairs in random order finds), signed to agree with the mean;
* ``probe`` — the weight vector of an L2-regularised logistic regression separating the two sets.

Every vector is scaled so its projection of the mean difference is the mean difference's length along
it: strength 1 moves the activation by the average positive-negative gap along that direction, so the
three methods' strengths are comparable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from featurelens.intervene.edits import InterventionError
from featurelens.models import LanguageModel
from featurelens.probes.estimators import fit_logistic

METHODS = ("mean", "pca", "probe")


@dataclass(frozen=True)
class SteeringVector:
    """A direction [width] at ``hook`` of ``model``, made by ``method`` from ``pairs`` prompt pairs."""

    vector: torch.Tensor
    hook: str
    method: str
    model: str
    pairs: int
    position: int = -1

    def meta(self) -> dict[str, Any]:
        fields = {k: v for k, v in asdict(self).items() if k != "vector"}
        return {**fields, "width": int(self.vector.numel()), "norm": float(self.vector.norm())}

    def save(self, path: str | Path) -> Path:
        """``PATH/vector.safetensors`` and ``PATH/vector.json``, each renamed into place when whole."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / ".vector.safetensors.partial"
        save_file({"vector": self.vector.detach().float().contiguous()}, str(partial))
        os.replace(partial, folder / "vector.safetensors")
        partial = folder / ".vector.json.partial"
        partial.write_text(json.dumps(self.meta(), indent=1))
        os.replace(partial, folder / "vector.json")
        return folder

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        """A folder written by :meth:`save` (safetensors only, never pickle)."""
        folder = Path(path)
        try:
            meta = json.loads((folder / "vector.json").read_text())
            vector = load_file(str(folder / "vector.safetensors"))["vector"]
        except (OSError, KeyError, ValueError, json.JSONDecodeError):
            raise InterventionError(
                f"{folder} is not a steering vector folder (vector.safetensors + vector.json)"
            ) from None
        if vector.ndim != 1 or meta.get("width") != vector.numel():
            raise InterventionError(f"{folder}/vector.json does not describe its vector")
        fields = ("hook", "method", "model", "pairs", "position")
        return cls(vector, **{k: meta[k] for k in fields})

    def check_fits(self, lm: LanguageModel, width: int) -> None:
        """One line if this vector cannot steer ``lm`` at its hook of ``width`` channels."""
        lm.hook_point(self.hook)
        if width != self.vector.numel():
            raise InterventionError(
                f"the steering vector has width {self.vector.numel()} but {self.hook} of {lm.name} "
                f"has {width}"
            )
        if self.model and lm.name and self.model != lm.name:
            raise InterventionError(
                f"the steering vector was made on {self.model!r}, not {lm.name!r}; make one for this model"
            )


def paired_activations(
    lm: LanguageModel, positive: Sequence[str], negative: Sequence[str], hook: str, position: int = -1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations [n, width] of each prompt at ``hook`` and ``position`` (each prompt run alone, so
    prompts of any length pair up)."""
    if len(positive) != len(negative) or not positive:
        raise InterventionError(
            f"steering needs as many positive as negative prompts (got {len(positive)} and {len(negative)})"
        )
    rows = []
    for text in [*positive, *negative]:
        ids = torch.tensor([lm.tokenizer.encode(text)])
        if not -ids.shape[1] <= position < ids.shape[1]:
            raise InterventionError(
                f"position {position} is outside the {ids.shape[1]}-token prompt {text!r}"
            )
        rows.append(lm.capture(ids, [hook])[hook][0, position].float())
    stacked = torch.stack(rows)
    return stacked[: len(positive)], stacked[len(positive) :]


def logistic_direction(
    positive: torch.Tensor, negative: torch.Tensor, l2: float = 1e-2, steps: int = 200
) -> torch.Tensor:
    """Weights [width] of an L2-regularised logistic regression (L-BFGS) telling ``positive`` [n, width]
    from ``negative`` [m, width]. Inputs are centred and divided by one overall scale, not per channel:
    per-channel standardisation would blow quiet channels' noise up to the size of the signal."""
    x = torch.cat([positive, negative]).double()
    y = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))]).double()
    mean = x.mean(0)
    scale = (x - mean).pow(2).mean().sqrt().clamp(min=1e-12)
    weights, _ = fit_logistic((x - mean) / scale, y, n_classes=2, penalty=l2, max_iter=steps, tol=1e-7)
    return (weights[:, 0] / scale).float()


def steering_vector(
    lm: LanguageModel,
    positive: Sequence[str],
    negative: Sequence[str],
    hook: str,
    method: str = "mean",
    position: int = -1,
) -> SteeringVector:
    """A steering vector at ``hook`` from contrastive prompts (see the module docstring for methods)."""
    if method not in METHODS:
        raise InterventionError(f"unknown steering method {method!r}; accepted: {', '.join(METHODS)}")
    pos, neg = paired_activations(lm, positive, negative, hook, position)
    differences = (pos - neg).double()
    mean = differences.mean(0)
    if method == "mean":
        vector = mean
    else:
        if method == "pca":  # uncentred, as with randomly flipped pairs: the axis the differences share
            direction = torch.linalg.svd(differences, full_matrices=False)[2][0]
        else:
            direction = logistic_direction(pos, neg).double()
        direction = direction / direction.norm().clamp(min=1e-12)
        along = float(mean @ direction)
        vector = direction * along  # signed so that +strength points from negative to positive
    return SteeringVector(vector.float(), hook, method, lm.name, len(positive), position)
