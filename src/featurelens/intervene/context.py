"""One context manager over hook points: while open, every forward pass of the model (plain calls,
batches with padding, ``generate`` with a KV cache) has the given edits applied at the given positions.

Positions are real-token indices counted per row from its first non-padding token, so they mean the same
with left or right padding and under ``generate`` with a KV cache as under full recomputation: a model
pre-hook reads each call's attention mask and cache length to place the call's columns. Tokens are either
part of the prompt (the input of the first call of a generation, or of a plain forward) or *generated*;
:class:`Positions` chooses among them explicitly.

    with intervening(lm, {"layers.3.mlp_neurons": Zero(mask=channels(64, [7]))}) as run:
        logits = lm.model(input_ids).logits
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from featurelens.errors import HookError
from featurelens.intervene.edits import CallPositions, Edit, InterventionError, as_edits
from featurelens.models import LanguageModel
from featurelens.models.tracing import replacing


@dataclass(frozen=True)
class Positions:
    """Which tokens an intervention edits: ``prompt`` = ``"all"``, None (none) or real-token indices of
    the prompt (negative ones count from each row's last prompt token); ``generated`` = whether tokens made
    by ``generate`` are edited too."""

    prompt: Literal["all"] | Sequence[int] | None = "all"
    generated: bool = True

    @classmethod
    def parse(cls, spec: Positions | str | Sequence[int] | int | None) -> Positions:
        """``"all"`` (prompt and generated tokens, the default), ``"prompt"``, ``"generated"``, an index or
        a list of prompt indices, or a :class:`Positions`."""
        if isinstance(spec, Positions):
            return spec
        if spec is None or spec == "all":
            return cls()
        if spec == "prompt":
            return cls("all", generated=False)
        if spec == "generated":
            return cls(None, generated=True)
        if isinstance(spec, int):
            return cls((spec,), generated=False)
        if isinstance(spec, str):
            raise InterventionError(
                f"unknown positions {spec!r}; accepted: 'all', 'prompt', 'generated' or prompt indices"
            )
        indices = tuple(int(p) for p in spec)
        return cls(indices, generated=False)

    def select(self, call: CallPositions) -> torch.Tensor:
        """Bool [batch, seq]: the entries of one call to edit."""
        prompt = (call.real >= 0) & ~call.generated
        if self.prompt is None:
            chosen = torch.zeros_like(prompt)
        elif self.prompt == "all":
            chosen = prompt
        else:
            length = call.prompt_length[:, None]
            wanted = torch.tensor(self.prompt, dtype=torch.long, device=call.real.device)
            absolute = torch.where(wanted[None, :] < 0, wanted[None, :] + length, wanted[None, :])
            outside = (absolute < 0) | (absolute >= length)
            if bool(outside.any()):
                shortest = int(call.prompt_length.min())
                raise InterventionError(
                    f"positions {list(self.prompt)} fall outside a prompt of {shortest} tokens; "
                    f"accepted: 0..{shortest - 1} or -{shortest}..-1"
                )
            chosen = prompt & (call.real[..., None] == absolute[:, None, :]).any(-1)
        if self.generated:
            chosen = chosen | (call.generated & (call.real >= 0))
        return chosen


class _Placement:
    """Tracks where each forward call's columns sit, across the calls of one generation."""

    def __init__(self, prompt_columns: int | None) -> None:
        self.call: CallPositions | None = None
        self.fixed = prompt_columns is not None
        self.prompt_columns = prompt_columns or 0

    def before_forward(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        shape = ids.shape if isinstance(ids, torch.Tensor) else embeds.shape[:2]  # type: ignore[union-attr]
        batch, seq = int(shape[0]), int(shape[1])
        device = (ids if isinstance(ids, torch.Tensor) else embeds).device  # type: ignore[union-attr]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        mask = kwargs.get("attention_mask")
        if not isinstance(mask, torch.Tensor) or mask.ndim != 2:
            mask = torch.ones(batch, past + seq, dtype=torch.long, device=device)
        mask = mask.to(device).long()
        if past == 0 and not self.fixed:
            self.prompt_columns = seq  # a new forward or generation: its input is the prompt
        prompt_length = mask[:, : self.prompt_columns].sum(1)
        real = torch.where(mask.bool(), mask.cumsum(1) - 1, -1)[:, past : past + seq]
        columns = torch.arange(past, past + seq, device=device)
        generated = (columns >= self.prompt_columns)[None, :].expand(batch, -1)
        self.call = CallPositions(real, generated, prompt_length)


@dataclass
class Intervention:
    """What an open :func:`intervening` block did: how often each hook fired."""

    fired: dict[str, list[bool]]


@contextmanager
def intervening(
    lm: LanguageModel,
    edits: Mapping[str, Edit | Sequence[Edit]],
    positions: Positions | str | Sequence[int] | int | None = "all",
    *,
    prompt_columns: int | None = None,
) -> Iterator[Intervention]:
    """While open, apply ``edits`` (hook name -> an edit or several, in order) at ``positions`` on every
    forward pass of ``lm.model``. Raises :class:`HookError` at exit if a hook never fired; an unknown hook
    fails at once with the valid names.

    A call without a KV cache starts a new prompt unless ``prompt_columns`` fixes the prompt's width
    (generation that recomputes the whole sequence each step passes it, so later columns count as
    generated)."""
    chosen = Positions.parse(positions)
    planned = {lm.hook_point(name): as_edits(listed) for name, listed in edits.items()}
    if not planned:
        raise InterventionError("no edits given; pass {hook name: edit}")
    placement = _Placement(prompt_columns)

    def apply(listed: list[Edit]) -> Any:
        def edit(x: torch.Tensor) -> torch.Tensor:
            call = placement.call
            if call is None or call.real.shape != x.shape[:2]:
                raise InterventionError(
                    f"the hook's tensor {list(x.shape)} does not match the call's tokens; interventions "
                    "need hook tensors shaped [batch, seq, width]"
                )
            selected = chosen.select(call)
            for one in listed:
                x = one(x, selected, call)
            return x

        return edit

    intervention = Intervention({})
    with ExitStack() as stack:
        body = getattr(lm.model, "base_model", lm.model)  # what both model(...) and lm.capture run
        handle = body.register_forward_pre_hook(placement.before_forward, with_kwargs=True)
        stack.callback(handle.remove)
        for point, listed in planned.items():
            intervention.fired[point.name] = stack.enter_context(replacing(point, apply(listed)))
        yield intervention
    silent = [name for name, fired in intervention.fired.items() if not fired]
    if silent:
        raise HookError(f"hook point(s) {', '.join(silent)} never fired inside the intervention")


def model_inputs(
    lm: LanguageModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Forward arguments for ``input_ids`` [batch, seq] on ``lm``'s device; with an ``attention_mask``,
    position ids that count real tokens, so left padding changes nothing."""
    inputs = {"input_ids": input_ids.to(lm.device)}
    if attention_mask is not None:
        mask = attention_mask.to(lm.device).long()
        inputs |= {"attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}
    return inputs


def run_with_edits(
    lm: LanguageModel,
    input_ids: torch.Tensor,
    edits: Mapping[str, Edit | Sequence[Edit]],
    positions: Positions | str | Sequence[int] | int | None = "all",
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits [batch, seq, vocab] of ``input_ids`` [batch, seq] with ``edits`` applied. Padded rows need
    ``attention_mask``; position ids then count real tokens, so left padding changes nothing."""
    with torch.inference_mode(), intervening(lm, edits, positions):
        logits: torch.Tensor = lm.model(**model_inputs(lm, input_ids, attention_mask)).logits
    return logits


@torch.no_grad()
def generate_with_edits(
    lm: LanguageModel,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    edits: Mapping[str, Edit | Sequence[Edit]] | None = None,
    positions: Positions | str | Sequence[int] | int | None = "all",
    attention_mask: torch.Tensor | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Greedy continuation [batch, seq + new] of ``input_ids`` (left-padded rows need ``attention_mask``),
    with ``edits`` at ``positions`` on every step; ``use_cache=False`` recomputes the whole sequence each
    step (same result, slower)."""
    input_ids = input_ids.to(lm.device)
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(lm.device)
    kwargs = {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "use_cache": use_cache,
        "attention_mask": mask,
        "pad_token_id": getattr(lm.tokenizer, "eos_token_id", None) or 0,
    }
    generate: Any = lm.model.generate
    if not edits:
        return generate(input_ids, **kwargs)
    with intervening(lm, edits, positions, prompt_columns=input_ids.shape[1]):
        return generate(input_ids, **kwargs)
