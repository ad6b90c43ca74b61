"""Stores, dictionaries and atlases at fsspec URLs: ``memory://`` (in this process) must give exactly what
local paths give; shards stream one file at a time; a remote result is never half-written."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import torch

import featurelens as fl
from featurelens.atlas import Atlas, AtlasJob, AtlasSettings, build_atlas
from featurelens.capture.run import CaptureConfig
from featurelens.dictionaries import Dictionary, TopKDictionary
from featurelens.dictionaries.base import DictionaryError
from featurelens.paths import RemotePath, RemotePathError, is_remote, location
from featurelens.training import TrainConfig
from featurelens.training.from_store import StoreTraining, train_on_store
from tests.atlas.conftest import plant

HOOK = "layers.1.resid_post"
MEMORY = fsspec.filesystem("memory")


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FEATURELENS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def bucket() -> Iterator[str]:
    name = f"bucket-{uuid.uuid4().hex[:8]}"
    yield f"memory://{name}"
    MEMORY.rm(f"/{name}", recursive=True)


@pytest.fixture(scope="module")
def tiny_loaded(tiny_model_dir: Path) -> fl.LanguageModel:
    return fl.load_model(str(tiny_model_dir), device="cpu")


def capture_config(out: str, **overrides: Any) -> CaptureConfig:
    base = CaptureConfig(out=out, model="tiny", hooks=(HOOK,), n_tokens=2_000, seq_len=32, shard_tokens=256)
    return dataclasses.replace(base, **overrides)


def assert_same_store(a: fl.ActivationStore, b: fl.ActivationStore) -> None:
    assert a.manifest == b.manifest
    for field in ("tokens", "docs", "positions"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    np.testing.assert_array_equal(np.asarray(a.activations(HOOK)), np.asarray(b.activations(HOOK)))
    np.testing.assert_array_equal(a.norms(HOOK), b.norms(HOOK))
    rows = np.array([5, 900, 3, 1700])
    np.testing.assert_array_equal(a.activations(HOOK)[rows], b.activations(HOOK)[rows])
    for x, y in zip(a.iter_batches(HOOK, 100, seed=3), b.iter_batches(HOOK, 100, seed=3), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_paths_and_file_urls_stay_local_and_other_urls_are_remote(tmp_path: Path) -> None:
    assert location(f"file://{tmp_path}/acts") == tmp_path / "acts" == location(str(tmp_path / "acts"))
    assert not is_remote("runs/acts") and not is_remote(f"file://{tmp_path}") and is_remote("s3://b/acts")
    remote = location("memory://b/acts")
    assert isinstance(remote, RemotePath) and (remote / "manifest.json").name == "manifest.json"


def test_a_store_captured_to_memory_equals_the_local_one(
    tmp_path: Path, tiny_loaded: fl.LanguageModel, bucket: str
) -> None:
    local, remote = capture_config(str(tmp_path / "acts")), capture_config(f"{bucket}/acts")
    fl.run_capture(local, tiny_loaded)
    fl.run_capture(remote, tiny_loaded)
    store = fl.ActivationStore.open(remote.out)
    assert isinstance(store.path, RemotePath) and len(store.manifest["shards"]) == 8
    assert_same_store(fl.ActivationStore.open(local.out), store)
    assert_same_store(fl.ActivationStore.open(f"file://{tmp_path}/acts"), store)


def test_a_remote_store_streams_one_shard_file_at_a_time(
    tmp_path: Path, tiny_loaded: fl.LanguageModel, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fl.run_capture(capture_config(f"{bucket}/acts"), tiny_loaded)
    monkeypatch.setenv("FEATURELENS_CACHE", str(tmp_path / "reader"))  # a reader on another machine
    store = fl.ActivationStore.open(f"{bucket}/acts")
    assert not (tmp_path / "reader").exists()  # the manifest is read, no shard fetched
    acts = store.activations(HOOK)
    first_rows = acts[:5]
    fetched = list((tmp_path / "reader").rglob("*.npy"))
    assert [p.name for p in fetched] == [f"{HOOK}.npy"]  # shard 0's activations only
    last_rows = acts[-5:]
    assert len(list((tmp_path / "reader").rglob("*.npy"))) == 2
    local = tmp_path / "local"
    fl.run_capture(capture_config(str(local)), tiny_loaded)
    reference = np.asarray(fl.ActivationStore.open(local).activations(HOOK))
    np.testing.assert_array_equal(first_rows, reference[:5])
    np.testing.assert_array_equal(last_rows, reference[-5:])


def test_a_half_uploaded_shard_is_redone_on_resume(
    tmp_path: Path, tiny_loaded: fl.LanguageModel, bucket: str
) -> None:
    """A shard counts as written only once its tokens.npy (uploaded last) is there; the manifest says
    complete only once every shard is."""
    remote = capture_config(f"{bucket}/acts")
    fl.run_capture(remote, tiny_loaded)
    MEMORY.rm(f"/{bucket[9:]}/acts/shards/000003/tokens.npy")
    manifest = location(remote.out) / "manifest.json"
    MEMORY.pipe(manifest.path, manifest.read_bytes().replace(b'"complete": true', b'"complete": false'))
    with pytest.raises(fl.errors.StoreError, match="interrupted capture"):
        fl.ActivationStore.open(remote.out)
    result = fl.run_capture(dataclasses.replace(remote, resume=True), tiny_loaded)
    assert (result.shards_written, result.shards_skipped) == (1, 7)
    local = capture_config(str(tmp_path / "acts"))
    fl.run_capture(local, tiny_loaded)
    assert_same_store(fl.ActivationStore.open(local.out), fl.ActivationStore.open(remote.out))


def planted_topk(seed: int = 0) -> TopKDictionary:
    dictionary = TopKDictionary(16, 64, k=4, hook_in=HOOK)
    dictionary.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        dictionary.b_enc.normal_(generator=torch.Generator().manual_seed(seed + 1))
    return dictionary


@pytest.mark.parametrize("fmt", ["featurelens", "saelens", "sparsify"])
def test_a_dictionary_saved_to_memory_loads_back_equal(bucket: str, fmt: str) -> None:
    dictionary = planted_topk()
    written = dictionary.save(f"{bucket}/sae", format=fmt)
    assert isinstance(written, RemotePath) and written.is_dir()
    loaded = Dictionary.load(str(written))
    x = torch.randn(50, 16, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(loaded(x), dictionary(x))
    torch.testing.assert_close(loaded.encode(x), dictionary.encode(x))
    files = {info["name"].rsplit("/", 1)[-1]: info for info in MEMORY.ls(written.path, detail=True)}
    config = "config.json" if fmt == "featurelens" else "cfg.json"
    weights = next(name for name in files if name.endswith(".safetensors"))
    assert files[config]["created"] >= files[weights]["created"]  # the config lands last
    assert not any(name.startswith(".") for name in files)  # no temporary names left behind


def test_a_remote_dictionary_never_downloads_pickle(bucket: str, cache: Path) -> None:
    planted_topk().save(f"{bucket}/sae")
    MEMORY.pipe(f"/{bucket[9:]}/sae/model.pt", b"not loaded")
    assert Dictionary.load(f"{bucket}/sae/weights.safetensors").d_latent == 64  # a file names its folder
    assert not list(cache.rglob("*.pt"))
    MEMORY.pipe(f"/{bucket[9:]}/pickled/sae.pt", b"not loaded")
    with pytest.raises(DictionaryError, match=f"{bucket[9:]}/pickled is not a dictionary folder") as error:
        Dictionary.load(f"{bucket}/pickled")
    assert str(cache) not in str(error.value)  # the message names the URL, not the cached copy
    with pytest.raises(RemotePathError, match="does not exist"):
        Dictionary.load(f"{bucket}/nothing")


def test_an_atlas_built_from_and_to_memory_equals_the_local_one(
    tmp_path: Path, tiny_model_dir: Path, bucket: str
) -> None:
    planted = plant(tmp_path, tiny_model_dir)
    for folder in ("acts", "sae"):
        MEMORY.put(str(tmp_path / folder), f"/{bucket[9:]}/{folder}", recursive=True)
    settings = AtlasSettings(top_k=5, before=3, after=1)
    local = tmp_path / "atlas.sqlite"
    common = {"model": planted["model"], "settings": settings}
    build_atlas(AtlasJob(str(tmp_path / "sae"), str(local), acts=str(tmp_path / "acts"), **common))
    remote = AtlasJob(f"{bucket}/sae", f"{bucket}/atlas.sqlite", acts=f"{bucket}/acts", **common)
    summary = build_atlas(remote)
    assert str(summary.path) == str(location(f"{bucket}/atlas.sqlite"))
    names = [p.rsplit("/", 1)[-1] for p in MEMORY.ls(f"/{bucket[9:]}", detail=False)]
    assert names == ["acts", "atlas.sqlite", "sae"]  # no temporary name left behind
    with Atlas.open(local) as expected, Atlas.open(f"{bucket}/atlas.sqlite") as atlas:
        assert len(atlas) == len(expected) == 32
        for feature in range(32):
            assert atlas.feature(feature) == expected.feature(feature)
        assert atlas.meta["acts"] == str(location(f"{bucket}/acts"))
        assert atlas.meta["dictionary"] == str(location(f"{bucket}/sae"))
    with pytest.raises(fl.errors.AtlasError, match="already exists"):
        build_atlas(remote)


def test_training_from_and_to_memory_equals_local_training(
    tmp_path: Path, tiny_loaded: fl.LanguageModel, bucket: str
) -> None:
    fl.run_capture(capture_config(f"{bucket}/acts"), tiny_loaded)
    fl.run_capture(capture_config(str(tmp_path / "acts")), tiny_loaded)
    config = TrainConfig(k=4, expansion=2, batch_size=128, steps=20, lr=0.01, hook_in=HOOK)
    local = train_on_store(StoreTraining(acts=str(tmp_path / "acts"), out=str(tmp_path / "sae")), [config])
    remote = train_on_store(StoreTraining(acts=f"{bucket}/acts", out=f"{bucket}/sae"), [config])
    assert str(remote[0].path) == str(location(f"{bucket}/sae")) and remote[0].heldout == local[0].heldout
    names = sorted(p.rsplit("/", 1)[-1] for p in MEMORY.ls(f"/{bucket[9:]}/sae", detail=False))
    assert names == ["config.json", "training.json", "weights.safetensors"]  # no checkpoints uploaded
    trained, expected = Dictionary.load(f"{bucket}/sae"), Dictionary.load(tmp_path / "sae")
    for name, tensor in expected.state_dict().items():
        torch.testing.assert_close(trained.state_dict()[name], tensor)
    with pytest.raises(DictionaryError, match="already exists; pass --overwrite"):
        train_on_store(StoreTraining(acts=f"{bucket}/acts", out=f"{bucket}/sae"), [config])


def test_a_protocol_without_its_backend_is_one_line_naming_the_package() -> None:
    pytest.importorskip("fsspec")
    if __import__("importlib").util.find_spec("s3fs") is not None:
        pytest.skip("s3fs is installed here")
    with pytest.raises(RemotePathError, match=r"^s3:// needs the s3fs package: pip install s3fs$"):
        fl.ActivationStore.open("s3://bucket/acts")


def test_explaining_a_remote_atlas_uploads_the_explanations(
    tmp_path: Path, tiny_model_dir: Path, bucket: str
) -> None:
    from featurelens.explain import ExplainJob, explain_atlas

    planted = plant(tmp_path, tiny_model_dir)
    local = tmp_path / "atlas.sqlite"
    build_atlas(
        AtlasJob(str(tmp_path / "sae"), str(local), acts=str(tmp_path / "acts"), model=planted["model"])
    )
    MEMORY.put_file(str(local), f"/{bucket[9:]}/atlas.sqlite")
    first = explain_atlas(ExplainJob(f"{bucket}/atlas.sqlite", features="3-8"))
    again = explain_atlas(ExplainJob(f"{bucket}/atlas.sqlite", features="3-8"))  # a new run sees the upload
    assert (first.already_done, again.already_done) == (0, 6)
    assert not Path(bucket).exists()  # the explainer's cache went beside the local copy, not to "memory:/…"
    explain_atlas(ExplainJob(str(local), features="3-8"))
    with Atlas.open(local) as expected, Atlas.open(f"{bucket}/atlas.sqlite") as atlas:
        for feature in range(3, 9):
            texts = [e.text for e in atlas.feature(feature).explanations]
            assert texts and texts == [e.text for e in expected.feature(feature).explanations]
