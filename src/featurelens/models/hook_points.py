"""Hook points with one meaning on every architecture, found by module structure.

Names, for every decoder layer ``i``:

==========================  =========================================================================
``embed``                   output of the token embedding (before position embeddings are added)
``layers.i.resid_pre``      the residual stream entering layer ``i``
``layers.i.attn_heads``     the input of attention's output projection: every head's output, concatenated
                            (head h is channels ``h*head_dim .. (h+1)*head_dim``)
``layers.i.attn_out``       what the attention block adds to the residual stream
``layers.i.resid_mid``      the stream between attention and MLP (sequential pre-norm layers only)
``layers.i.mlp_in``         the MLP's input (after its norm, on pre-norm models)
``layers.i.mlp_neurons``    the input of the MLP's down/output projection, e.g. ``act(gate) * up``
``layers.i.mlp_out``        what the MLP adds to the residual stream
``layers.i.resid_post``     the residual stream leaving layer ``i`` (``output_hidden_states[i + 1]``)
``final_norm``              output of the final norm (``output_hidden_states[-1]`` on HF models)
==========================  =========================================================================

Decoder layers, attention and MLP are located structurally (the ``ModuleList`` of ``num_hidden_layers``
blocks; children named or typed like attention / MLP; the one linear map inside the MLP that writes the model
width). ``resid_mid`` is offered only where a probe forward verifies ``resid_pre + attn_out == resid_mid``:
parallel-attention layers (GPT-NeoX, GPT-J, Phi) have no such point. Post-norm encoders (BERT family) need the
small declarative map in :data:`POST_NORM_LAYER_MAPS`; there ``resid_mid`` is the normed stream that feeds the
MLP and the residual identities do not hold because a LayerNorm follows each addition.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from featurelens.errors import HookError

LAYER_POINTS = (
    "resid_pre",
    "attn_heads",
    "attn_out",
    "resid_mid",
    "mlp_in",
    "mlp_neurons",
    "mlp_out",
    "resid_post",
)

_ATTENTION = re.compile(r"attn|attention", re.IGNORECASE)
_MLP = re.compile(r"mlp|feed_?forward|ffn", re.IGNORECASE)
_NORM = re.compile(r"norm|^ln", re.IGNORECASE)
_OUTPUT_PROJECTION = re.compile(r"(^|\.)(o_proj|out_proj|c_proj|dense|o|out)$")

# Post-norm encoders: per layer, hook name -> (submodule path, "input" | "output").
_BERT_LAYER = {
    "attn_heads": ("attention.output.dense", "input"),
    "attn_out": ("attention.output.dense", "output"),
    "resid_mid": ("attention", "output"),
    "mlp_in": ("intermediate", "input"),
    "mlp_neurons": ("output.dense", "input"),
    "mlp_out": ("output.dense", "output"),
}
POST_NORM_LAYER_MAPS: dict[str, dict[str, tuple[str, str]]] = {
    family: _BERT_LAYER for family in ("bert", "roberta", "xlm-roberta", "electra", "camembert")
}


@dataclass(frozen=True)
class HookPoint:
    """One named tensor of the forward pass: the input or output of ``module``.

    ``layer`` orders points in the forward pass (``-1`` for ``embed``, ``n_layers`` for ``final_norm``).
    """

    name: str
    module: nn.Module
    side: Literal["input", "output"]
    layer: int


def first_tensor(value: Any) -> torch.Tensor:
    """The hidden-state tensor inside a module's output (a tensor, tuple or ModelOutput)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    for item in value:
        if isinstance(item, torch.Tensor):
            return item
    raise HookError(f"module output of type {type(value).__name__} holds no tensor")


def hidden_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """The hidden-state tensor a module was called with (first positional, else ``hidden_states=``)."""
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return kwargs["hidden_states"]
    return first_tensor(list(kwargs.values()))


def text_config(model: nn.Module) -> Any:
    config: Any = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def find_layers(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """The decoder blocks (the shallowest ``ModuleList`` of ``num_hidden_layers`` blocks) and their parent."""
    n_layers = getattr(text_config(model), "num_hidden_layers", None)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module) > 0
        and (n_layers is None or len(module) == n_layers)
    ]
    if not candidates:
        raise HookError(
            f"no ModuleList of {n_layers} decoder layers found in {type(model).__name__}; "
            "featurelens supports transformer models whose blocks sit in one nn.ModuleList"
        )
    name, layers = min(candidates, key=lambda item: item[0].count("."))
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    return parent, layers


