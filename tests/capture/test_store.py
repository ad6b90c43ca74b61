"""The capture loop and the store: known contents, dtypes, shuffling, refusals and a full disk."""

from __future__ import annotations

import dataclasses
import errno
import json
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import featurelens as fl
from featurelens.capture import store as store_module
from featurelens.capture.run import CaptureConfig
from featurelens.corpus import documents, pack_sequences
from featurelens.errors import StoreError

HOOKS = ("layers.1.resid_post", "layers.2.mlp_neurons")


@pytest.fixture(scope="module")
def tiny_loaded(tiny_model_dir: Path) -> fl.LanguageModel:
    return fl.load_model(str(tiny_model_dir), device="cpu")


def config(tmp_path: Path, **overrides: Any) -> CaptureConfig:
    base = CaptureConfig(
        out=str(tmp_path / "acts"),
        model="tiny",
        hooks=HOOKS,
        n_tokens=2_000,
        seq_len=32,
        batch_size=4,
        shard_tokens=256,
    )
    return dataclasses.replace(base, **overrides)


def test_store_holds_exactly_the_model_activations_of_the_kept_tokens(
    tmp_path: Path, tiny_loaded: fl.LanguageModel
) -> None:
    cfg = config(tmp_path)
    fl.run_capture(cfg, tiny_loaded)
    store = fl.ActivationStore.open(cfg.out)

    sequences = list(
        islice(pack_sequences(documents(cfg.corpus), tiny_loaded.tokenizer, cfg.seq_len), cfg.n_sequences)
    )
    tokens = np.stack([s.tokens for s in sequences])
    keep = np.ones(tokens.shape, bool)
    keep[:, 0] = False
    keep &= ~np.isin(tokens, tiny_loaded.tokenizer.all_special_ids)
    expected = tiny_loaded.capture(torch.from_numpy(tokens), list(HOOKS), stop_early=False)

    assert store.n_tokens == keep.sum() and len(store.manifest["shards"]) == 8  # 63 sequences / 8 per shard
    np.testing.assert_array_equal(store.tokens, tokens[keep])
    np.testing.assert_array_equal(store.docs, np.stack([s.docs for s in sequences])[keep])
    np.testing.assert_array_equal(store.positions, np.nonzero(keep)[1])
    for hook in HOOKS:
        stored = store.activations(hook)
        assert stored.shape == (keep.sum(), expected[hook].shape[-1])
        np.testing.assert_allclose(
            np.asarray(stored), expected[hook][torch.from_numpy(keep)].numpy(), atol=1e-5
        )
        np.testing.assert_allclose(store.norms(hook), np.linalg.norm(np.asarray(stored), axis=1), rtol=1e-5)
    assert store.manifest["config"]["hooks"] == list(HOOKS) and store.manifest["dtype"] == "float32"


@pytest.mark.parametrize(("dtype", "tolerance"), [("float16", 2e-3), ("bfloat16", 1.6e-2)])
def test_half_precision_stores_round_to_the_float32_values(
    tmp_path: Path, tiny_loaded: fl.LanguageModel, dtype: str, tolerance: float
) -> None:
    full = config(tmp_path / "f32", n_tokens=300)
    half = config(tmp_path / dtype, n_tokens=300, dtype=dtype)
    fl.run_capture(full, tiny_loaded)
    fl.run_capture(half, tiny_loaded)
    reference = np.asarray(fl.ActivationStore.open(full.out).activations(HOOKS[0]))
    stored = fl.ActivationStore.open(half.out).activations(HOOKS[0])
    assert stored.dtype == (np.float16 if dtype == "float16" else np.float32) and stored.stored_dtype == dtype
    np.testing.assert_allclose(np.asarray(stored), reference, rtol=tolerance, atol=tolerance)
    assert not np.array_equal(np.asarray(stored), reference)  # it really was rounded


def test_sharded_indexing_matches_the_dense_array(tmp_path: Path, tiny_loaded: fl.LanguageModel) -> None:
    cfg = config(tmp_path)
    fl.run_capture(cfg, tiny_loaded)
    acts = fl.ActivationStore.open(cfg.out).activations(HOOKS[0])
    dense = np.asarray(acts)
    rng = np.random.default_rng(0)
    index = rng.integers(0, len(acts), 300)
    np.testing.assert_array_equal(acts[index], dense[index])
    np.testing.assert_array_equal(acts[5:400:7], dense[5:400:7])
    np.testing.assert_array_equal(acts[-1], dense[-1])
    with pytest.raises(IndexError):
        acts[len(acts)]


