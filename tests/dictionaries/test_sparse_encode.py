"""The sparse TopK encoder backward equals autograd through the dense computation."""

import pytest
import torch

from featurelens.dictionaries.sparse_encode import topk_encode


@pytest.mark.parametrize("needs_x", [True, False])
def test_sparse_backward_matches_dense_autograd(needs_x: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 12, generator=g, dtype=torch.float64)
    W = torch.randn(12, 40, generator=g, dtype=torch.float64)
    b = torch.randn(40, generator=g, dtype=torch.float64) - 9.0  # some selected pre-activations are < 0
    weights = torch.randn(50, 5, generator=g, dtype=torch.float64)

    leaves = [t.clone().requires_grad_(t is not x or needs_x) for t in (x, W, b)]
    values, indices = topk_encode(*leaves, 5)
    (values * weights).sum().backward()

    reference = [t.clone().requires_grad_(t is not x or needs_x) for t in (x, W, b)]
    pre = reference[0] @ reference[1] + reference[2]
    ref_values, ref_indices = pre.topk(5, dim=1, sorted=False)
    # the same latents per row, maybe in another order: align the reference to ours
    order = (indices[:, :, None] == ref_indices[:, None, :]).double().argmax(dim=2)
    ref_indices, ref_values = ref_indices.gather(1, order), ref_values.gather(1, order)
    assert torch.equal(indices, ref_indices)
    assert (ref_values < 0).any()  # the relu gate is exercised
    (ref_values.relu() * weights).sum().backward()
    torch.testing.assert_close(values, ref_values.relu())
    for ours, theirs in zip(leaves, reference, strict=True):
        if theirs.grad is None:
            assert ours.grad is None
        else:
            torch.testing.assert_close(ours.grad, theirs.grad)


def test_bfloat16_selection_keeps_float32_values_and_gradients() -> None:
    g = torch.Generator().manual_seed(1)
    x, W, b = torch.randn(64, 16, generator=g), torch.randn(16, 48, generator=g), torch.zeros(48)
    W.requires_grad_()
    values, indices = topk_encode(x, W, b, 4, torch.bfloat16)
    exact = (x @ W + b).gather(1, indices).relu()
    assert values.dtype == torch.float32
    torch.testing.assert_close(values, exact, rtol=2e-2, atol=5e-2)  # bfloat16 keeps ~3 significant digits
    values.sum().backward()
    assert W.grad is not None and W.grad.dtype == torch.float32


def test_shift_gradient_equals_autograd_through_the_subtraction() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 10, generator=g, dtype=torch.float64)
    W = torch.randn(10, 30, generator=g, dtype=torch.float64).requires_grad_()
    b = (torch.randn(30, generator=g, dtype=torch.float64) - 1.0).requires_grad_()
    shift = torch.randn(10, generator=g, dtype=torch.float64).requires_grad_()
    weights = torch.randn(40, 4, generator=g, dtype=torch.float64)

    values, indices = topk_encode(x, W, b, 4, shift=shift)
    (values * weights).sum().backward()
    ours = [t.grad.clone() for t in (W, b, shift)]  # type: ignore[union-attr]

    for t in (W, b, shift):
        t.grad = None
    ref_values, ref_indices = topk_encode(x - shift, W, b, 4)  # autograd carries the subtraction
    assert torch.equal(indices, ref_indices)
    torch.testing.assert_close(values, ref_values)
    (ref_values * weights).sum().backward()
    for mine, theirs in zip(ours, (W.grad, b.grad, shift.grad), strict=True):
        torch.testing.assert_close(mine, theirs)


def test_auto_selection_is_float32_when_torch_is_held_below_avx512(monkeypatch: pytest.MonkeyPatch) -> None:
    from featurelens.dictionaries import sparse_encode

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    sparse_encode._cpu_has_bfloat16_units.cache_clear()
    try:
        assert sparse_encode.selection_dtype("auto", torch.device("cpu")) == torch.float32
        assert sparse_encode.selection_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    finally:
        sparse_encode._cpu_has_bfloat16_units.cache_clear()


def test_reused_pre_activation_buffer_leaves_earlier_results_intact() -> None:
    g = torch.Generator().manual_seed(3)
    W, b = torch.randn(8, 24, generator=g), torch.randn(24, generator=g)
    results = []
    for n in (50, 30, 80):  # the same size, a smaller one (a view of the buffer), a larger one (regrown)
        x = torch.randn(n, 8, generator=g)
        values, indices = topk_encode(x, W, b, 3)
        results.append((x, values.clone(), indices.clone(), values, indices))
    for x, values_then, indices_then, values, indices in results:
        assert torch.equal(values, values_then) and torch.equal(indices, indices_then)  # nothing aliases it
        expected, expected_indices = (x @ W + b).topk(3, dim=1)
        assert torch.equal(indices.sort(1).values, expected_indices.sort(1).values)
        torch.testing.assert_close(values.sort(1).values, expected.relu().sort(1).values)
