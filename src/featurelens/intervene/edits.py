"""Edits of one hook's tensor: pure functions of ``x`` [batch, seq, width] and which entries to change.

Every edit computes a replacement ``y`` and returns ``where(selected, y, x)``: entries outside the
selection are the very same numbers, so an edit that selects nothing, or whose replacement equals the
input, leaves the forward pass bit-identical. The selection is the intervention's positions (see
:mod:`featurelens.intervene.context`) combined with the edit's own ``mask``, a bool tensor broadcastable
to [batch, seq, width]: ``channels(...)`` for some units (neurons, residual channels, a head's slice), or a
per-row mask to run many different edits in one batch (batched patching).

* :class:`Zero`, :class:`Mean`, :class:`Resample` — ablations;
* :class:`Patch` — values from another run's cache at the same token positions;
* :class:`Add` — a direction times a strength (steering);
* :class:`FeatureEdit` — scale or clamp dictionary features (or neurons, through the identity
  dictionary) by encode → edit → decode with the reconstruction error added back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from featurelens.dictionaries.base import Dictionary
from featurelens.errors import FeatureLensError


class InterventionError(FeatureLensError):
    """An intervention that cannot be applied: bad positions, widths, features or sources."""


@dataclass(frozen=True, eq=False)
class CallPositions:
    """Where the tokens of one forward call sit, per row: ``real`` [batch, seq] is each column's index
    among the row's real (non-padding) tokens, -1 for padding; ``generated`` [batch, seq] is True for tokens
    produced by ``generate`` (not part of the prompt); ``prompt_length`` [batch] counts each row's real
    prompt tokens."""

    real: torch.Tensor
    generated: torch.Tensor
    prompt_length: torch.Tensor


def channels(width: int, units: Iterable[int] | slice) -> torch.Tensor:
    """A bool mask [width] selecting ``units`` (indices or a slice) of a hook's channels."""
    mask = torch.zeros(width, dtype=torch.bool)
    picked = list(range(width))[units] if isinstance(units, slice) else list(units)
    bad = [u for u in picked if not -width <= u < width]
    if bad:
        raise InterventionError(f"unit(s) {bad} out of range: the hook has units 0..{width - 1}")
    mask[picked] = True
    return mask


@dataclass(frozen=True, eq=False)
class Edit:
    """Base: subclasses give ``replacement(x, call)``; ``mask`` limits the edit to some channels
    ([width]), rows ([batch, width]) or entries ([batch, positions, width], read at each column's real-token
    position like a :class:`Patch` source, so it also fits a call that continues a KV cache); None edits
    every channel."""

    mask: torch.Tensor | None = field(default=None, kw_only=True)

    def replacement(self, x: torch.Tensor, call: CallPositions) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, selected: torch.Tensor, call: CallPositions) -> torch.Tensor:
        """``x`` [batch, seq, width] with the entries at ``selected`` [batch, seq] (and ``mask``) replaced."""
        where = selected[..., None].to(x.device)
        if self.mask is not None:
            mask = self.mask.to(x.device)
            if mask.ndim == 2:  # [batch, width]: per row, every position
                mask = mask[:, None, :]
            elif mask.ndim == 3 and mask.shape[0] in (1, x.shape[0]):  # per row and real-token position
                mask = _at_positions(mask, call)
            try:
                where = where & mask
            except RuntimeError as error:
                raise InterventionError(
                    f"edit mask of shape {list(self.mask.shape)} does not fit the hook's tensor "
                    f"{list(x.shape)}; accepted: [width], [batch, width] or [batch, seq, width]"
                ) from error
        if not bool(where.any()):
            return x
        y = self.replacement(x, call)
        return torch.where(where, y.to(x.dtype), x)


