"""SAELens and sparsify folders, checked against the real packages: same encode/decode outputs both ways."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from featurelens.dictionaries import ARCHITECTURES, Dictionary, DictionaryError, build_dictionary
from featurelens.dictionaries.formats import detect_format
from featurelens.dictionaries.formats.saelens import load_saelens
from featurelens.dictionaries.formats.sparsify import load_sparsify_checkpoint
from featurelens.errors import FeatureLensError

D_IN, D_LATENT, D_OUT = 12, 48, 10
HAS_JUMPRELU = "jumprelu" in ARCHITECTURES
MATRYOSHKA = "matryoshka" if "matryoshka" in ARCHITECTURES else "batchtopk"


@pytest.fixture(scope="module")
def sae_lens() -> ModuleType:
    return pytest.importorskip("sae_lens")


@pytest.fixture(scope="module")
def sparsify() -> ModuleType:
    return pytest.importorskip("sparsify")


def random_dictionary(arch: str, seed: int = 0, **kwargs: Any) -> Dictionary:
    """A dictionary with random weights, biases, skip and thresholds, reading ``layers.1.resid_post``."""
    fields = {"arch": arch, "d_in": D_IN, "d_latent": D_LATENT, "hook_in": "layers.1.resid_post", **kwargs}
    d = build_dictionary(fields)
    generator = torch.Generator().manual_seed(seed)
    d.reset_parameters(generator)
    with torch.no_grad():
        d.b_enc.copy_(torch.randn(D_LATENT, generator=generator) * 0.1)
        d.b_dec.copy_(torch.randn(d.d_out, generator=generator) * 0.5)
        if d.W_skip is not None:
            d.W_skip.copy_(torch.randn(D_IN, d.d_out, generator=generator) * 0.1)
        state = dict(d.named_parameters()) | dict(d.named_buffers())
        if "log_threshold" in state:  # JumpReLU: per latent
            state["log_threshold"].copy_((torch.rand(D_LATENT, generator=generator) * 0.2 + 0.05).log())
        elif "threshold" in state:  # BatchTopK family: shared
            state["threshold"].fill_(0.15)
    return d


def inputs(width: int = D_IN, seed: int = 1) -> torch.Tensor:
    return torch.randn(64, width, generator=torch.Generator().manual_seed(seed)) * 2


def folded(d: Dictionary) -> Dictionary:
    copied = copy.deepcopy(d)
    copied.fold_scale_()
    return copied


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a.float(), b.float(), atol=1e-4, rtol=1e-4)


def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    """Random values for every parameter and buffer of a SAELens SAE / sparsify coder (not unit-norm)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if "threshold" in name:
                tensor.copy_(torch.rand(tensor.shape, generator=generator, dtype=torch.float64) * 0.3)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.3)


# -- featurelens -> SAELens -> the real sae-lens package --------------------------------------------

TRANSCODER = {"d_out": D_OUT, "hook_out": "layers.1.mlp_out"}
EXPORTS: list[tuple[str, dict[str, Any], str]] = [
    ("relu", {"sparsity_coefficient": 3.0}, "StandardSAE"),
    ("topk", {"k": 6}, "TopKSAE"),
    ("batchtopk", {"k": 6}, "JumpReLUSAE"),
    ("relu", TRANSCODER, "Transcoder"),
    ("relu", {**TRANSCODER, "skip": True}, "SkipTranscoder"),
    ("batchtopk", {**TRANSCODER, "k": 6}, "JumpReLUTranscoder"),
    ("batchtopk", {**TRANSCODER, "k": 6, "skip": True}, "JumpReLUSkipTranscoder"),
]
if HAS_JUMPRELU:
    EXPORTS += [("jumprelu", {}, "JumpReLUSAE"), ("jumprelu", TRANSCODER, "JumpReLUTranscoder")]
if MATRYOSHKA == "matryoshka":
    EXPORTS += [
        ("matryoshka", {"k": 6, "prefixes": [6, 24, D_LATENT]}, "JumpReLUSAE"),
        ("matryoshka", {**TRANSCODER, "k": 6, "prefixes": [6, 24, D_LATENT]}, "JumpReLUTranscoder"),
    ]


