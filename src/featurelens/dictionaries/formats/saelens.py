"""SAELens dictionary folders: ``cfg.json`` + ``sae_weights.safetensors``; nothing else is read but
``activation_scaler.json`` / ``activation_whitening.safetensors`` of a training checkpoint.

Reading covers the configs SAELens 6 writes (``architecture``, ``metadata.hook_name``; inference and training
variants) and the older flat ones (``hook_point``, ``activation_fn_str``, boolean ``normalize_activations``).
Each SAELens convention that a featurelens `Dictionary` expresses differently is folded into the weights, so
encode and decode give SAELens' numbers on the same raw activations:

- ``apply_b_dec_to_input = false`` on an SAE (its input is not centred): ``b_enc += b_dec @ W_enc``;
- ``rescale_acts_by_decoder_norm`` (TopK / BatchTopK training): the decoder row norms move into the encoder;
- a fine-tuning ``scaling_factor`` [d_sae]: it multiplies the decoder rows;
- ``normalize_activations = "expected_average_only_in"`` / ``"covariance_whitening"`` not yet folded (a
  training checkpoint): the factor / whitening of its ``activation_scaler.json`` is folded as SAELens folds
  it at the end of training. Per-input normalisations (``layer_norm``, ``constant_norm_rescale``) have no
  featurelens equivalent and are refused.

Architectures, SAELens <-> featurelens: ``standard`` <-> ``relu``; ``topk`` <-> ``topk``; ``jumprelu`` <->
``jumprelu``; a ``jumprelu`` with one shared threshold whose metadata says it was trained as ``batchtopk``
or ``matryoshka_batchtopk`` (how SAELens saves those for inference) <-> ``batchtopk`` / ``matryoshka``, and
their training checkpoints (a scalar ``topk_threshold``) -> the same; ``transcoder`` / ``skip_transcoder``
<-> ReLU transcoders; ``jumprelu_(skip_)transcoder`` <-> JumpReLU / BatchTopK / Matryoshka transcoders.

Hook names are translated between TransformerLens (``blocks.3.hook_resid_post``) and featurelens
(``layers.3.resid_post``) for the points that name the same tensor; others are kept verbatim. A
TransformerLens model loaded with its default weight processing centres the residual stream, so an SAE
trained on one sees a shifted tensor: the model settings are the user's to match.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
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
from featurelens.dictionaries.registry import ARCHITECTURES, build_dictionary

CONFIG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
SCALER = "activation_scaler.json"
WHITENING = "activation_whitening.safetensors"
# The config layout written here. SAELens reads a config without a version as a pre-6 one.
SAELENS_CONFIG_VERSION = "6.0.0"

# SAELens architecture -> (featurelens activation, is a transcoder, has W_skip).
_ARCHITECTURES: dict[str, tuple[str, bool, bool]] = {
    "standard": ("relu", False, False),
    "topk": ("topk", False, False),
    "jumprelu": ("jumprelu", False, False),
    "batchtopk": ("batchtopk", False, False),  # training checkpoints, with a scalar topk_threshold
    "matryoshka_batchtopk": ("batchtopk", False, False),
    "transcoder": ("relu", True, False),
    "skip_transcoder": ("relu", True, True),
    "jumprelu_transcoder": ("jumprelu", True, False),
    "jumprelu_skip_transcoder": ("jumprelu", True, True),
}
# SAELens training architecture -> the featurelens one its shared inference threshold belongs to.
_TRAINED_AS = {"batchtopk": "batchtopk", "matryoshka_batchtopk": "matryoshka"}
_NORMALIZATIONS = ("none", "expected_average_only_in", "covariance_whitening")

# TransformerLens hook of block i -> featurelens hook point of layer i (the same tensor on HF weights).
_TL_LAYER_POINTS = {
    "hook_resid_pre": "resid_pre",
    "hook_resid_mid": "resid_mid",
    "hook_resid_post": "resid_post",
    "hook_attn_out": "attn_out",
    "hook_mlp_out": "mlp_out",
    "mlp.hook_post": "mlp_neurons",
}
_OUR_LAYER_POINTS = {ours: tl for tl, ours in _TL_LAYER_POINTS.items()}
_TL_HOOK = re.compile(r"blocks\.(\d+)\.(.+)")
_OUR_HOOK = re.compile(r"layers\.(\d+)\.(.+)")


def hook_from_transformer_lens(name: str) -> str:
    """featurelens hook name for TransformerLens hook ``name`` (``blocks.3.hook_mlp_out`` ->
    ``layers.3.mlp_out``); names without an equivalent are returned unchanged."""
    if name == "hook_embed":
        return "embed"
    match = _TL_HOOK.fullmatch(name)
    if match and match.group(2) in _TL_LAYER_POINTS:
        return f"layers.{match.group(1)}.{_TL_LAYER_POINTS[match.group(2)]}"
    return name


def hook_to_transformer_lens(name: str) -> str:
    """TransformerLens hook name for featurelens hook ``name`` (inverse of `hook_from_transformer_lens`)."""
    if name == "embed":
        return "hook_embed"
    match = _OUR_HOOK.fullmatch(name)
    if match and match.group(2) in _OUR_LAYER_POINTS:
        return f"blocks.{match.group(1)}.{_OUR_LAYER_POINTS[match.group(2)]}"
    return name


def output_hook_for(hook_in: str, hook_out: str) -> str:
    """A transcoder's output hook, made distinct from ``hook_in`` when a file names none (featurelens tells
    a transcoder from an SAE by its two hooks)."""
    return hook_out if hook_out and hook_out != hook_in else f"{hook_in}.output"


# -- reading --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SAELensSpec:
    """What a SAELens ``cfg.json`` says, in featurelens terms."""

    architecture: str  # the SAELens name
    activation: str  # relu | topk | jumprelu | batchtopk
    transcoder: bool
    skip: bool
    d_in: int
    d_sae: int
    d_out: int
    hook_in: str
    hook_out: str
    k: int | None  # topk; for thresholds shared by all latents, the k they were trained with (if whole)
    trained_as: str | None  # the featurelens architecture of a shared threshold (batchtopk, matryoshka)
    prefixes: list[int] | None  # matryoshka_widths
    apply_b_dec_to_input: bool
    rescale_acts_by_decoder_norm: bool
    normalize_activations: str
    l1_coefficient: float | None

    def describe(self) -> str:
        width = f"d_in={self.d_in}, d_sae={self.d_sae}" + (f", d_out={self.d_out}" if self.transcoder else "")
        return f"a SAELens {self.architecture} with {width}"

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Tensor name -> shape in ``sae_weights.safetensors``."""
        shapes: dict[str, tuple[int, ...]] = {
            "W_enc": (self.d_in, self.d_sae),
            "b_enc": (self.d_sae,),
            "W_dec": (self.d_sae, self.d_out),
            "b_dec": (self.d_out,),
        }
        if self.skip:
            shapes["W_skip"] = (self.d_out, self.d_in)
        if self.activation == "jumprelu":
            shapes["threshold"] = (self.d_sae,)
        if self.architecture in _TRAINED_AS:
            shapes["topk_threshold"] = ()
        return shapes


