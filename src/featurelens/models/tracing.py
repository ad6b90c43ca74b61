"""Record hook-point tensors during a forward pass, stopping as soon as the last one has fired."""

from __future__ import annotations

from collections.abc import Sequence
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