@pytest.mark.parametrize(("arch", "kwargs", "saelens_class"), EXPORTS)
def test_saelens_export_loads_in_sae_lens_with_identical_outputs(
    tmp_path: Path, sae_lens: ModuleType, arch: str, kwargs: dict[str, Any], saelens_class: str
) -> None:
    d = random_dictionary(arch, **kwargs)
    d.set_scales_(2.0, 2.0 if not d.is_transcoder else 0.5)
    reference, x = folded(d), inputs()
    folder = d.save(tmp_path / "sae", format="saelens")
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]

    sae = sae_lens.SAE.load_from_disk(folder)
    assert type(sae).__name__ == saelens_class
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    codes = sae.encode(x)
    assert close(codes, reference.encode(x))
    assert close(sae.decode(codes), reference.decode(codes))
    assert close(sae(x), d(x))

    back = Dictionary.load(folder)  # and home again, as the same architecture
    assert type(back) is type(d) and back.config() == d.config()
    assert close(back.encode(x), reference.encode(x)) and close(back(x), d(x))


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [("topk", {**TRANSCODER, "k": 4}), ("topk", {"k": 4, "skip": True}), ("relu", {"skip": True})],
)
def test_saelens_export_refuses_what_saelens_cannot_compute(tmp_path: Path, arch: str, kwargs: Any) -> None:
    with pytest.raises(DictionaryError, match="SAELens"):
        random_dictionary(arch, **kwargs).save(tmp_path / "sae", format="saelens")


# -- SAELens written by the real package -> featurelens ---------------------------------------------


def saelens_written(sae_lens: ModuleType, case: str, folder: Path) -> tuple[torch.nn.Module, str]:
    """Build SAELens SAE ``case`` with random weights, save it with SAELens into ``folder``.

    Returns the SAELens module whose encode/decode are the reference, and the featurelens arch expected.
    """
    sl = sae_lens
    meta = sl.saes.sae.SAEMetadata(hook_name="blocks.2.hook_resid_post")
    tc_meta = sl.saes.sae.SAEMetadata(
        hook_name="blocks.2.hook_resid_mid", hook_name_out="blocks.2.hook_mlp_out"
    )
    sizes = {"d_in": D_IN, "d_sae": D_LATENT}
    tc = {**sizes, "d_out": D_OUT, "apply_b_dec_to_input": False, "metadata": tc_meta}
    builders: dict[str, tuple[Any, str]] = {
        "standard": (lambda: sl.StandardSAE(sl.StandardSAEConfig(**sizes, metadata=meta)), "relu"),
        "standard_uncentred": (
            lambda: sl.StandardSAE(sl.StandardSAEConfig(**sizes, apply_b_dec_to_input=False, metadata=meta)),
            "relu",
        ),
        "standard_training": (
            lambda: sl.StandardTrainingSAE(sl.StandardTrainingSAEConfig(**sizes, l1_coefficient=3.0)),
            "relu",
        ),
        "topk": (lambda: sl.TopKSAE(sl.TopKSAEConfig(**sizes, k=5, metadata=meta)), "topk"),
        "topk_rescaled": (
            lambda: sl.TopKSAE(sl.TopKSAEConfig(**sizes, k=5, rescale_acts_by_decoder_norm=True)),
            "topk",
        ),
        "topk_training": (lambda: sl.TopKTrainingSAE(sl.TopKTrainingSAEConfig(**sizes, k=5)), "topk"),
        "jumprelu": (lambda: sl.JumpReLUSAE(sl.JumpReLUSAEConfig(**sizes, metadata=meta)), "jumprelu"),
        "batchtopk_inference": (
            lambda: sl.BatchTopKTrainingSAE(sl.BatchTopKTrainingSAEConfig(**sizes, k=5)),
            "batchtopk",
        ),
        "batchtopk_training": (
            lambda: sl.BatchTopKTrainingSAE(sl.BatchTopKTrainingSAEConfig(**sizes, k=5)),
            "batchtopk",
        ),
        "batchtopk_fractional_k": (  # no whole k to keep: its shared threshold is read as a JumpReLU
            lambda: sl.BatchTopKTrainingSAE(sl.BatchTopKTrainingSAEConfig(**sizes, k=5.5)),
            "jumprelu",
        ),
        "matryoshka_inference": (
            lambda: sl.MatryoshkaBatchTopKTrainingSAE(
                sl.MatryoshkaBatchTopKTrainingSAEConfig(**sizes, k=5, matryoshka_widths=[6, 24, D_LATENT])
            ),
            MATRYOSHKA,
        ),
        "matryoshka_training": (
            lambda: sl.MatryoshkaBatchTopKTrainingSAE(
                sl.MatryoshkaBatchTopKTrainingSAEConfig(**sizes, k=5, matryoshka_widths=[6, 24, D_LATENT])
            ),
            MATRYOSHKA,
        ),
        "transcoder": (lambda: sl.Transcoder(sl.TranscoderConfig(**tc)), "relu"),
        "skip_transcoder": (lambda: sl.SkipTranscoder(sl.SkipTranscoderConfig(**tc)), "relu"),
        "jumprelu_transcoder": (
            lambda: sl.JumpReLUTranscoder(sl.JumpReLUTranscoderConfig(**tc)),
            "jumprelu",
        ),
    }
    build, arch = builders[case]
    sae = build()
    randomize_(sae)
    if case.startswith(("batchtopk", "matryoshka")):
        sae.topk_threshold = torch.tensor(0.3, dtype=torch.float64)
        sae.save_inference_model(folder.with_name("inference"))
        reference = sl.SAE.load_from_disk(folder.with_name("inference"))
        if case.endswith(("inference", "fractional_k")):
            sae.save_inference_model(folder)
        else:
            sae.save_model(folder)
        return reference, arch
    sae.save_model(folder)
    return sae, arch


