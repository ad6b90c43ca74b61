import torch

from featurelens.dictionaries.sparse_decode import dense_codes, sparse_decode, use_sparse_decoder


def test_sparse_decode_matches_dense_forward_and_backward() -> None:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(256, 16, generator=g, requires_grad=True)
    values, indices = torch.randn(32, 256, generator=g).topk(8, dim=1)
    values = values.relu().requires_grad_()
    target = torch.randn(32, 16, generator=g)

    sparse = sparse_decode(indices, values, W)
    (sparse - target).square().sum().backward()
    sparse_grads = W.grad.clone(), values.grad.clone()
    W.grad, values.grad = None, None
    dense = dense_codes(indices, values, 256) @ W
    (dense - target).square().sum().backward()

    assert torch.allclose(sparse, dense, atol=1e-5)
    assert torch.allclose(sparse_grads[0], W.grad, atol=1e-4)
    assert torch.allclose(sparse_grads[1], values.grad, atol=1e-4)


def test_sparse_decoder_chosen_only_when_sparse_enough() -> None:
    assert use_sparse_decoder(32, 9216)
    assert not use_sparse_decoder(64, 256)