def test_shuffled_batches_visit_every_row_once(tmp_path: Path, tiny_loaded: fl.LanguageModel) -> None:
    cfg = config(tmp_path)
    fl.run_capture(cfg, tiny_loaded)
    store = fl.ActivationStore.open(cfg.out)
    dense = np.asarray(store.activations(HOOKS[0]))
    batches = list(store.iter_batches(HOOKS[0], 100, shuffle=True, seed=3, buffer_shards=3))
    rows = torch.cat(batches).numpy()
    assert rows.shape == dense.shape and not np.array_equal(rows, dense)
    np.testing.assert_array_equal(np.unique(rows, axis=0), np.unique(dense, axis=0))
    ordered = torch.cat(list(store.iter_batches(HOOKS[0], 100, shuffle=False))).numpy()
    np.testing.assert_array_equal(ordered, dense)
    again = torch.cat(list(store.iter_batches(HOOKS[0], 100, shuffle=True, seed=3, buffer_shards=3))).numpy()
    np.testing.assert_array_equal(again, rows)


def test_aligned_batches_pair_hooks_row_by_row_within_a_row_range(
    tmp_path: Path, tiny_loaded: fl.LanguageModel
) -> None:
    cfg = config(tmp_path)
    fl.run_capture(cfg, tiny_loaded)
    store = fl.ActivationStore.open(cfg.out)
    first, second = (np.asarray(store.activations(hook)) for hook in HOOKS)
    start, stop = 100, store.n_tokens - 300  # crosses shard boundaries at both ends
    batches = list(store.iter_aligned_batches(HOOKS, 64, seed=5, buffer_shards=2, rows=(start, stop)))
    xs, ys = (torch.cat(parts).numpy() for parts in zip(*batches, strict=True))
    assert len(xs) == stop - start
    assert all(len(x) == 64 for x, _ in batches[:-1])  # rows carry over between buffers: full batches
    # the same permutation for both hooks: each x row sits next to the y row of the same token
    pairs = np.concatenate([xs, ys], axis=1)
    expected = np.concatenate([first[start:stop], second[start:stop]], axis=1)
    assert not np.array_equal(pairs, expected)  # shuffled
    np.testing.assert_array_equal(np.unique(pairs, axis=0), np.unique(expected, axis=0))
    keep = np.random.default_rng(0).random(store.n_tokens) < 0.7  # e.g. leave norm outliers out
    kept = torch.cat([x for x, _ in store.iter_aligned_batches(HOOKS, 64, rows=(start, stop), keep=keep)])
    expected_kept = first[start:stop][keep[start:stop]]
    assert len(kept) == len(expected_kept)
    np.testing.assert_array_equal(np.unique(kept.numpy(), axis=0), np.unique(expected_kept, axis=0))
    with pytest.raises(StoreError, match="outside"):
        next(store.iter_aligned_batches(HOOKS, 64, rows=(0, store.n_tokens + 1)))


def test_outlier_rows_are_those_above_the_multiple_of_the_median(
    tmp_path: Path, tiny_loaded: fl.LanguageModel
) -> None:
    cfg = config(tmp_path, skip_positions=0, keep_special=True, outlier_multiple=1.3)
    fl.run_capture(cfg, tiny_loaded)
    store = fl.ActivationStore.open(cfg.out)
    norms = np.linalg.norm(np.asarray(store.activations(HOOKS[0])), axis=1)
    expected = np.flatnonzero(norms > 1.3 * np.median(norms))
    np.testing.assert_array_equal(store.outlier_rows(HOOKS[0]), expected)
    assert store.manifest["outliers"]["rows"][HOOKS[0]] == len(expected) > 0


class _Interrupt(Exception):
    pass


def _interrupt_after(n_calls: int) -> Any:
    calls = {"n": 0}

    def on_tokens(_tokens: int) -> None:
        calls["n"] += 1
        if calls["n"] > n_calls:
            raise _Interrupt

    return on_tokens


def test_interrupted_capture_resumes_to_the_uninterrupted_result(
    tmp_path: Path, tiny_loaded: fl.LanguageModel
) -> None:
    straight = config(tmp_path / "straight")
    fl.run_capture(straight, tiny_loaded)
    broken = config(tmp_path / "broken")
    with pytest.raises(_Interrupt):
        fl.run_capture(broken, tiny_loaded, on_tokens=_interrupt_after(9))  # dies inside shard 4 of 8
    with pytest.raises(StoreError, match="interrupted capture"):
        fl.ActivationStore.open(broken.out)
    with pytest.raises(StoreError, match="--resume"):
        fl.run_capture(broken, tiny_loaded)
    result = fl.run_capture(dataclasses.replace(broken, resume=True), tiny_loaded)
    assert result.shards_skipped == 4 and result.shards_written == 4
    a, b = fl.ActivationStore.open(straight.out), fl.ActivationStore.open(broken.out)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    for hook in HOOKS:
        np.testing.assert_array_equal(np.asarray(a.activations(hook)), np.asarray(b.activations(hook)))


