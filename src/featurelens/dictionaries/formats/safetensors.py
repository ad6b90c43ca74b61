"""The featurelens dictionary folder: ``weights.safetensors`` + ``config.json``, nothing else is read.

Each file is written under a temporary name and renamed into place, weights first and config last, so a
folder with a config always has whole weights. Pickle-based files (``.pt``, ``.bin``, ``.pkl``) are refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from featurelens.dictionaries.base import Dictionary, DictionaryError
from featurelens.dictionaries.registry import build_dictionary

FORMAT = "featurelens.dictionary"
FORMAT_VERSION = 1
WEIGHTS = "weights.safetensors"
CONFIG = "config.json"


def save_dictionary(dictionary: Dictionary, path: Path) -> Path:
    """Write ``dictionary`` (scales already folded) into folder ``path``; returns ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().contiguous().cpu() for name, t in dictionary.state_dict().items()}
    config = {"format": FORMAT, "version": FORMAT_VERSION, **dictionary.config()}
    write_atomic(path / WEIGHTS, lambda tmp: save_file(tensors, str(tmp)))
    write_atomic(path / CONFIG, lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n"))
    return path


def write_atomic(target: Path, write: Callable[[Path], object]) -> None:
    """Run ``write(tmp)`` on a temporary name beside ``target``, then rename it into place."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def load_dictionary(path: Path) -> Dictionary:
    """Load the dictionary folder ``path`` (or its ``weights.safetensors`` / ``config.json``)."""
    if path.is_file() and path.name in (WEIGHTS, CONFIG):
        path = path.parent
    if not path.is_dir():
        suffix = f" ({path.suffix} files may hold pickle and are never loaded)" if path.suffix else ""
        raise DictionaryError(f"{path} is not a dictionary folder with {WEIGHTS} + {CONFIG}{suffix}")
    config = _read_config(path / CONFIG)
    dictionary = build_dictionary({k: v for k, v in config.items() if k not in ("format", "version")})
    weights = path / WEIGHTS
    if not weights.is_file():
        raise DictionaryError(f"{path} has no {WEIGHTS}; featurelens loads weights only from safetensors")
    tensors = read_tensors(weights)
    expected = dictionary.state_dict()
    if set(tensors) != set(expected) or any(tensors[n].shape != t.shape for n, t in expected.items()):
        got = {n: list(t.shape) for n, t in tensors.items()}
        raise DictionaryError(f"{weights} tensors {got} do not match config {path / CONFIG}")
    dictionary.load_state_dict({n: t.to(torch.float32) for n, t in tensors.items()})
    return dictionary


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors file ``path``; anything unreadable is a `DictionaryError`."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DictionaryError(f"{path} is not a readable safetensors file ({reason})") from None


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in file ``path``; anything else is a `DictionaryError`."""
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DictionaryError(f"{path} is not readable JSON ({error})") from None
    if not isinstance(config, dict):
        raise DictionaryError(f"{path} holds JSON {type(config).__name__}, expected an object")
    return config


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DictionaryError(f"{path.parent} has no {CONFIG}; is it a featurelens dictionary folder?")
    config = read_json_object(path)
    if config.get("format") != FORMAT:
        raise DictionaryError(f"{path} is not a {FORMAT} config (format={config.get('format')!r})")
    if config.get("version") != FORMAT_VERSION:
        raise DictionaryError(
            f"{path} has format version {config.get('version')!r}; this reads {FORMAT_VERSION}"
        )
    return config


def check_tensors(
    tensors: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]], path: Path, what: str
) -> None:
    """Refuse missing, unexpected or wrongly shaped tensors; ``shapes`` maps each expected name to its shape.

    ``what`` names the dictionary the shapes come from, e.g. ``"a SAELens topk SAE with d_in=8, d_sae=16"``.
    """
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        raise DictionaryError(f"{path} lacks tensors {missing}; {what} holds {sorted(shapes)}")
    extra = sorted(set(tensors) - set(shapes))
    if extra:
        raise DictionaryError(f"{path} has unexpected tensors {extra}; {what} holds {sorted(shapes)}")
    for name, shape in shapes.items():
        if tuple(tensors[name].shape) != shape:
            raise DictionaryError(
                f"{path} tensor {name!r} has shape {list(tensors[name].shape)}, expected {list(shape)} "
                f"for {what}"
            )
