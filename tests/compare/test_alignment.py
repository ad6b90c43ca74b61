"""Two tokenizations of the same text aligned on shared token ends: the offsets arithmetic, the identity
case (one model on both sides: identical rows), and a live map between models with different tokenizers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import featurelens as fl
from featurelens.compare.alignment import ALIGNMENT, _encoded, _windows, aligned_chunks, shared_ends
from featurelens.compare.maps import MapJob, run_maps
from featurelens.compare.output import cell_table, grid
from featurelens.corpus import CorpusConfig
from tests.conftest import build_tiny_model, build_tiny_tokenizer


def test_shared_ends_pair_the_last_tokens_ending_at_one_character() -> None:
    ends_a = [-1, 3, 7, 8, 12]
    ends_b = [-1, 3, 5, 8, 8, 10, 12]
    rows_a, rows_b = shared_ends(ends_a, ends_b)
    assert rows_a.tolist() == [1, 3, 4]
    assert rows_b.tolist() == [1, 4, 6]  # two tokens of b end at 8: the later one holds the whole prefix


def test_windows_cut_the_text_at_token_boundaries() -> None:
    tokenizer = build_tiny_tokenizer()
    text = "Return the value of the named attribute of object. name must be a string."
    windows = list(_windows(tokenizer, text, 6))
    assert all(len(_encoded(tokenizer, window)[0]) <= 6 for window in windows)
    assert "".join(windows).replace(" ", "") == text.replace(" ", "")  # consecutive, nothing lost


def test_one_model_on_both_sides_gives_identical_rows(tiny_model_dir: Path) -> None:
    lm = fl.load_model(str(tiny_model_dir))
    hooks = ["layers.0.resid_post", "layers.2.resid_post"]
    chunks = list(
        aligned_chunks(lm, lm, hooks, hooks, CorpusConfig(), seq_len=32, n_tokens=600, chunk_rows=200)
    )
    assert len(chunks) >= 2
    for a, b in chunks:
        for hook in hooks:
            torch.testing.assert_close(a[hook], b[hook], rtol=0, atol=0)
    rows = sum(len(a[hooks[0]]) for a, _ in chunks)
    assert rows > 0.8 * 600  # every token but each window's first (and its separator) has a partner


@pytest.fixture(scope="module")
def other_tokenizer_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama-160")
    build_tiny_model("llama", vocab_size=160, seed=3).save_pretrained(path)
    build_tiny_tokenizer(vocab_size=160).save_pretrained(path)
    return path


def test_a_live_map_between_two_tokenizers_uses_the_aligned_rows(
    tiny_model_dir: Path, other_tokenizer_model: Path
) -> None:
    job = MapJob(
        model=str(tiny_model_dir), model_b=str(other_tokenizer_model), tokens=1500, seq_len=64, null_rows=100,
        permutations=20,
    )  # fmt: skip
    result = run_maps(job)
    assert result.meta["alignment"] == ALIGNMENT
    assert 0.3 * 1500 < result.meta["rows"] < 1500  # word ends coincide; ends inside words mostly do not
    table = cell_table(result)
    np.testing.assert_allclose(np.diagonal(grid(table, "a-a", "cka", "value")), 1.0, atol=1e-6)
    between = grid(table, "a-b", "cka", "value")
    assert between.shape == (3, 3) and np.isfinite(between).all()