SAELENS_CASES = [
    "standard",
    "standard_uncentred",
    "standard_training",
    "topk",
    "topk_rescaled",
    "topk_training",
    "batchtopk_inference",
    "batchtopk_training",
    "matryoshka_inference",
    "matryoshka_training",
    "transcoder",
    "skip_transcoder",
    *(["jumprelu", "jumprelu_transcoder", "batchtopk_fractional_k"] if HAS_JUMPRELU else []),
]


@pytest.mark.parametrize("case", SAELENS_CASES)
def test_saelens_written_folder_loads_with_identical_outputs(
    tmp_path: Path, sae_lens: ModuleType, case: str
) -> None:
    reference, arch = saelens_written(sae_lens, case, tmp_path / "sae")
    d, x = Dictionary.load(tmp_path / "sae"), inputs()
    assert d.arch == arch
    codes = reference.encode(x)
    assert close(d.encode(x), codes)
    assert close(d.decode(codes), reference.decode(codes))
    assert close(d(x), reference(x))
    if d.is_transcoder:
        assert (d.hook_in, d.hook_out, d.d_out) == ("layers.2.resid_mid", "layers.2.mlp_out", D_OUT)
    if case == "standard_training":
        assert d.sparsity_coefficient == 3.0
    if case in ("standard", "topk"):
        assert d.hook_in == "layers.2.resid_post"
    if d.arch in ("batchtopk", "matryoshka"):
        assert d.config()["k"] == 5
    if d.arch == "matryoshka":
        assert d.config()["prefixes"] == [6, 24, D_LATENT]


