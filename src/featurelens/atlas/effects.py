"""What each latent writes and reads, in token terms, and which latents point the same way.

* **Write directions** in the residual stream [L, d_model]: decoder rows for dictionaries whose output hook
  has the model width (residual stream, attention or MLP output); for a hook at ``layers.i.mlp_neurons``
  (neurons, or a dictionary over them) the decoder rows are mapped through that layer's down projection.
* **Output effects**: logits = W_U · norm(direction), where norm is the model's own final norm module applied
  as it would be to a residual stream holding only the direction: ``norm(c·d) − norm(0)`` with d scaled to
  unit RMS and c large enough that the norm's epsilon is negligible. That keeps the elementwise weight
  (``1 + w`` on Gemma), the centring of a LayerNorm, and drops its bias, with no per-architecture code.
  Directions read after the final norm (``final_norm``) go straight to W_U.
* **Input effects**: tokens whose input embedding has the largest cosine with the encoder direction
  (dictionaries that read a model-width hook; neurons read through gated projections and are left out).
* **Nearest latents**: largest cosine between write directions (decoder rows when there are none).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from featurelens.dictionaries.base import Dictionary
from featurelens.models import LanguageModel

BLOCK = 256
PROBE_SCALE = 1e3


@dataclass(frozen=True)
class Ranked:
    """Per latent, ``n`` ids (tokens or latents) and their scores, best first: [L, n] each."""

    ids: torch.Tensor
    values: torch.Tensor


def _down_projection_weight(module: nn.Module) -> torch.Tensor:
    """The down projection as [d_mlp, d_model] (nn.Linear stores it transposed; GPT-2's Conv1D does not)."""
    weight = module.get_parameter("weight").detach().float()
    return weight.T if isinstance(module, nn.Linear) else weight


def write_directions(dictionary: Dictionary, lm: LanguageModel) -> torch.Tensor | None:
    """Each latent's direction in the residual stream [L, d_model], or None when it has none."""
    decoder = dictionary.W_dec.detach().float().cpu()
    hook = dictionary.hook_out
    if hook.endswith(".mlp_neurons"):
        return decoder @ _down_projection_weight(lm.hook_point(hook).module).cpu()
    return decoder if dictionary.d_out == lm.d_model else None


def read_directions(dictionary: Dictionary, lm: LanguageModel) -> torch.Tensor | None:
    """Each latent's encoder direction [L, d_model] where it reads a model-width hook, else None."""
    if dictionary.d_in != lm.d_model or dictionary.hook_in.endswith(".mlp_neurons"):
        return None
    return dictionary.W_enc.detach().float().cpu().T


def _unembedding(lm: LanguageModel) -> torch.Tensor | None:
    head = lm.model.get_output_embeddings()  # type: ignore[operator]
    return None if head is None else head.get_parameter("weight").detach().float().cpu()


@torch.no_grad()
def _through_final_norm(directions: torch.Tensor, lm: LanguageModel) -> torch.Tensor:
    """``norm(c·d̂) − norm(0)`` for unit-RMS directions d̂ [b, d_model] (see the module docstring)."""
    point = lm.hook_points.get("final_norm")
    if point is None:
        return directions
    unit = directions / directions.pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-12)
    device = lm.device
    dtype = next(point.module.parameters(), torch.empty(0)).dtype
    probe = torch.cat([unit * PROBE_SCALE, torch.zeros(1, unit.shape[1])]).to(device, dtype)[None]
    out = point.module(probe)[0].float().cpu()
    return out[:-1] - out[-1]


@torch.no_grad()
def output_effects(
    directions: torch.Tensor, lm: LanguageModel, hook: str, n: int
) -> tuple[Ranked, Ranked] | None:
    """(most promoted, most suppressed) tokens of each write direction [L, d_model]; None without a head."""
    unembed = _unembedding(lm)
    if unembed is None:
        return None
    n = min(n, unembed.shape[0])
    top_ids, top_values, bottom_ids, bottom_values = [], [], [], []
    for first in range(0, len(directions), BLOCK):
        block = directions[first : first + BLOCK]
        normed = block if hook == "final_norm" else _through_final_norm(block, lm)
        logits = normed @ unembed.T
        top = logits.topk(n, dim=1)
        bottom = logits.topk(n, dim=1, largest=False)
        top_ids.append(top.indices)
        top_values.append(top.values)
        bottom_ids.append(bottom.indices)
        bottom_values.append(bottom.values)
    return (
        Ranked(torch.cat(top_ids), torch.cat(top_values)),
        Ranked(torch.cat(bottom_ids), torch.cat(bottom_values)),
    )


def _unit_rows(matrix: torch.Tensor) -> torch.Tensor:
    return matrix / matrix.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def input_effects(directions: torch.Tensor, lm: LanguageModel, n: int) -> Ranked:
    """Tokens whose input embedding has the largest cosine with each read direction [L, d_model]."""
    embedding = lm.model.get_input_embeddings()  # type: ignore[operator]
    embeddings = _unit_rows(embedding.get_parameter("weight").detach().float().cpu())
    n = min(n, embeddings.shape[0])
    unit = _unit_rows(directions)
    ids, values = [], []
    for first in range(0, len(unit), BLOCK):
        best = (unit[first : first + BLOCK] @ embeddings.T).topk(n, dim=1)
        ids.append(best.indices)
        values.append(best.values)
    return Ranked(torch.cat(ids), torch.cat(values))


@torch.no_grad()
def nearest_latents(directions: torch.Tensor, n: int) -> Ranked:
    """Each latent's ``n`` other latents with the largest direction cosine: ids and cosines [L, n]."""
    unit = _unit_rows(directions)
    n = min(n, len(unit) - 1)
    ids, values = [], []
    for first in range(0, len(unit), BLOCK * 4):
        cosine = unit[first : first + BLOCK * 4] @ unit.T
        rows = torch.arange(len(cosine))
        cosine[rows, rows + first] = -2.0
        best = cosine.topk(n, dim=1)
        ids.append(best.indices)
        values.append(best.values)
    return Ranked(torch.cat(ids), torch.cat(values))