def _at_positions(per_position: torch.Tensor, call: CallPositions) -> torch.Tensor:
    """Rows of ``per_position`` [batch, positions, width] at each column's real-token position: [batch,
    seq, width] for the call's columns (a call continuing a KV cache starts past position 0)."""
    positions = call.real.clamp(min=0).to(per_position.device)
    if int(positions.max()) >= per_position.shape[1]:
        raise InterventionError(
            f"a per-position tensor covers {per_position.shape[1]} positions; this input reaches "
            f"position {int(positions.max())}"
        )
    if positions.shape[1] == per_position.shape[1] and bool(
        (positions == torch.arange(positions.shape[1], device=positions.device)).all()
    ):
        return per_position
    index = positions[..., None].expand(-1, -1, per_position.shape[-1])
    return torch.gather(per_position.expand(positions.shape[0], -1, -1), 1, index)


def _check_width(vector: torch.Tensor, x: torch.Tensor, what: str) -> None:
    if vector.shape[-1] != x.shape[-1]:
        raise InterventionError(
            f"{what} has width {vector.shape[-1]} but the hook's tensor has width {x.shape[-1]}"
        )


@dataclass(frozen=True, eq=False)
class Zero(Edit):
    """Replace the selected entries by 0."""

    def replacement(self, x: torch.Tensor, call: CallPositions) -> torch.Tensor:
        return torch.zeros_like(x)