def test_pre_6_saelens_config_loads_like_sae_lens_reads_it(tmp_path: Path, sae_lens: ModuleType) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    config = {
        "d_in": D_IN,
        "d_sae": D_LATENT,
        "hook_point": "blocks.3.hook_resid_pre",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 4},
        "apply_b_dec_to_input": False,
        "normalize_activations": False,
        "dtype": "float32",
        "device": "cpu",
    }
    (folder / "cfg.json").write_text(json.dumps(config))
    generator = torch.Generator().manual_seed(0)
    shapes = {"W_enc": (D_IN, D_LATENT), "b_enc": (D_LATENT,), "W_dec": (D_LATENT, D_IN), "b_dec": (D_IN,)}
    tensors = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
    save_file({**tensors, "scaling_factor": torch.ones(D_LATENT)}, str(folder / "sae_weights.safetensors"))
    reference, d, x = sae_lens.SAE.load_from_disk(folder), Dictionary.load(folder), inputs()
    assert (d.arch, d.config()["k"], d.hook_in) == ("topk", 4, "layers.3.resid_pre")
    assert close(d.encode(x), reference.encode(x)) and close(d(x), reference(x))


def test_unfolded_norm_scaling_factor_is_folded_from_the_checkpoint(
    tmp_path: Path, sae_lens: ModuleType
) -> None:
    sl, scale = sae_lens, 0.25
    config = sl.TopKTrainingSAEConfig(
        d_in=D_IN, d_sae=D_LATENT, k=5, normalize_activations="expected_average_only_in"
    )
    sae = sl.TopKTrainingSAE(config)
    randomize_(sae)
    sae.save_model(tmp_path / "ckpt")
    with pytest.raises(DictionaryError, match="norm_scaling_factor"):
        Dictionary.load(tmp_path / "ckpt")
    x = inputs()
    by_argument = load_saelens(tmp_path / "ckpt", norm_scaling_factor=scale)
    sl.training.activation_scaler.ActivationScaler(scaling_factor=scale).save(
        str(tmp_path / "ckpt" / "activation_scaler.json")
    )
    for d in (by_argument, Dictionary.load(tmp_path / "ckpt")):
        assert close(d.encode(x), sae.encode(x * scale))
        assert close(d(x), sae(x * scale) / scale)


@pytest.mark.parametrize("centred", [True, False])
def test_unfolded_whitening_is_folded_from_the_checkpoint(
    tmp_path: Path, sae_lens: ModuleType, centred: bool
) -> None:
    sl = sae_lens
    config = sl.StandardSAEConfig(
        d_in=D_IN, d_sae=D_LATENT, apply_b_dec_to_input=centred, normalize_activations="covariance_whitening"
    )
    sae = sl.StandardSAE(config)
    randomize_(sae)
    sae.save_model(tmp_path / "ckpt")
    generator = torch.Generator().manual_seed(5)
    rotation, _ = torch.linalg.qr(torch.randn(D_IN, D_IN, generator=generator, dtype=torch.float64))
    matrix = rotation * (torch.rand(D_IN, generator=generator, dtype=torch.float64) + 0.5)
    whitening = sl.training.activation_scaler.ActivationWhitening(
        mean=torch.randn(D_IN, generator=generator, dtype=torch.float64),
        matrix=matrix,
        inverse_matrix=torch.linalg.inv(matrix),
    )
    scaler = sl.training.activation_scaler.ActivationScaler(whitening=whitening)
    scaler.save(str(tmp_path / "ckpt" / "activation_scaler.json"))
    d, x = Dictionary.load(tmp_path / "ckpt"), inputs()
    assert close(d.encode(x), sae.encode(scaler.scale(x)))
    assert close(d(x), scaler.unscale(sae(scaler.scale(x))))


def test_per_input_normalisation_is_refused(tmp_path: Path, sae_lens: ModuleType) -> None:
    sl = sae_lens
    sae = sl.StandardSAE(sl.StandardSAEConfig(d_in=D_IN, d_sae=D_LATENT, normalize_activations="layer_norm"))
    sae.save_model(tmp_path / "sae")
    with pytest.raises(DictionaryError, match="layer_norm"):
        Dictionary.load(tmp_path / "sae")


def test_unsupported_saelens_architecture_is_refused(tmp_path: Path, sae_lens: ModuleType) -> None:
    sl = sae_lens
    sl.GatedSAE(sl.GatedSAEConfig(d_in=D_IN, d_sae=D_LATENT)).save_model(tmp_path / "gated")
    with pytest.raises(DictionaryError, match="architecture 'gated' has no featurelens equivalent"):
        Dictionary.load(tmp_path / "gated")


