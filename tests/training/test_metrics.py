import torch

from featurelens.training.metrics import dead_fraction, fraction_variance_unexplained, l0


def test_fvu_matches_float64_formula() -> None:
    g = torch.Generator().manual_seed(0)
    x, x_hat = torch.randn(200, 7, generator=g), torch.randn(200, 7, generator=g)
    x64, x_hat64 = x.double(), x_hat.double()
    expected = ((x64 - x_hat64) ** 2).sum() / ((x64 - x64.mean(0)) ** 2).sum()
    assert torch.allclose(fraction_variance_unexplained(x, x_hat).double(), expected, rtol=1e-5)


def test_fvu_known_answers() -> None:
    x = torch.randn(50, 4)
    assert float(fraction_variance_unexplained(x, x)) == 0.0
    mean_prediction = x.mean(0).expand_as(x)
    assert abs(float(fraction_variance_unexplained(x, mean_prediction)) - 1.0) < 1e-5


def test_l0_and_dead_fraction() -> None:
    codes = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, -1.0]])
    assert float(l0(codes)) == 1.5
    assert float(dead_fraction(torch.tensor([0, 3, 0, 1]))) == 0.5
