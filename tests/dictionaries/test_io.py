import json
import pickle
from pathlib import Path

import pytest
import torch

from featurelens.dictionaries import (
    ARCHITECTURES,
    BatchTopKDictionary,
    Dictionary,
    DictionaryError,
    JumpReLUDictionary,
    build_dictionary,
)
from featurelens.errors import FeatureLensError


def make(arch: str, **kwargs: object) -> Dictionary:
    d = build_dictionary(
        {"arch": arch, "d_in": 12, "d_latent": 48, "hook_in": "layers.1.resid_post", **kwargs}
    )
    d.reset_parameters(torch.Generator().manual_seed(3))
    with torch.no_grad():
        d.b_enc.normal_(0, 0.1)
        d.b_dec.normal_(0, 0.5)
        if isinstance(d, JumpReLUDictionary):  # per-latent thresholds, so folding must scale each one
            d.log_threshold.normal_(0, 0.5)
        if isinstance(d, BatchTopKDictionary):  # as if estimated in training
            d.threshold.fill_(1.5)
    return d


# Every architecture with its defaults, plus non-default hyper-parameters that the config must carry.
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    **{arch: (arch, {}) for arch in ARCHITECTURES},
    "jumprelu-bandwidth": ("jumprelu", {"bandwidth": 0.05, "sparsity_coefficient": 0.3}),
    "matryoshka-prefixes": ("matryoshka", {"k": 6, "prefixes": [6, 24, 48]}),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_save_load_gives_identical_outputs_with_scale_folded(tmp_path: Path, variant: str) -> None:
    arch, kwargs = VARIANTS[variant]
    d = make(arch, **kwargs)
    d.set_scales_(2.5, 2.5)
    x = torch.randn(20, 12) * 3
    expected_codes, expected = d.encode(x) / 2.5, d(x)
    assert 0 < float((expected_codes != 0).float().mean()) < 1  # the sparsifier and its threshold act
    loaded = Dictionary.load(d.save(tmp_path / "sae"))
    assert type(loaded) is type(d)
    assert loaded.config() == d.config()
    assert float(loaded.input_scale) == 1.0
    if arch == "seminmf":  # 48 directions in 12 dimensions: the NNLS codes are not unique, and float32
        # rounding of the rescaled problem picks among near-equal solutions; what they reconstruct agrees
        assert torch.allclose(loaded(x), expected, rtol=1e-3, atol=1e-3)
    else:
        assert torch.allclose(loaded(x), expected, atol=1e-5)
        assert torch.allclose(loaded.encode(x), expected_codes, atol=1e-5)
    assert torch.allclose(loaded.W_dec.norm(dim=1), torch.ones(48), atol=1e-5)
    assert (loaded.hook_in, loaded.d_latent) == ("layers.1.resid_post", 48)
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == ["config.json", "weights.safetensors"]


@pytest.mark.parametrize(("arch", "kwargs"), [("topk", {"k": 4}), ("jumprelu", {}), ("matryoshka", {"k": 4})])
def test_transcoder_with_skip_round_trips_with_different_scales(
    tmp_path: Path, arch: str, kwargs: dict[str, object]
) -> None:
    d = make(arch, d_out=8, hook_out="layers.1.mlp_out", skip=True, **kwargs)
    with torch.no_grad():
        d.W_skip.normal_()
    d.set_scales_(2.0, 0.5)
    x = torch.randn(10, 12)
    loaded = Dictionary.load(d.save(tmp_path / "tc"))
    assert loaded.is_transcoder and loaded.hook_out == "layers.1.mlp_out"
    assert torch.allclose(loaded(x), d(x), atol=1e-4)


def test_pickle_file_is_refused_with_one_line_error(tmp_path: Path) -> None:
    pickled = tmp_path / "sae.pt"
    pickled.write_bytes(pickle.dumps({"W_enc": torch.zeros(2, 2)}))
    with pytest.raises(DictionaryError, match="pickle") as info:
        Dictionary.load(pickled)
    assert isinstance(info.value, FeatureLensError) and "\n" not in str(info.value)


def test_pickle_weights_in_a_folder_are_refused(tmp_path: Path) -> None:
    folder = make("topk", k=4).save(tmp_path / "sae")
    (folder / "weights.safetensors").write_bytes(pickle.dumps({"W_enc": torch.zeros(2, 2)}))
    with pytest.raises(DictionaryError, match="not a readable safetensors"):
        Dictionary.load(folder)


def test_bad_config_and_mismatched_weights_are_refused(tmp_path: Path) -> None:
    folder = make("topk", k=4).save(tmp_path / "sae")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "d_latent": 64}))
    with pytest.raises(DictionaryError, match="do not match"):
        Dictionary.load(folder)
    (folder / "config.json").write_text(json.dumps({**config, "arch": "nope"}))
    with pytest.raises(DictionaryError, match="unknown architecture"):
        Dictionary.load(folder)
    (folder / "config.json").unlink()
    with pytest.raises(DictionaryError, match=r"no config\.json"):
        Dictionary.load(folder)


@pytest.mark.parametrize("k", [0, -1, 48, 100])
def test_bad_k_is_refused(k: int) -> None:
    with pytest.raises(DictionaryError, match="k must be"):
        make("topk", k=k)


def test_wrong_input_width_is_refused() -> None:
    with pytest.raises(DictionaryError, match=r"\[n, 12\]"):
        make("topk", k=4).encode(torch.zeros(3, 5))