# -- sparsify ---------------------------------------------------------------------------------------


def sparsify_codes(coder: Any, x: torch.Tensor) -> torch.Tensor:
    encoded = coder.encode(x)
    return torch.zeros(x.shape[0], coder.num_latents).scatter(1, encoded.top_indices, encoded.top_acts)


SPARSIFY_EXPORTS: list[tuple[dict[str, Any], str]] = [
    ({}, "layers.1"),
    ({"skip": True}, "layers.1"),
    ({"hook_in": "layers.4.mlp_out"}, "layers.4.mlp"),
    ({"hook_in": "layers.4.mlp_in", "hook_out": "layers.4.mlp_out", "skip": True}, "layers.4.mlp"),
]


@pytest.mark.parametrize(("kwargs", "module"), SPARSIFY_EXPORTS)
def test_sparsify_export_loads_in_sparsify_with_identical_outputs(
    tmp_path: Path, sparsify: ModuleType, kwargs: dict[str, Any], module: str
) -> None:
    d = random_dictionary("topk", k=6, **kwargs)
    d.set_scales_(3.0, 3.0)
    reference, x = folded(d), inputs()
    folder = d.save(tmp_path / "ckpt", format="sparsify")
    assert folder == tmp_path / "ckpt" / module

    coder = sparsify.SparseCoder.load_from_disk(folder)
    assert coder.cfg.transcode == d.is_transcoder
    codes = sparsify_codes(coder, x)
    assert close(codes, reference.encode(x))
    encoded = coder.encode(x)
    assert close(coder.decode(encoded.top_acts, encoded.top_indices), reference.decode(codes))
    assert close(coder(x).sae_out, d(x))

    back = Dictionary.load(folder)
    assert back.config() == d.config() and close(back(x), d(x))


def test_sparsify_written_checkpoint_loads_with_identical_outputs(
    tmp_path: Path, sparsify: ModuleType
) -> None:
    coders = {
        "layers.6": sparsify.SparseCoder(D_IN, sparsify.SparseCoderConfig(k=5, num_latents=D_LATENT)),
        "layers.2.mlp": sparsify.SparseCoder(
            D_IN, sparsify.SparseCoderConfig(k=5, expansion_factor=4, transcode=True, skip_connection=True)
        ),
    }
    for module, coder in coders.items():
        randomize_(coder)
        coder.save_to_disk(tmp_path / "ckpt" / module)
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"hookpoints": list(coders)}))
    (tmp_path / "ckpt" / "state.pt").write_bytes(pickle.dumps({"global_step": 1}))

    with pytest.raises(DictionaryError, match=r"2 hook points \(layers\.2\.mlp, layers\.6\)"):
        Dictionary.load(tmp_path / "ckpt")
    loaded = load_sparsify_checkpoint(tmp_path / "ckpt")
    assert list(loaded) == ["layers.2.mlp", "layers.6"]
    assert (loaded["layers.6"].hook_in, loaded["layers.6"].is_transcoder) == ("layers.6.resid_post", False)
    transcoder = loaded["layers.2.mlp"]
    assert (transcoder.hook_in, transcoder.hook_out, transcoder.d_latent) == (
        "layers.2.mlp_in",
        "layers.2.mlp_out",
        4 * D_IN,
    )
    x = inputs()
    for module, coder in coders.items():
        d = Dictionary.load(tmp_path / "ckpt" / module)
        codes = sparsify_codes(coder, x)
        assert close(d.encode(x), codes)
        assert close(d(x), coder(x).sae_out)


def test_sparsify_config_without_d_in_takes_it_from_the_tensors(tmp_path: Path) -> None:
    folder = random_dictionary("topk", k=6).save(tmp_path / "ckpt", format="sparsify")
    config = json.loads((folder / "cfg.json").read_text())
    del config["d_in"]
    (folder / "cfg.json").write_text(json.dumps(config))
    assert Dictionary.load(folder).d_in == D_IN
    (folder / "cfg.json").write_text(json.dumps({**config, "activation": "groupmax"}))
    with pytest.raises(DictionaryError, match="groupmax"):
        Dictionary.load(folder)


