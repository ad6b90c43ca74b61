"""EleutherAI sparsify folders: ``cfg.json`` + ``sae.safetensors``, one folder per hook point.

A sparsify checkpoint is a folder of hook-point folders (``layers.6/``, ``layers.6.mlp/``, beside its own
``config.json`` and pickled optimiser state, which are never read), each holding one TopK sparse coder. A
folder's name is the module it was trained on, as a path inside the HF model's base model.

``cfg.json`` carries the sparse coder's options and ``d_in`` (sparsify writes it and needs it to load; here it
is checked against the tensors, and taken from ``encoder.weight`` where a file lacks it). The width is
``num_latents``, or ``expansion_factor * d_in`` when that is 0. Tensors, with codes
``topk(relu((x - b_dec) @ encoder.weight.T + encoder.bias))`` (no ``- b_dec`` for a transcoder)::

    encoder.weight [d_latent, d_in]   encoder.bias [d_latent]   W_dec [d_latent, d_in]   b_dec [d_in]
    W_skip [d_in, d_in], applied as x @ W_skip.T, with skip_connection

A sparsify transcoder (``transcode``) predicts its module's output from its input, at the same width.

Hook names: ``layers.6`` <-> ``layers.6.resid_post``; ``layers.6.mlp`` <-> ``layers.6.mlp_out`` (an SAE) or
``layers.6.mlp_in`` -> ``layers.6.mlp_out`` (a transcoder); ``embed_tokens`` <-> ``embed``. Other module names
are kept; a transcoder of module ``M`` then reads ``M.input`` and writes ``M.output``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from featurelens.dictionaries.base import Dictionary, DictionaryError
from featurelens.dictionaries.formats.safetensors import (
    check_tensors,
    read_json_object,
    read_tensors,
    write_atomic,
)
from featurelens.dictionaries.registry import build_dictionary

CONFIG = "cfg.json"
WEIGHTS = "sae.safetensors"
DEFAULT_EXPANSION_FACTOR = 32  # sparsify's default, used by configs that give neither width

_LAYER = re.compile(r"(?:layers|h)[._](\d+)")
_LAYER_MLP = re.compile(r"(?:layers|h)[._](\d+)\.mlp")
_OUR_LAYER = re.compile(r"layers\.(\d+)\.(resid_post|mlp_out)")


def hooks_from_sparsify(module: str, transcode: bool) -> tuple[str, str]:
    """featurelens (hook_in, hook_out) of a sparse coder trained on sparsify module path ``module``."""
    if module == "embed_tokens" and not transcode:
        return "embed", "embed"
    if (match := _LAYER.fullmatch(module)) and not transcode:
        return (f"layers.{match.group(1)}.resid_post",) * 2
    if match := _LAYER_MLP.fullmatch(module):
        mlp = f"layers.{match.group(1)}"
        return (f"{mlp}.mlp_in" if transcode else f"{mlp}.mlp_out"), f"{mlp}.mlp_out"
    return (f"{module}.input", f"{module}.output") if transcode else (module, module)


def sparsify_module(dictionary: Dictionary) -> str:
    """The sparsify module path that names ``dictionary``'s folder (inverse of `hooks_from_sparsify`)."""
    hook_in, hook_out = dictionary.hook_in, dictionary.hook_out
    if not dictionary.is_transcoder:
        if hook_in == "embed":
            return "embed_tokens"
        match = _OUR_LAYER.fullmatch(hook_in)
        if match:
            return f"layers.{match.group(1)}" + (".mlp" if match.group(2) == "mlp_out" else "")
        return hook_in
    match = re.fullmatch(r"layers\.(\d+)\.mlp_in", hook_in)
    if match and hook_out == f"layers.{match.group(1)}.mlp_out":
        return f"layers.{match.group(1)}.mlp"
    if hook_in.endswith(".input") and hook_out == hook_in.removesuffix(".input") + ".output":
        return hook_in.removesuffix(".input")
    raise DictionaryError(
        f"sparsify names a transcoder by the one module it replaces; {hook_in!r} -> {hook_out!r} is not "
        "a module's input and output (e.g. layers.3.mlp_in -> layers.3.mlp_out)"
    )