def test_a_bfloat16_model_captures_its_own_activations_and_old_stores_still_resume(
    tmp_path: Path, tiny_model_dir: Path, tiny_loaded: fl.LanguageModel
) -> None:
    half = config(tmp_path, n_tokens=300, model_dtype="bfloat16", model=str(tiny_model_dir))
    fl.run_capture(half)
    store = fl.ActivationStore.open(half.out)
    assert store.manifest["config"]["model_dtype"] == "bfloat16"
    full = config(tmp_path / "fp32", n_tokens=300)
    fl.run_capture(full, tiny_loaded)
    exact = np.asarray(fl.ActivationStore.open(full.out).activations(HOOKS[0]), dtype=np.float32)
    rounded = np.asarray(store.activations(HOOKS[0]), dtype=np.float32)
    # bfloat16 keeps ~3 significant digits: close to the float32 capture, but not equal to it
    assert not np.array_equal(rounded, exact)
    np.testing.assert_allclose(rounded, exact, rtol=0.1, atol=0.1 * np.abs(exact).std())
    with pytest.raises(StoreError, match="different model_dtype"):
        fl.run_capture(dataclasses.replace(half, model_dtype="float32", resume=True), tiny_loaded)
    with pytest.raises(StoreError, match="runs in float32; the capture asks for model_dtype=bfloat16"):
        fl.run_capture(dataclasses.replace(half, overwrite=True), tiny_loaded)

    # a store written before --model-dtype existed has no such key: it resumes as float32
    manifest_path = Path(full.out) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["config"]["model_dtype"]
    manifest_path.write_text(json.dumps(manifest))
    assert fl.run_capture(dataclasses.replace(full, resume=True), tiny_loaded).shards_written == 0


def test_existing_outputs_are_refused_unless_asked(tmp_path: Path, tiny_loaded: fl.LanguageModel) -> None:
    cfg = config(tmp_path, n_tokens=300)
    fl.run_capture(cfg, tiny_loaded)
    with pytest.raises(StoreError, match="already holds this complete capture"):
        fl.run_capture(cfg, tiny_loaded)
    with pytest.raises(StoreError, match="different n_tokens, seq_len"):
        fl.run_capture(dataclasses.replace(cfg, n_tokens=400, seq_len=16), tiny_loaded)
    fl.run_capture(dataclasses.replace(cfg, n_tokens=400, overwrite=True), tiny_loaded)
    assert fl.ActivationStore.open(cfg.out).manifest["config"]["n_tokens"] == 400

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="holds other files"):
            fl.run_capture(dataclasses.replace(cfg, out=str(foreign), overwrite=overwrite), tiny_loaded)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_full_disk_leaves_no_complete_looking_store(
    tmp_path: Path, tiny_loaded: fl.LanguageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(tmp_path)
    real_save = np.save
    saved = {"n": 0}

    def save_until_full(path: Any, array: Any) -> None:
        saved["n"] += 1
        if saved["n"] > 20:  # a few shards fit, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(path, array)

    monkeypatch.setattr(store_module.np, "save", save_until_full)
    with pytest.raises(StoreError, match=r"disk full while writing shard 2.*--resume"):
        fl.run_capture(cfg, tiny_loaded)
    monkeypatch.setattr(store_module.np, "save", real_save)
    shards = sorted(p.name for p in (Path(cfg.out) / "shards").iterdir())
    assert shards == ["000000", "000001"]  # no half-written temporary shard left behind
    with pytest.raises(StoreError, match="interrupted"):
        fl.ActivationStore.open(cfg.out)
    fl.run_capture(dataclasses.replace(cfg, resume=True), tiny_loaded)
    assert fl.ActivationStore.open(cfg.out).n_tokens > 0


def test_two_ranks_fill_one_store(tmp_path: Path, tiny_loaded: fl.LanguageModel) -> None:
    single = config(tmp_path / "single")
    fl.run_capture(single, tiny_loaded)
    shared = config(tmp_path / "shared", world_size=2)
    first = fl.run_capture(dataclasses.replace(shared, rank=0), tiny_loaded)
    assert not first.manifest["complete"]
    second = fl.run_capture(dataclasses.replace(shared, rank=1), tiny_loaded)  # joins without --resume
    assert second.manifest["complete"] and second.shards_written == 4
    np.testing.assert_array_equal(
        np.asarray(fl.ActivationStore.open(single.out).activations(HOOKS[0])),
        np.asarray(fl.ActivationStore.open(shared.out).activations(HOOKS[0])),
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_tokens", 0, "--tokens must be a positive"),
        ("n_tokens", -5, "--tokens must be a positive"),
        ("dtype", "int8", "--dtype 'int8' is not one of"),
        ("seq_len", 1, "--seq-len"),
        ("batch_size", 0, "--batch-size"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path: Path, field: str, value: Any, message: str) -> None:
    with pytest.raises(StoreError, match=message) as error:
        config(tmp_path, **{field: value})
    assert "\n" not in str(error.value)
