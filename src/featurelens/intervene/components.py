"""The parts of a model that patching ranks and circuits are made of, and the metrics they are ranked by.

A :class:`Component` is some channels of one hook point at one prompt position (or every position):
a residual-stream position (``resid_pre``, all channels), an attention head (its slice of
``attn_heads``), an MLP neuron (one unit of ``mlp_neurons``). A metric maps logits to one number per row,
e.g. the logit difference between the right and the wrong answer at the last position.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from featurelens.dictionaries.base import Dictionary
from featurelens.intervene.edits import InterventionError
from featurelens.intervene.heads import head_layout
from featurelens.models import LanguageModel


@dataclass(frozen=True)
class Component:
    """Channels ``units`` (None: all) of ``hook`` at prompt position ``position`` (None: every one).

    ``kind`` is ``resid``, ``head`` or ``neuron``; or ``feature`` / ``error`` for a dictionary's feature
    ``index`` at ``hook`` and its reconstruction error (scored by attribution). ``layer`` and ``index``
    place it in a circuit graph; ``label`` names it in tables (``L3H2``, ``L5N107``, ``L2.resid@4``,
    ``L15F3021``, ``L15.error``).
    """

    kind: str
    layer: int
    index: int
    hook: str
    units: tuple[int, ...] | None
    position: int | None

    @property
    def label(self) -> str:
        short = {"head": "H", "neuron": "N", "feature": "F"}
        name = (
            f"L{self.layer}{short[self.kind]}{self.index}"
            if self.kind in short
            else f"L{self.layer}.{self.kind}"
        )
        return name if self.position is None else f"{name}@{self.position}"

    def mask(self, width: int, seq: int) -> torch.Tensor:
        """Bool [seq, width]: the entries this component covers in one row of its hook's tensor."""
        mask = torch.zeros(seq, width, dtype=torch.bool)
        rows = slice(None) if self.position is None else self.position
        if self.units is None:
            mask[rows, :] = True
        else:
            mask[rows, list(self.units)] = True
        return mask


def hook_widths(lm: LanguageModel, hooks: Iterable[str]) -> dict[str, int]:
    """The width of each of ``hooks``, in forward order (from a two-token forward that stops early)."""
    ordered = sorted(set(hooks), key=list(lm.hook_points).index)
    shapes = lm.capture(torch.ones(1, 2, dtype=torch.long), ordered, stop_early=True)
    return {hook: int(shapes[hook].shape[-1]) for hook in ordered}


def _layers(lm: LanguageModel, layers: Sequence[int] | None) -> list[int]:
    chosen = list(range(lm.n_layers)) if layers is None else list(layers)
    bad = [layer for layer in chosen if not 0 <= layer < lm.n_layers]
    if bad:
        raise InterventionError(f"layer(s) {bad} out of range: the model has layers 0..{lm.n_layers - 1}")
    return chosen


def _positions(positions: Sequence[int] | None) -> list[int | None]:
    return [None] if positions is None else [int(p) for p in positions]


def head_components(
    lm: LanguageModel, layers: Sequence[int] | None = None, positions: Sequence[int] | None = None
) -> list[Component]:
    """Every attention head of ``layers`` (default all), at each of ``positions`` (default: all at once)."""
    found = []
    for layer in _layers(lm, layers):
        n_heads, head_dim = head_layout(lm, layer)
        for head in range(n_heads):
            units = tuple(range(head * head_dim, (head + 1) * head_dim))
            for position in _positions(positions):
                found.append(Component("head", layer, head, f"layers.{layer}.attn_heads", units, position))
    return found


def neuron_components(
    lm: LanguageModel,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    neurons: Sequence[int] | None = None,
) -> list[Component]:
    """MLP neurons (default: every one) of ``layers``, at each of ``positions`` (default: all at once)."""
    found = []
    for layer in _layers(lm, layers):
        hook = f"layers.{layer}.mlp_neurons"
        width = hook_widths(lm, [hook])[hook]
        for unit in range(width) if neurons is None else neurons:
            for position in _positions(positions):
                found.append(Component("neuron", layer, int(unit), hook, (int(unit),), position))
    return found


def feature_components(dictionary: Dictionary, features: Sequence[int] | None = None) -> list[Component]:
    """``features`` (default: every one) of an SAE at its hook, plus its error term (what it leaves out)."""
    hook = dictionary.hook_in
    if dictionary.is_transcoder or not hook.startswith("layers."):
        raise InterventionError(f"feature attribution needs an SAE at a layer hook, not {hook!r}")
    layer = int(hook.split(".")[1])
    ids = range(dictionary.d_latent) if features is None else features
    found = [Component("feature", layer, int(i), hook, None, None) for i in ids]
    return [*found, Component("error", layer, 0, hook, None, None)]


def residual_components(
    lm: LanguageModel, positions: Sequence[int], layers: Sequence[int] | None = None
) -> list[Component]:
    """The residual stream entering each of ``layers`` at each of ``positions``."""
    return [
        Component("resid", layer, position, f"layers.{layer}.resid_pre", None, position)
        for layer in _layers(lm, layers)
        for position in positions
    ]


@dataclass(frozen=True)
class LogitDifference:
    """``logit[correct] - logit[wrong]`` at ``position`` (default the last) of each row; ``correct`` and
    ``wrong`` hold one token id per prompt [n_prompts]."""

    correct: torch.Tensor
    wrong: torch.Tensor
    position: int = -1

    def __call__(self, logits: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """[rows] from ``logits`` [rows, seq, vocab]; row r belongs to prompt ``prompts[r]``."""
        last = logits[:, self.position].float()
        right = self.correct.to(last.device)[prompts]
        wrong = self.wrong.to(last.device)[prompts]
        return last.gather(1, right[:, None])[:, 0] - last.gather(1, wrong[:, None])[:, 0]


@dataclass(frozen=True)
class TokenProbability:
    """Probability of ``token`` [n_prompts] at ``position`` (default the last)."""

    token: torch.Tensor
    position: int = -1

    def __call__(self, logits: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        probabilities = logits[:, self.position].float().softmax(-1)
        return probabilities.gather(1, self.token.to(probabilities.device)[prompts][:, None])[:, 0]


@dataclass(frozen=True)
class TokenLoss:
    """Cross-entropy of ``token`` [n_prompts] at ``position`` (default the last): lower is better."""

    token: torch.Tensor
    position: int = -1

    def __call__(self, logits: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        log_probabilities = logits[:, self.position].float().log_softmax(-1)
        return -log_probabilities.gather(1, self.token.to(log_probabilities.device)[prompts][:, None])[:, 0]


Metric = LogitDifference | TokenProbability | TokenLoss