def sparsify_folders(path: Path) -> list[Path]:
    """The hook-point folders (``cfg.json`` + ``sae.safetensors``) directly inside checkpoint ``path``."""
    folders = [p for p in path.iterdir() if p.is_dir() and (p / CONFIG).is_file() and (p / WEIGHTS).is_file()]
    return sorted(folders, key=lambda p: [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", p.name)])


def load_sparsify(path: str | Path) -> Dictionary:
    """Load the sparsify hook-point folder ``path`` as a featurelens `TopKDictionary`."""
    path = Path(path).resolve()
    config_path, weights_path = path / CONFIG, path / WEIGHTS
    if not config_path.is_file():
        raise DictionaryError(f"{path} has no {CONFIG}; a sparsify folder holds {CONFIG} + {WEIGHTS}")
    if not weights_path.is_file():
        raise DictionaryError(f"{path} has no {WEIGHTS}; sparsify weights are read only from safetensors")
    config = read_json_object(config_path)
    activation = config.get("activation", "topk")
    if activation != "topk" or config.get("signed"):
        kind = "signed topk" if activation == "topk" else repr(activation)
        raise DictionaryError(f"{config_path}: activation {kind} has no featurelens equivalent; read: topk")
    tensors = read_tensors(weights_path)
    encoder = tensors.get("encoder.weight")
    d_in = config.get("d_in", encoder.shape[-1] if encoder is not None and encoder.ndim == 2 else 0)
    _check_positive_int(d_in, "d_in", config_path)
    expansion = config.get("expansion_factor", DEFAULT_EXPANSION_FACTOR)
    d_latent = config.get("num_latents") or (expansion * d_in if isinstance(expansion, int) else None)
    _check_positive_int(d_latent, "num_latents (or expansion_factor * d_in)", config_path)
    k = config.get("k")
    _check_positive_int(k, "k", config_path)
    transcode, skip = bool(config.get("transcode", False)), bool(config.get("skip_connection", False))
    shapes = {
        "encoder.weight": (d_latent, d_in),
        "encoder.bias": (d_latent,),
        "W_dec": (d_latent, d_in),
        "b_dec": (d_in,),
    }
    if skip:
        shapes["W_skip"] = (d_in, d_in)
    kind = "transcoder" if transcode else "SAE"
    what = f"a sparsify TopK {kind} with d_in={d_in}, num_latents={d_latent}"
    check_tensors(tensors, shapes, weights_path, what + (" and a skip connection" if skip else ""))
    hook_in, hook_out = hooks_from_sparsify(path.name, transcode)
    fields = {"arch": "topk", "d_in": d_in, "d_latent": d_latent, "k": k, "skip": skip}
    dictionary = build_dictionary({**fields, "hook_in": hook_in, "hook_out": hook_out})
    if dictionary.is_transcoder != transcode:
        raise DictionaryError(
            f"{path}: hook names {hook_in!r} -> {hook_out!r} contradict transcode={transcode}"
        )
    state = dictionary.state_dict()
    state.update(
        W_enc=tensors["encoder.weight"].T,
        b_enc=tensors["encoder.bias"],
        W_dec=tensors["W_dec"],
        b_dec=tensors["b_dec"],
    )
    if skip:
        state["W_skip"] = tensors["W_skip"].T
    dictionary.load_state_dict({name: t.to(torch.float32) for name, t in state.items()})
    return dictionary


def load_sparsify_checkpoint(path: str | Path) -> dict[str, Dictionary]:
    """Every sparse coder of sparsify checkpoint folder ``path``, keyed by its module path (folder name)."""
    folders = sparsify_folders(Path(path))
    if not folders:
        raise DictionaryError(f"{path} holds no sparsify hook-point folders ({CONFIG} + {WEIGHTS})")
    return {folder.name: load_sparsify(folder) for folder in folders}


def save_sparsify(dictionary: Dictionary, path: Path) -> Path:
    """Write TopK ``dictionary`` (scales folded) into ``path/<module>/`` like sparsify; returns that folder.

    ``<module>`` is the sparsify name of its hook point (``layers.6`` for ``layers.6.resid_post``), so several
    dictionaries saved into one ``path`` make one sparsify checkpoint; a dictionary without a hook name is
    written into ``path`` itself.
    """
    d = dictionary
    if d.arch != "topk":
        raise DictionaryError(f"sparsify stores TopK sparse coders only; this dictionary is {d.arch!r}")
    if d.d_out != d.d_in:
        raise DictionaryError(f"sparsify transcoders keep their width; this one maps {d.d_in} -> {d.d_out}")
    module = sparsify_module(d) if d.hook_in else ""
    folder = path / module if module else path
    unit_rows = bool(torch.allclose(d.W_dec.norm(dim=1), torch.ones(d.d_latent), atol=1e-4))
    config: dict[str, Any] = {
        "activation": "topk",
        "expansion_factor": max(1, d.d_latent // d.d_in),  # ignored by sparsify while num_latents is set
        "normalize_decoder": unit_rows,
        "num_latents": d.d_latent,
        "k": d.config()["k"],
        "multi_topk": False,
        "skip_connection": d.W_skip is not None,
        "transcode": d.is_transcoder,
        "d_in": d.d_in,
    }
    tensors = {"encoder.weight": d.W_enc.T, "encoder.bias": d.b_enc, "W_dec": d.W_dec, "b_dec": d.b_dec}
    if d.W_skip is not None:
        tensors["W_skip"] = d.W_skip.T
    plain = {name: t.detach().to(torch.float32).contiguous().cpu() for name, t in tensors.items()}
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / WEIGHTS, lambda tmp: save_file(plain, str(tmp)))
    write_atomic(folder / CONFIG, lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n"))
    return folder


def _check_positive_int(value: Any, key: str, path: Path) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DictionaryError(f"{path}: {key} must be a positive integer, got {value!r}")
