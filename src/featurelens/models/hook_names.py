"""Hook names as users write them: ``layers.<i>.<point>`` and shell-style patterns over them."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

from featurelens.errors import HookError
from featurelens.models.loading import describe_names

LAYER_HOOK = re.compile(r"^layers\.(\d+)\.(.+)$")


def layer_of(hook: str) -> int:
    """The layer index in ``layers.i.<point>`` (-1 for embed, final_norm and other non-layer hooks)."""
    match = LAYER_HOOK.match(hook)
    return int(match.group(1)) if match else -1


def point_of(hook: str) -> str:
    """``layers.3.mlp_neurons`` -> ``mlp_neurons``; other hooks are their own point."""
    match = LAYER_HOOK.match(hook)
    return match.group(2) if match else hook


def resolve_hooks(patterns: Sequence[str], available: Sequence[str]) -> list[str]:
    """Hooks matching ``patterns`` (names or shell-style patterns), ordered by layer then as available."""
    chosen: list[str] = []
    for pattern in patterns:
        matched = [name for name in available if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            raise HookError(f"no hook matches {pattern!r}; available: {describe_names(list(available))}")
        chosen.extend(name for name in matched if name not in chosen)
    order = {name: i for i, name in enumerate(available)}
    return sorted(chosen, key=lambda name: (layer_of(name), order[name]))