def read_saelens_config(config: dict[str, Any], path: Path) -> SAELensSpec:
    """Interpret the SAELens config ``config`` read from ``path``; unrepresentable settings raise."""
    raw_metadata = config.get("metadata")
    metadata: dict[str, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
    architecture = str(config.get("architecture", "standard"))
    activation_fn = config.get("activation_fn", config.get("activation_fn_str"))  # before SAELens 6
    fn_kwargs = config.get("activation_fn_kwargs") or {}
    if architecture == "standard" and activation_fn == "topk":
        architecture = "topk"
    elif architecture == "standard" and activation_fn not in (None, "relu"):
        raise DictionaryError(
            f"{path}: activation_fn {activation_fn!r} has no featurelens equivalent; read: relu, topk"
        )
    if fn_kwargs.get("signed"):
        raise DictionaryError(f"{path}: signed TopK has no featurelens equivalent; read: unsigned topk")
    if architecture not in _ARCHITECTURES:
        raise DictionaryError(
            f"{path}: SAELens architecture {architecture!r} has no featurelens equivalent; "
            f"read: {', '.join(sorted(_ARCHITECTURES))}"
        )
    activation, transcoder, skip = _ARCHITECTURES[architecture]
    details = metadata.get("training_architecture_details") or {}
    trained = architecture if architecture in _TRAINED_AS else metadata.get("training_architecture")
    trained_as = _TRAINED_AS.get(str(trained)) if activation in ("jumprelu", "batchtopk") else None
    k = config.get("k", fn_kwargs.get("k", details.get("k")))
    if activation == "topk" and k is None:
        raise DictionaryError(f"{path}: a SAELens {architecture} config needs 'k'")
    if activation == "topk":
        k = _whole_number(k, "k", path)
    elif trained_as is None or not isinstance(k, int | float) or k != int(k):
        k = None  # SAELens allows a fractional BatchTopK k; its shared threshold is then read as JumpReLU
    prefixes = config.get("matryoshka_widths", details.get("matryoshka_widths"))
    normalize = config.get("normalize_activations", "none")
    if isinstance(normalize, bool) or normalize is None:  # before SAELens 6 it was a flag
        normalize = "expected_average_only_in" if normalize else "none"
    if normalize not in _NORMALIZATIONS:
        raise DictionaryError(
            f"{path}: normalize_activations={normalize!r} rescales each input on its own, which a "
            f"featurelens dictionary cannot express; read: {', '.join(_NORMALIZATIONS)}"
        )
    if transcoder and normalize != "none":
        raise DictionaryError(f"{path}: a transcoder with normalize_activations={normalize!r} is not read")
    d_in, d_sae = _positive_int(config, "d_in", path), _positive_int(config, "d_sae", path)
    hook_in = str(metadata.get("hook_name") or config.get("hook_name") or config.get("hook_point") or "")
    hook_out = str(metadata.get("hook_name_out") or config.get("hook_name_out") or "")
    l1 = config.get("l1_coefficient", details.get("l1_coefficient"))
    return SAELensSpec(
        architecture=architecture,
        activation=activation,
        transcoder=transcoder,
        skip=skip,
        d_in=d_in,
        d_sae=d_sae,
        d_out=_positive_int(config, "d_out", path) if transcoder else d_in,
        hook_in=hook_from_transformer_lens(hook_in),
        hook_out=hook_from_transformer_lens(hook_out),
        k=None if k is None else int(k),
        trained_as=trained_as,
        prefixes=list(prefixes) if isinstance(prefixes, list) else None,
        apply_b_dec_to_input=bool(config.get("apply_b_dec_to_input", True)),
        rescale_acts_by_decoder_norm=bool(config.get("rescale_acts_by_decoder_norm", False)),
        normalize_activations=str(normalize),
        l1_coefficient=None if l1 is None else float(l1),
    )


def load_saelens(path: str | Path, *, norm_scaling_factor: float | None = None) -> Dictionary:
    """Load the SAELens folder ``path`` as a featurelens `Dictionary` with the same encode/decode outputs.

    ``norm_scaling_factor`` is the input scale of an SAE saved with
    ``normalize_activations="expected_average_only_in"`` whose folder has no ``activation_scaler.json``
    (SAELens keeps these factors for its pretrained releases in its own table).
    """
    path = Path(path)
    config_path, weights_path = path / CONFIG, path / WEIGHTS
    if not config_path.is_file():
        raise DictionaryError(f"{path} has no {CONFIG}; a SAELens folder holds {CONFIG} + {WEIGHTS}")
    if not weights_path.is_file():
        raise DictionaryError(
            f"{path} has no {WEIGHTS}; SAELens weights are read only from safetensors (.pt files hold pickle)"
        )
    spec = read_saelens_config(read_json_object(config_path), config_path)
    tensors = {name: t.to(torch.float64) for name, t in read_tensors(weights_path).items()}
    if "log_threshold" in tensors and "threshold" not in tensors:  # JumpReLU before SAELens 6
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    decoder_scale = tensors.pop("scaling_factor", tensors.pop("finetuning_scaling_factor", None))
    check_tensors(tensors, spec.shapes(), weights_path, spec.describe())
    if decoder_scale is not None:
        shape = {"scaling_factor": (spec.d_sae,)}
        check_tensors({"scaling_factor": decoder_scale}, shape, weights_path, spec.describe())
        tensors["W_dec"] = tensors["W_dec"] * decoder_scale[:, None]
    _fold_conventions(spec, tensors, path, norm_scaling_factor)
    return _build(spec, tensors, weights_path)


def _fold_conventions(
    spec: SAELensSpec, t: dict[str, torch.Tensor], path: Path, norm_scaling_factor: float | None
) -> None:
    """Rewrite ``t`` (float64, in place) so that featurelens' encode/decode on raw inputs match SAELens'."""
    if spec.rescale_acts_by_decoder_norm:
        norms = t["W_dec"].norm(dim=1).clamp_min(1e-8)
        t["W_enc"], t["b_enc"], t["W_dec"] = (
            t["W_enc"] * norms,
            t["b_enc"] * norms,
            t["W_dec"] / norms[:, None],
        )
    if spec.normalize_activations == "expected_average_only_in":
        scale = _input_scale(path, norm_scaling_factor)
        # The SAE saw x * scale; codes stay as SAELens gives them (as its own end-of-training fold does).
        t["W_enc"], t["W_dec"], t["b_dec"] = t["W_enc"] * scale, t["W_dec"] / scale, t["b_dec"] / scale
    elif spec.normalize_activations == "covariance_whitening":
        mean, matrix, inverse = _whitening(path, spec.d_in)
        # The SAE saw z = (x - mean) @ matrix and its outputs are mapped back by z @ inverse + mean.
        t["W_enc"] = matrix @ t["W_enc"]
        if not spec.apply_b_dec_to_input:
            t["b_enc"] = t["b_enc"] - mean @ t["W_enc"]
        t["W_dec"], t["b_dec"] = t["W_dec"] @ inverse, t["b_dec"] @ inverse + mean
    if not spec.transcoder and not spec.apply_b_dec_to_input:
        t["b_enc"] = t["b_enc"] + t["b_dec"] @ t["W_enc"]  # featurelens SAEs always centre by b_dec


def _input_scale(path: Path, norm_scaling_factor: float | None) -> float:
    scaler = path / SCALER
    factor = read_json_object(scaler).get("scaling_factor") if scaler.is_file() else None
    factor = factor if factor is not None else norm_scaling_factor
    if factor is None:
        raise DictionaryError(
            f"{path}: normalize_activations='expected_average_only_in' needs the input scale; the folder has "
            f"no {SCALER} with a scaling_factor, so pass norm_scaling_factor= to load_saelens"
        )
    if (
        isinstance(factor, bool)
        or not isinstance(factor, int | float)
        or not math.isfinite(factor)
        or factor <= 0
    ):
        raise DictionaryError(f"{path}: scaling_factor must be a positive number, got {factor!r}")
    return float(factor)


def _whitening(path: Path, d_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    file = path / WHITENING
    if not file.is_file():
        raise DictionaryError(
            f"{path}: normalize_activations='covariance_whitening' is not folded in and the folder "
            f"has no {WHITENING}"
        )
    tensors = {name: t.to(torch.float64) for name, t in read_tensors(file).items()}
    shapes = {"mean": (d_in,), "matrix": (d_in, d_in), "inverse_matrix": (d_in, d_in)}
    check_tensors(tensors, shapes, file, f"a SAELens activation whitening with d_in={d_in}")
    return tensors["mean"], tensors["matrix"], tensors["inverse_matrix"]


def _build(spec: SAELensSpec, t: dict[str, torch.Tensor], weights_path: Path) -> Dictionary:
    arch, threshold = spec.activation, None
    if spec.architecture in _TRAINED_AS:
        threshold = t["topk_threshold"].expand(spec.d_sae)
    elif arch == "jumprelu":
        threshold = t["threshold"]
    fields: dict[str, Any] = {}
    if threshold is not None:
        shared = bool((threshold == threshold[0]).all())
        if shared and spec.k is not None and spec.trained_as is not None:
            arch = spec.trained_as if spec.trained_as in ARCHITECTURES else "batchtopk"
            fields["k"] = spec.k
            if arch == "matryoshka" and spec.prefixes:  # SAELens adds a last level of d_sae if missing
                widths = spec.prefixes
                fields["prefixes"] = widths if widths[-1] == spec.d_sae else [*widths, spec.d_sae]
        elif "jumprelu" in ARCHITECTURES:
            arch = "jumprelu"
        else:
            raise DictionaryError(
                f"{weights_path}: per-latent JumpReLU thresholds need featurelens' 'jumprelu' architecture, "
                f"which this installation lacks; available: {', '.join(sorted(ARCHITECTURES))}"
            )
    elif arch == "topk":
        fields["k"] = spec.k
    elif arch == "relu" and spec.l1_coefficient is not None:
        fields["sparsity_coefficient"] = spec.l1_coefficient
    fields |= {
        "arch": arch,
        "d_in": spec.d_in,
        "d_latent": spec.d_sae,
        "hook_in": spec.hook_in,
        "hook_out": output_hook_for(spec.hook_in, spec.hook_out) if spec.transcoder else spec.hook_in,
        "skip": spec.skip,
    }
    if spec.transcoder:
        fields["d_out"] = spec.d_out
    dictionary = build_dictionary(fields)
    weights = {"W_enc": t["W_enc"], "b_enc": t["b_enc"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    if spec.skip:
        weights["W_skip"] = t["W_skip"].T
    state = dictionary.state_dict()
    if threshold is not None:
        weights.update(_threshold_state(state, threshold.clamp_min(0.0), weights_path))
    for name, tensor in weights.items():
        if name not in state or state[name].shape != tensor.shape:
            raise DictionaryError(
                f"featurelens {arch!r} has no {name} of shape {list(tensor.shape)} to take {weights_path}'s"
            )
        state[name] = tensor.to(torch.float32)
    dictionary.load_state_dict(state)
    return dictionary


def _threshold_state(
    state: dict[str, torch.Tensor], threshold: torch.Tensor, weights_path: Path
) -> dict[str, torch.Tensor]:
    """The state entries that hold ``threshold`` [d_latent] (SAELens' meaning: codes = pre where pre >
    threshold >= 0) in a featurelens dictionary with state ``state``.

    MAPPING POINT (thresholds): BatchTopK and Matryoshka hold one scalar ``threshold`` (the latents share it);
    JumpReLU holds ``log_threshold`` [d_latent], so a threshold of 0 becomes the smallest positive float.
    """
    if "threshold" in state:
        return {"threshold": threshold[0]}
    if "log_threshold" in state:
        return {"log_threshold": threshold.clamp_min(torch.finfo(torch.float32).tiny).log()}
    raise DictionaryError(f"{weights_path}: this featurelens architecture holds no threshold to take")


def _positive_int(config: dict[str, Any], key: str, path: Path) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DictionaryError(f"{path}: {key!r} must be a positive integer, got {value!r}")
    return value


def _whole_number(value: Any, key: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise DictionaryError(f"{path}: {key!r} must be a whole number, got {value!r}")
    return int(value)


# -- writing --------------------------------------------------------------------------------------


def saelens_architecture(dictionary: Dictionary) -> str:
    """The SAELens architecture that computes what ``dictionary`` computes, or a `DictionaryError`."""
    arch = dictionary.arch
    if dictionary.is_transcoder:
        names = {"relu": "transcoder", "jumprelu": "jumprelu_transcoder"}
        names |= {"batchtopk": "jumprelu_transcoder", "matryoshka": "jumprelu_transcoder"}
        if arch in names:
            skip = "skip_transcoder" if dictionary.W_skip is not None else "transcoder"
            return names[arch].replace("transcoder", skip)
        raise DictionaryError(
            f"SAELens has no {arch!r} transcoder; exportable transcoders: {', '.join(sorted(names))}"
        )
    names = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}
    names |= {"batchtopk": "jumprelu", "matryoshka": "jumprelu"}
    if dictionary.W_skip is not None:
        raise DictionaryError("SAELens SAEs have no skip connection; only transcoders export with W_skip")
    if arch not in names:
        raise DictionaryError(f"SAELens has no {arch!r} SAE; exportable: {', '.join(sorted(names))}")
    return names[arch]


def save_saelens(dictionary: Dictionary, path: Path) -> Path:
    """Write ``dictionary`` (scales already folded) as a SAELens folder ``path``; returns ``path``.

    ``SAE.load_from_disk(path)`` of SAELens then gives the same encode/decode outputs. BatchTopK is written as
    SAELens writes it: a ``jumprelu`` with one shared threshold and ``training_architecture: batchtopk``.
    """
    architecture = saelens_architecture(dictionary)
    d = dictionary
    tensors: dict[str, torch.Tensor] = {
        "W_enc": d.W_enc,
        "b_enc": d.b_enc,
        "W_dec": d.W_dec,
        "b_dec": d.b_dec,
    }
    metadata: dict[str, Any] = {
        "sae_lens_version": SAELENS_CONFIG_VERSION,
        "hook_name": hook_to_transformer_lens(d.hook_in) or None,
    }
    config: dict[str, Any] = {
        "architecture": architecture,
        "d_in": d.d_in,
        "d_sae": d.d_latent,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": not d.is_transcoder,
        "normalize_activations": "none",
        "reshape_activations": "none",
    }
    if d.is_transcoder:
        config["d_out"] = d.d_out
        metadata["hook_name_out"] = hook_to_transformer_lens(d.hook_out) or None
    if d.W_skip is not None:
        tensors["W_skip"] = d.W_skip.T
    if d.arch == "topk":
        config.update(k=d.config()["k"], rescale_acts_by_decoder_norm=False)
    elif d.arch == "relu":
        if not d.is_transcoder:
            metadata["training_architecture"] = "standard"
            metadata["training_architecture_details"] = {"l1_coefficient": d.sparsity_coefficient}
    else:
        threshold = getattr(d, "threshold", None)
        if not isinstance(threshold, torch.Tensor) or threshold.numel() not in (1, d.d_latent):
            raise DictionaryError(f"featurelens {d.arch!r} has no threshold [{d.d_latent}] to export")
        # MAPPING POINT (thresholds): see `_threshold_state`; a scalar is shared by all latents, as SAELens
        # saves BatchTopK / Matryoshka BatchTopK, whose training settings it keeps in the metadata.
        tensors["threshold"] = threshold.detach().clamp_min(0.0).expand(d.d_latent)
        trained = {"batchtopk": "batchtopk", "matryoshka": "matryoshka_batchtopk"}.get(d.arch)
        if trained is not None:
            details = {"k": d.config()["k"]}
            if d.arch == "matryoshka":
                details["matryoshka_widths"] = d.config()["prefixes"]
            metadata["training_architecture"] = trained
            metadata["training_architecture_details"] = details
    config["metadata"] = metadata
    path.mkdir(parents=True, exist_ok=True)
    plain = {name: t.detach().to(torch.float32).contiguous().cpu() for name, t in tensors.items()}
    write_atomic(path / WEIGHTS, lambda tmp: save_file(plain, str(tmp)))
    write_atomic(path / CONFIG, lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n"))
    return path
