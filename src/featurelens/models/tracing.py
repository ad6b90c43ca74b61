"""Read hook points during a forward pass (stopping once the last has fired, or recording along a full
one), or replace one of them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from featurelens.errors import HookError
from featurelens.models.hook_points import HookPoint, call_base_model, first_tensor, hidden_input


class _StopForward(Exception):
    """Raised inside a hook once every requested point has been recorded."""


def capture_points(
    model: nn.Module, points: Sequence[HookPoint], input_ids: torch.Tensor, *, stop_early: bool = True
) -> dict[str, torch.Tensor]:
    """Run ``model`` on ``input_ids`` [batch, seq] and return each point's tensor [batch, seq, width].

    With ``stop_early`` the forward pass is abandoned right after the last requested point fires, so
    hooking layer 15 of 30 costs about half a forward. A point that never fires raises :class:`HookError`.
    """
    recorded: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name: str, tensor: torch.Tensor) -> None:
        recorded[name] = tensor.detach()
        if stop_early and len(recorded) == len(points):
            raise _StopForward

    for point in points:
        if point.side == "input":

            def pre_hook(_m: nn.Module, args: Any, kwargs: Any, name: str = point.name) -> None:
                keep(name, hidden_input(args, kwargs))

            handles.append(point.module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        else:

            def post_hook(_m: nn.Module, _args: Any, output: Any, name: str = point.name) -> None:
                keep(name, first_tensor(output))

            handles.append(point.module.register_forward_hook(post_hook))
    try:
        with torch.inference_mode():
            call_base_model(model, input_ids)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [point.name for point in points if point.name not in recorded]
    if missing:
        raise HookError(f"hook point(s) {', '.join(missing)} did not fire during the forward pass")
    return recorded


def _replace_first_tensor(value: Any, new: torch.Tensor) -> Any:
    if isinstance(value, torch.Tensor):
        return new
    if isinstance(value, tuple):
        return (new, *value[1:])
    raise HookError(f"cannot replace a module output of type {type(value).__name__}")


@contextmanager
def replacing(point: HookPoint, edit: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[list[bool]]:
    """While open, every forward pass sees ``point``'s tensor replaced by ``edit(tensor)`` [batch, seq,
    width]. Yields a list that gains an entry each time the point fires."""
    fired: list[bool] = []

    def edit_output(_m: nn.Module, _args: Any, output: Any) -> Any:
        fired.append(True)
        return _replace_first_tensor(output, edit(first_tensor(output)))

    def edit_input(_m: nn.Module, args: Any, kwargs: Any) -> Any:
        fired.append(True)
        if args and isinstance(args[0], torch.Tensor):
            return (edit(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": edit(hidden_input(args, kwargs))}

    if point.side == "output":
        handle = point.module.register_forward_hook(edit_output)
    else:
        handle = point.module.register_forward_pre_hook(edit_input, with_kwargs=True)
    try:
        yield fired
    finally:
        handle.remove()


@contextmanager
def recording(points: Sequence[HookPoint], *, retain_grad: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """While open, each forward pass (with logits, padding, a KV cache) stores the tensor [batch, seq,
    width] of every one of ``points`` in the yielded dict, by name; with ``retain_grad`` each keeps its
    gradient after ``backward``."""
    kept: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def edit(x: torch.Tensor) -> torch.Tensor:
            if retain_grad:
                x.retain_grad()
            kept[name] = x
            return x

        return edit

    with ExitStack() as stack:
        for point in points:
            stack.enter_context(replacing(point, keep(point.name)))
        yield kept


def run_with_replacement(
    model: nn.Module, point: HookPoint, edit: Callable[[torch.Tensor], torch.Tensor], input_ids: torch.Tensor
) -> torch.Tensor:
    """Logits [batch, seq, vocab] of ``model`` with ``point``'s tensor replaced by ``edit(tensor)``.

    The edit sees and returns a tensor of the point's shape [batch, seq, width]; a point that never
    fires raises :class:`HookError`.
    """
    with replacing(point, edit) as fired, torch.inference_mode():
        logits = model(input_ids=input_ids).logits
    if not fired:
        raise HookError(f"hook point {point.name} did not fire during the forward pass")
    return logits


class _Passthrough(nn.Module):
    """Stands in for a decoder layer whose output is known in advance: returns its input unchanged."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


@contextmanager
def skipping_layers(model: nn.Module, n_layers: int) -> Iterator[None]:
    """While open, the first ``n_layers`` decoder layers pass their input through unchanged (the caller
    replaces layer ``n_layers``'s input with what they would have computed, e.g. from a cache). Decoder
    layers must return their hidden states as a tensor, as transformers >= 5 does."""
    from featurelens.models.hook_points import find_layers

    _, layers = find_layers(model)
    originals = list(layers[:n_layers])
    try:
        for i in range(n_layers):
            layers[i] = _Passthrough()
        yield
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
