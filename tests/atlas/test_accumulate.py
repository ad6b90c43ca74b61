"""The streaming accumulator against dense float64 references on small cases, for every latent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featurelens.atlas.accumulate import HISTOGRAM_EDGES, N_BINS, AtlasAccumulator, AtlasSettings

N_ROWS, SEQ, D_LATENT = 600, 50, 40
SETTINGS = AtlasSettings(top_k=5, before=3, after=2, quantile_bins=4, per_bin=2, negatives=3)


def sparse_codes(seed: int = 0) -> torch.Tensor:
    """Distinct positive activations on ~15% of entries, one latent that never fires, one on every row."""
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(N_ROWS, D_LATENT, generator=g) * 10 + 0.01
    mask = torch.rand(N_ROWS, D_LATENT, generator=g) < 0.15
    codes = torch.where(mask, values, 0.0)
    codes[:, 0] = 0.0
    codes[:, 1] = values[:, 1]
    return codes


def accumulate(codes: torch.Tensor, chunk_sequences: int) -> AtlasAccumulator:
    sequences = np.repeat(np.arange(N_ROWS // SEQ), SEQ)
    acc = AtlasAccumulator(D_LATENT, SETTINGS)
    step = chunk_sequences * SEQ
    for first in range(0, N_ROWS, step):
        acc.add(codes[first : first + step], sequences[first : first + step])
    return acc


def dense_window(codes: torch.Tensor, row: int, latent: int) -> list[float]:
    seq_start = row // SEQ * SEQ
    return [
        float(codes[r, latent]) if seq_start <= r < seq_start + SEQ else 0.0
        for r in range(row - SETTINGS.before, row + SETTINGS.after + 1)
    ]


@pytest.mark.parametrize("chunk_sequences", [1, 3, 12])
def test_chunked_top_k_equals_dense_reference(chunk_sequences: int) -> None:
    codes = sparse_codes()
    acc = accumulate(codes, chunk_sequences)
    for latent in range(D_LATENT):
        column = codes[:, latent]
        n_fired = int((column > 0).sum())
        expected = column.argsort(descending=True)[: min(SETTINGS.top_k, n_fired)].tolist()
        got = [r for r in acc.top.row[:, latent].tolist() if r >= 0]
        assert got == expected, latent
        for slot, row in enumerate(got):
            assert acc.top.value[slot, latent] == column[row]
            assert acc.top.window[slot, latent].tolist() == pytest.approx(dense_window(codes, row, latent))


def test_counts_sums_maxima_histograms_and_cooccurrence_equal_float64() -> None:
    codes = sparse_codes(1)
    acc = accumulate(codes, 2)
    x = codes.double().numpy()
    fired = x > 0
    np.testing.assert_array_equal(acc.count.numpy(), fired.sum(0))
    np.testing.assert_allclose(acc.total.numpy(), x.sum(0), rtol=1e-12)
    np.testing.assert_array_equal(acc.max.numpy(), codes.max(0).values.numpy())
    edges = np.asarray(HISTOGRAM_EDGES)
    histogram = acc.histogram.view(D_LATENT, N_BINS).numpy()
    for latent in range(D_LATENT):
        reference, _ = np.histogram(x[fired[:, latent], latent], bins=edges)
        np.testing.assert_array_equal(histogram[latent], reference)
    assert acc.cooccurrence is not None
    reference = fired.T.astype(np.int64) @ fired.astype(np.int64)
    np.testing.assert_array_equal(acc.pair_counts(0, D_LATENT).numpy(), reference)
    np.testing.assert_array_equal(acc.pair_counts(7, 19).numpy(), reference[7:19])


def test_dense_and_sparse_cooccurrence_paths_agree() -> None:
    codes = sparse_codes(2)
    dense_rows = codes.clone()
    dense_rows[:, :] = torch.where(codes > 0, codes, 0.5)  # every latent fires everywhere: the dense path
    sparse_acc, dense_acc = accumulate(codes, 2), accumulate(dense_rows, 2)
    fired = (codes > 0).long()
    assert sparse_acc.cooccurrence is not None and dense_acc.cooccurrence is not None
    assert torch.equal(sparse_acc.pair_counts(0, D_LATENT).long(), fired.T @ fired)
    assert torch.equal(
        dense_acc.pair_counts(0, D_LATENT), torch.full((D_LATENT, D_LATENT), N_ROWS, dtype=torch.int32)
    )


def test_samples_and_negatives_are_what_they_claim() -> None:
    codes = sparse_codes(3)
    acc = accumulate(codes, 2)
    order, bins = acc.quantile_order()
    for latent in range(D_LATENT):
        column = codes[:, latent]
        n_fired = int((column > 0).sum())
        rows = acc.samples.row[order[:, latent], latent]
        values = acc.samples.value[order[:, latent], latent]
        kept = rows >= 0
        assert int(kept.sum()) == min(SETTINGS.samples, n_fired)
        assert len(set(rows[kept].tolist())) == int(kept.sum())
        assert torch.equal(values[kept], column[rows[kept]])
        assert (values[kept].diff() >= 0).all()
        assert (bins[kept, latent].diff() >= 0).all() and (bins[~kept, latent] == -1).all()
        if n_fired >= SETTINGS.samples:
            assert torch.bincount(bins[:, latent], minlength=SETTINGS.quantile_bins).tolist() == [2] * 4
        for row in acc.negatives.row[:, latent].tolist():
            if row >= 0:
                assert not any(dense_window(codes, row, latent))
    assert (acc.negatives.row[:, 0] >= 0).all()  # the silent latent gets its negatives
    assert (acc.negatives.row[:, 1] == -1).all()  # the latent firing everywhere has none
    assert (acc.samples.row[:, 0] == -1).all()


def test_same_inputs_give_identical_selections() -> None:
    a, b = accumulate(sparse_codes(4), 2), accumulate(sparse_codes(4), 2)
    for name in ("top", "samples", "negatives"):
        assert torch.equal(getattr(a, name).row, getattr(b, name).row)
    other = AtlasAccumulator(D_LATENT, AtlasSettings(**{**SETTINGS.__dict__, "seed": 1}))
    sequences = np.repeat(np.arange(N_ROWS // SEQ), SEQ)
    for first in range(0, N_ROWS, 100):
        other.add(sparse_codes(4)[first : first + 100], sequences[first : first + 100])
    assert not torch.equal(other.samples.row, a.samples.row)  # the seed is what makes it repeatable