def test_sparsify_export_refuses_non_topk(tmp_path: Path) -> None:
    with pytest.raises(DictionaryError, match="TopK"):
        random_dictionary("relu").save(tmp_path / "ckpt", format="sparsify")
    with pytest.raises(DictionaryError, match="keep their width"):
        random_dictionary("topk", k=4, **TRANSCODER).save(tmp_path / "ckpt", format="sparsify")


# -- detection and bad files ------------------------------------------------------------------------

# format -> (weights file name inside the written folder, a bias tensor name)
FORMAT_FILES = {
    "featurelens": ("weights.safetensors", "b_enc"),
    "saelens": ("sae_weights.safetensors", "b_enc"),
    "sparsify": ("sae.safetensors", "encoder.bias"),
}


def written(tmp_path: Path, fmt: str) -> Path:
    return random_dictionary("topk", k=6).save(tmp_path / fmt, format=fmt)


def assert_one_line_error(path: Path, match: str) -> None:
    with pytest.raises(DictionaryError, match=match) as info:
        Dictionary.load(path)
    assert isinstance(info.value, FeatureLensError) and "\n" not in str(info.value)


@pytest.mark.parametrize("fmt", sorted(FORMAT_FILES))
def test_format_is_detected_from_the_files(tmp_path: Path, fmt: str) -> None:
    folder = written(tmp_path, fmt)
    assert detect_format(folder) == (fmt, folder)
    assert detect_format(folder / FORMAT_FILES[fmt][0]) == (fmt, folder)
    if fmt == "sparsify":  # a checkpoint with one hook point resolves to it
        assert detect_format(tmp_path / fmt) == (fmt, folder)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt"])
def test_pickle_files_are_refused(tmp_path: Path, suffix: str) -> None:
    pickled = tmp_path / f"sae{suffix}"
    pickled.write_bytes(pickle.dumps({"W_enc": torch.zeros(2, 2)}))
    assert_one_line_error(pickled, "pickle")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / f"sae_weights{suffix}").write_bytes(pickled.read_bytes())
    assert_one_line_error(folder, "pickle")
    (folder / "cfg.json").write_text(json.dumps({"d_in": 2, "d_sae": 2}))  # an old SAELens folder
    assert_one_line_error(folder, "pickle")


@pytest.mark.parametrize("fmt", sorted(FORMAT_FILES))
def test_corrupt_safetensors_are_refused(tmp_path: Path, fmt: str) -> None:
    folder = written(tmp_path, fmt)
    weights = folder / FORMAT_FILES[fmt][0]
    weights.write_bytes(weights.read_bytes()[:100])
    assert_one_line_error(folder, "not a readable safetensors")
    weights.write_bytes(pickle.dumps({"W_enc": torch.zeros(2, 2)}))
    assert_one_line_error(folder, "not a readable safetensors")


@pytest.mark.parametrize("fmt", sorted(FORMAT_FILES))
def test_missing_and_misshapen_tensors_are_refused(tmp_path: Path, fmt: str) -> None:
    folder = written(tmp_path, fmt)
    weights_name, bias = FORMAT_FILES[fmt]
    weights = folder / weights_name
    tensors = load_file(str(weights))
    save_file({name: t for name, t in tensors.items() if name != bias}, str(weights))
    assert_one_line_error(folder, "lacks|do not match")
    save_file({**tensors, "W_dec": torch.zeros(D_LATENT, D_IN + 1)}, str(weights))
    assert_one_line_error(folder, "shape|do not match")


def test_folder_of_something_else_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert_one_line_error(tmp_path, "not a dictionary folder")
    assert_one_line_error(tmp_path / "missing", "does not exist")
    with pytest.raises(DictionaryError, match="unknown dictionary format 'gguf'"):
        random_dictionary("topk", k=4).save(tmp_path / "x", format="gguf")