def _child_matching(block: nn.Module, pattern: re.Pattern[str]) -> nn.Module | None:
    for name, child in block.named_children():
        is_block = any(True for _ in child.children())  # skips norms and dropouts named after the block
        if is_block and (pattern.search(name) or pattern.search(type(child).__name__)):
            return child
    return None


def _is_norm(name: str, module: nn.Module) -> bool:
    return bool(_NORM.search(name) or _NORM.search(type(module).__name__)) and not list(module.children())


def _linear_out_features(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    if type(module).__name__ == "Conv1D":  # GPT-2's transposed linear
        return int(module.nf)  # type: ignore[arg-type]
    return None


def find_down_projection(mlp: nn.Module, d_model: int) -> nn.Module | None:
    """The single linear map inside ``mlp`` that writes the model width (None for MoE or unknown MLPs)."""
    writers = [m for m in mlp.modules() if m is not mlp and _linear_out_features(m) == d_model]
    return writers[0] if len(writers) == 1 else None


def find_output_projection(attention: nn.Module, d_model: int) -> nn.Module | None:
    """The linear map by which attention writes the model width from its concatenated heads (named like
    ``o_proj``/``out_proj``/``c_proj``/``dense``; None when no such module exists)."""
    named = [
        module
        for name, module in attention.named_modules()
        if module is not attention
        and _linear_out_features(module) == d_model
        and _OUTPUT_PROJECTION.search(name)
    ]
    return named[-1] if named else None


def _probe_ids(model: nn.Module, length: int = 6) -> torch.Tensor:
    vocab = int(getattr(text_config(model), "vocab_size", 100))
    device = next(model.parameters()).device
    return (torch.arange(1, length + 1, device=device) * 7919 % max(vocab - 1, 1) + 1).unsqueeze(0)


def call_base_model(model: nn.Module, input_ids: torch.Tensor) -> Any:
    """Run the transformer body without the LM head (logits are never needed for capture)."""
    body = getattr(model, "base_model", model)
    return body(input_ids=input_ids)


def _record_order(model: nn.Module, modules: dict[str, nn.Module]) -> tuple[list[str], dict[str, Any]]:
    """Run a tiny probe forward; return the order modules ran in and their (input, output) tensors."""
    order: list[str] = []
    seen: dict[str, Any] = {}
    handles = []
    for key, module in modules.items():

        def hook(_m: nn.Module, args: Any, kwargs: Any, output: Any, key: str = key) -> None:
            order.append(key)
            seen[key] = (hidden_input(args, kwargs), first_tensor(output))

        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.inference_mode():
            call_base_model(model, _probe_ids(model))
    finally:
        for handle in handles:
            handle.remove()
    return order, seen


@dataclass
class _Block:
    """The structurally found parts of one decoder block."""

    index: int
    block: nn.Module
    attention: nn.Module | None
    mlp: nn.Module | None
    norms: dict[str, nn.Module]
    output_projection: nn.Module | None

    def probe_modules(self) -> dict[str, nn.Module]:
        parts = {
            "block": self.block,
            "attn": self.attention,
            "attn_proj": self.output_projection,
            "mlp": self.mlp,
            **self.norms,
        }
        return {f"{self.index}:{key}": m for key, m in parts.items() if m is not None}


def _find_block(i: int, block: nn.Module, d_model: int) -> _Block:
    norms = {f"norm:{name}": m for name, m in block.named_children() if _is_norm(name, m)}
    attention = _child_matching(block, _ATTENTION)
    projection = find_output_projection(attention, d_model) if attention is not None else None
    return _Block(i, block, attention, _child_matching(block, _MLP), norms, projection)


def _verified_output_projection(part: _Block, seen: dict[str, Any]) -> nn.Module | None:
    """The attention's output projection, if its output is exactly what attention returns (so the heads'
    contributions through it sum to ``attn_out``)."""
    key = f"{part.index}:"
    if part.output_projection is None or key + "attn_proj" not in seen:
        return None
    projected, returned = seen[key + "attn_proj"][1], seen[key + "attn"][1]
    if projected.shape != returned.shape or not torch.allclose(projected, returned, atol=1e-5, rtol=1e-5):
        return None
    return part.output_projection


def _verified_resid_mid(part: _Block, order: list[str], seen: dict[str, Any]) -> nn.Module | None:
    """The norm that feeds the MLP, if its input is ``resid_pre + attn_out`` (a sequential pre-norm block)."""
    own = [key.split(":", 1)[1] for key in order if key.startswith(f"{part.index}:")]
    if "mlp" not in own or "attn" not in own or own.index("mlp") == 0:
        return None
    before_mlp = own[own.index("mlp") - 1]
    if not before_mlp.startswith("norm:"):
        return None
    key = f"{part.index}:"
    expected = seen[key + "block"][0] + seen[key + "attn"][1]
    if not torch.allclose(seen[key + before_mlp][0], expected, atol=1e-4, rtol=1e-4):
        return None
    return part.norms[before_mlp]


def _layer_points(
    part: _Block, resid_mid: nn.Module | None, projection: nn.Module | None, d_model: int
) -> Iterator[HookPoint]:
    """Hook points of one pre-norm (or parallel) decoder block."""
    i = part.index
    yield HookPoint(f"layers.{i}.resid_pre", part.block, "input", i)
    if projection is not None:
        yield HookPoint(f"layers.{i}.attn_heads", projection, "input", i)
    if part.attention is not None:
        yield HookPoint(f"layers.{i}.attn_out", part.attention, "output", i)
    if resid_mid is not None:
        yield HookPoint(f"layers.{i}.resid_mid", resid_mid, "input", i)
    if part.mlp is not None:
        yield HookPoint(f"layers.{i}.mlp_in", part.mlp, "input", i)
        down = find_down_projection(part.mlp, d_model)
        if down is not None:
            yield HookPoint(f"layers.{i}.mlp_neurons", down, "input", i)
        yield HookPoint(f"layers.{i}.mlp_out", part.mlp, "output", i)
    yield HookPoint(f"layers.{i}.resid_post", part.block, "output", i)


def _mapped_layer_points(
    i: int, block: nn.Module, layer_map: dict[str, tuple[str, str]]
) -> Iterator[HookPoint]:
    yield HookPoint(f"layers.{i}.resid_pre", block, "input", i)
    for point in LAYER_POINTS[1:-1]:
        path, side = layer_map[point]
        yield HookPoint(f"layers.{i}.{point}", block.get_submodule(path), side, i)  # type: ignore[arg-type]
    yield HookPoint(f"layers.{i}.resid_post", block, "output", i)


def find_hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """All hook points of ``model`` in forward order, keyed by their uniform name.

    One probe forward on six tokens records which modules run in which order and checks the residual
    identities that decide whether ``resid_mid`` exists.
    """
    config = text_config(model)
    d_model = int(config.hidden_size)
    body, layers = find_layers(model)
    layer_map = POST_NORM_LAYER_MAPS.get(getattr(config, "model_type", ""))
    parts = [_find_block(i, block, d_model) for i, block in enumerate(layers)]
    final_norms = {f"final:norm:{name}": m for name, m in body.named_children() if _is_norm(name, m)}
    probe: dict[str, nn.Module] = {"last": layers[-1], **final_norms}
    if layer_map is None:
        for part in parts:
            probe.update(part.probe_modules())
    order, seen = _record_order(model, probe)

    points = [HookPoint("embed", model.get_input_embeddings(), "output", -1)]  # type: ignore[operator]
    for part in parts:
        if layer_map is not None:
            points.extend(_mapped_layer_points(part.index, part.block, layer_map))
        else:
            resid_mid = _verified_resid_mid(part, order, seen)
            points.extend(_layer_points(part, resid_mid, _verified_output_projection(part, seen), d_model))
    last_run = max(i for i, key in enumerate(order) if key == "last")
    after_last = [key for key in order[last_run + 1 :] if key.startswith("final:")]
    if after_last:
        points.append(HookPoint("final_norm", final_norms[after_last[0]], "output", len(layers)))
    return {point.name: point for point in points}