@dataclass(frozen=True, eq=False)
class Mean(Edit):
    """Replace the selected entries by a mean activation: ``mean`` [width] (one for every position) or
    [positions, width] (the mean at each real-token position)."""

    mean: torch.Tensor

    @classmethod
    def of(cls, activations: torch.Tensor, *, per_position: bool = False, **kwargs: object) -> Mean:
        """The mean of ``activations`` [n, width] or [batch, seq, width] (per position: over the batch)."""
        values = activations.detach().double()
        if per_position:
            if values.ndim != 3:
                raise InterventionError("a per-position mean needs activations [batch, seq, width]")
            return cls(values.mean(0).float(), **kwargs)  # type: ignore[arg-type]
        return cls(values.reshape(-1, values.shape[-1]).mean(0).float(), **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_store(cls, store: object, hook: str, *, batch_size: int = 8192, **kwargs: object) -> Mean:
        """The mean over an activation store's rows at ``hook``, its outlier rows (attention sinks) left
        out as in training; float64 accumulation."""
        from featurelens.capture.store import ActivationStore

        if not isinstance(store, ActivationStore):
            store = ActivationStore.open(str(store))
        data = store.activations(hook)
        keep = np.ones(len(data), dtype=bool)
        keep[store.outlier_rows(hook)] = False
        total, count = None, 0
        for start in range(0, len(data), batch_size):
            rows = np.flatnonzero(keep[start : start + batch_size]) + start
            if rows.size:
                chunk = torch.as_tensor(np.asarray(data[rows], dtype=np.float64))
                total = chunk.sum(0) if total is None else total + chunk.sum(0)
                count += rows.size
        if total is None:
            raise InterventionError(f"the store has no rows at {hook} to average")
        return cls((total / count).float(), **kwargs)  # type: ignore[arg-type]

    def replacement(self, x: torch.Tensor, call: CallPositions) -> torch.Tensor:
        _check_width(self.mean, x, "the mean")
        mean = self.mean.to(x.device, x.dtype)
        if mean.ndim == 1:
            return mean.expand_as(x)
        positions = call.real.clamp(min=0).to(x.device)
        if int(positions.max()) >= mean.shape[0]:
            raise InterventionError(
                f"the per-position mean covers {mean.shape[0]} positions; this input reaches position "
                f"{int(positions.max())}"
            )
        return mean[positions]


@dataclass(frozen=True, eq=False)
class Patch(Edit):
    """Replace the selected entries by another run's activations at the same real-token positions:
    ``source`` [batch or 1, positions, width], row b's p-th token taking ``source[b, p]`` (unpadded or
    right-padded sources, as ``lm.capture`` returns them)."""

    source: torch.Tensor

    def replacement(self, x: torch.Tensor, call: CallPositions) -> torch.Tensor:
        source = self.source
        if source.ndim != 3:
            raise InterventionError(f"a patch source is [batch, positions, width], not {list(source.shape)}")
        _check_width(source, x, "the patch source")
        if source.shape[0] not in (1, x.shape[0]):
            raise InterventionError(
                f"the patch source has {source.shape[0]} rows; the input has {x.shape[0]} (or pass 1 row)"
            )
        return _at_positions(source.expand(x.shape[0], -1, -1), call).to(x.device)


@dataclass(frozen=True, eq=False)
class Resample(Edit):
    """Replace the selected entries by activations of other inputs: each row takes a random row of
    ``pool`` [n, width] per position, or of ``pool`` [n, positions, width] at the same position (resample
    ablation). Seeded: the same call draws the same rows."""

    pool: torch.Tensor
    seed: int = 0

    def replacement(self, x: torch.Tensor, call: CallPositions) -> torch.Tensor:
        pool = self.pool.to(x.device)
        _check_width(pool, x, "the resample pool")
        generator = torch.Generator().manual_seed(self.seed)
        if pool.ndim == 2:
            picks = torch.randint(len(pool), x.shape[:2], generator=generator)
            return pool[picks.to(x.device)]
        picks = torch.randint(len(pool), (x.shape[0],), generator=generator).to(x.device)
        patch = Patch(pool[picks])
        return patch.replacement(x, call)


@dataclass(frozen=True, eq=False)
class Add(Edit):
    """Add ``strength * direction`` ([width]) to the selected entries (a steering vector)."""

    direction: torch.Tensor
    strength: float = 1.0

    def replacement(self, x: torch.Tensor, call: CallPositions) -> torch.Tensor:
        _check_width(self.direction, x, "the direction")
        return x + self.strength * self.direction.to(x.device, x.dtype)


@dataclass(frozen=True, eq=False)
class FeatureEdit(Edit):
    """Scale (``scale={j: factor}``) and/or clamp (``clamp={j: value}``) features of ``dictionary`` at its
    hook: ``x + decode(c') - decode(c)`` with ``c = encode(x)``, so the reconstruction error is kept and a
    feature set to the value it has changes nothing. A clamp value is a number or a tensor broadcastable
    to [batch, seq]. For neurons use ``IdentityDictionary(width, hook)``."""

    dictionary: Dictionary
    scale: Mapping[int, float] = field(default_factory=dict)
    clamp: Mapping[int, float | torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dictionary.is_transcoder:
            raise InterventionError(
                "scaling or clamping features needs a dictionary that reads and writes one hook; "
                "add a transcoder's decoder row to its output hook instead"
            )
        size = self.dictionary.d_latent
        bad = [i for i in [*self.scale, *self.clamp] if not 0 <= int(i) < size]
        if bad:
            raise InterventionError(
                f"feature(s) {bad} out of range: the dictionary has features 0..{size - 1}"
            )

    def replacement(self, x: torch.Tensor, call: CallPositions) -> torch.Tensor:
        dictionary = self.dictionary
        flat = x.reshape(-1, x.shape[-1]).to(dictionary.W_dec.device, dictionary.W_dec.dtype)
        codes = dictionary.encode(flat)
        edited = codes.clone()
        for j, factor in self.scale.items():
            edited[:, j] = codes[:, j] * factor
        for j, value in self.clamp.items():
            if isinstance(value, torch.Tensor):
                edited[:, j] = value.to(codes).expand(x.shape[:2]).reshape(-1)
            else:
                edited[:, j] = value
        change = dictionary.decode(edited) - dictionary.decode(codes)
        return x + change.reshape(x.shape).to(x.device, x.dtype)


def as_edits(edits: Edit | Sequence[Edit]) -> list[Edit]:
    """One edit or several (applied in order) as a list."""
    listed = [edits] if isinstance(edits, Edit) else list(edits)
    if not all(isinstance(edit, Edit) for edit in listed):
        raise InterventionError("edits must be Zero, Mean, Resample, Patch, Add or FeatureEdit objects")
    return listed
