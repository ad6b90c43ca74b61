"""A TopK dictionary sharded by latents over 2 gloo ranks equals the whole dictionary in one process: outputs,
codes, every gradient, and the weights after a few Adam steps.

Two cases: an SAE with 64 latents (32 per rank) and a transcoder with a skip connection and 37 latents (18
and 19), both with non-zero biases and input/output scales, so every path of the forward and backward pass
carries a value. Why a tolerance: a rank's partial reconstruction and the sum of the encoder input's
gradient add in another order than one process's sums: outputs and gradients differ by <= 2e-6 (entries up
to 22), weights after 5 Adam steps by <= 1e-7 (checked at 1e-6); the codes come out identical.
What would fail: taking each rank's own top-k without the global one keeps up to 2k latents per row
(y_hat, codes and l0 change at once); a backward that summed the decoder gradient over ranks (instead of
the identity) would double every encoder gradient; one that did not sum the encoder input's gradient would
leave b_dec and x with one rank's share only.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from featurelens.dictionaries import Dictionary, DictionaryError, ReLUDictionary, ShardedTopK, TopKDictionary
from featurelens.dictionaries.sparse_decode import dense_codes
from featurelens.distributed import DistributedError, World, gather_rows, process_group
from tests.distributed.processes import spawn_two_ranks

STEPS = 5
ROWS = 64
SHARDED = ("W_enc", "b_enc", "W_dec")  # the tensors split by latents (W_enc by columns)


def cases() -> dict[str, tuple[TopKDictionary, torch.Tensor, torch.Tensor]]:
    """name -> (dictionary, inputs x [STEPS * ROWS, d_in], targets y [STEPS * ROWS, d_out]), from a seed."""
    g = torch.Generator().manual_seed(0)
    sae = TopKDictionary(16, 64, k=4, hook_in="h")
    transcoder = TopKDictionary(16, 37, k=5, hook_in="a", hook_out="b", d_out=12, skip=True)
    out = {}
    for name, dictionary, scales in (("sae", sae, (1.5, 1.5)), ("transcoder", transcoder, (2.0, 0.5))):
        with torch.no_grad():
            for parameter in dictionary.parameters():
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=g))
        dictionary.normalize_decoder_()
        dictionary.set_scales_(*scales)
        dictionary.encoder_dtype = torch.float32
        x = torch.randn(STEPS * ROWS, 16, generator=g)
        y = x if name == "sae" else torch.randn(STEPS * ROWS, 12, generator=g)
        out[name] = (dictionary, x, y)
    return out


def whole(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """The whole dictionary's ``name`` tensor from every rank's slice (replicated ones as they are)."""
    if name == "W_enc":
        return gather_rows(tensor.t().contiguous()).t()
    return gather_rows(tensor) if name in SHARDED else tensor


def results(model: TopKDictionary | ShardedTopK, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs, codes, gradients and trained weights of ``model`` (whole or sharded), as whole tensors."""
    sharded = isinstance(model, ShardedTopK)
    batch, target = x[:ROWS], y[:ROWS]
    out = {}
    with torch.no_grad():
        out["y_hat"] = model(batch)
        codes = model.encode(batch)
        out["codes"] = dense_codes(*codes, model.d_latent) if isinstance(codes, tuple) else codes

    x_scaled = (batch * model.input_scale).requires_grad_()
    step = model.training_forward(x_scaled, target * model.output_scale)
    (step.y_hat - target * model.output_scale).square().sum(1).mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        out[f"grad.{name}"] = whole(name, parameter.grad) if sharded else parameter.grad.clone()
    assert x_scaled.grad is not None
    out["grad.x"], out["l0"] = x_scaled.grad, step.l0.reshape(1)
    out["fired"] = (gather_rows(step.fired) if sharded else step.fired).float()

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for i in range(STEPS):
        optimizer.zero_grad()
        x_scaled, y_scaled = x[i * ROWS : (i + 1) * ROWS] * model.input_scale, y[i * ROWS : (i + 1) * ROWS]
        y_scaled = y_scaled * model.output_scale
        (model.training_forward(x_scaled, y_scaled).y_hat - y_scaled).square().sum(1).mean().backward()
        model.remove_parallel_decoder_grad_()
        optimizer.step()
        model.normalize_decoder_()
    trained = model.gather_full() if isinstance(model, ShardedTopK) else model
    out.update({f"trained.{k}": v.detach().clone() for k, v in trained.state_dict().items()})
    return out


def run_rank(rank: int, port: int, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    found: dict[str, torch.Tensor] = {}
    with process_group(World(rank, 2)):
        for name, (dictionary, x, y) in cases().items():
            sharded = ShardedTopK(dictionary)
            found[f"{name}.width"] = torch.tensor([sharded.W_dec.shape[0]])
            found.update({f"{name}.{k}": v.contiguous() for k, v in results(sharded, x, y).items()})
            sharded.save(out / f"{name}-saved")
        dictionary = cases()["sae"][0]
        if rank == 1:
            dictionary.b_enc.data[0] += 1.0  # this rank was handed other weights than rank 0
        try:
            ShardedTopK(dictionary)
        except DistributedError as error:
            found["refused_other_weights"] = torch.tensor([float("rank 1" in str(error))])
    save_file(found, str(out / f"rank{rank}.safetensors"))


@pytest.fixture(scope="module")
def spawned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder where 2 ranks left their results and saved dictionaries."""
    out = tmp_path_factory.mktemp("sharding")
    spawn_two_ranks(run_rank, out)
    return out


@pytest.fixture(scope="module")
def ranks(spawned: Path) -> list[dict[str, torch.Tensor]]:
    return [load_file(str(spawned / f"rank{r}.safetensors")) for r in (0, 1)]


@pytest.fixture(scope="module")
def alone() -> dict[str, torch.Tensor]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {f"{name}.{k}": v for name, case in cases().items() for k, v in results(*case).items()}
    finally:
        torch.set_num_threads(threads)


def test_ranks_hold_uneven_slices_and_agree(ranks: list[dict[str, torch.Tensor]]) -> None:
    assert [int(r["sae.width"]) for r in ranks] == [32, 32]
    assert [int(r["transcoder.width"]) for r in ranks] == [18, 19]
    for name, tensor in ranks[0].items():
        if not name.endswith("width"):
            assert torch.equal(tensor, ranks[1][name]), name  # replicated results, bit for bit


@pytest.mark.parametrize("case", ["sae", "transcoder"])
def test_outputs_and_codes_equal_the_whole_dictionary(
    ranks: list[dict[str, torch.Tensor]], alone: dict[str, torch.Tensor], case: str
) -> None:
    codes = alone[f"{case}.codes"]
    assert ((codes > 0).sum(1) == (4 if case == "sae" else 5)).all()  # k latents fire per row: no ties at 0
    for name in ("y_hat", "codes", "l0", "fired"):
        torch.testing.assert_close(ranks[0][f"{case}.{name}"], alone[f"{case}.{name}"], msg=name)


@pytest.mark.parametrize("case", ["sae", "transcoder"])
def test_gradients_equal_the_whole_dictionary(
    ranks: list[dict[str, torch.Tensor]], alone: dict[str, torch.Tensor], case: str
) -> None:
    names = [n for n in alone if n.startswith(f"{case}.grad.")]
    assert len(names) == (5 if case == "sae" else 6)  # W_enc, b_enc, W_dec, b_dec, x (+ W_skip)
    for name in names:
        assert alone[name].abs().max() > 0, name
        torch.testing.assert_close(ranks[0][name], alone[name], msg=name)


@pytest.mark.parametrize("case", ["sae", "transcoder"])
def test_adam_steps_stay_with_the_whole_dictionary(
    ranks: list[dict[str, torch.Tensor]], alone: dict[str, torch.Tensor], case: str
) -> None:
    initial = cases()[case][0].state_dict()
    for name, tensor in initial.items():
        trained = alone[f"{case}.trained.{name}"]
        if name.startswith("W_") or name.startswith("b_"):
            assert not torch.equal(trained, tensor), name  # the steps moved it
        torch.testing.assert_close(ranks[0][f"{case}.trained.{name}"], trained, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("case", ["sae", "transcoder"])
def test_rank_0_saves_the_reassembled_dictionary(
    spawned: Path, ranks: list[dict[str, torch.Tensor]], case: str
) -> None:
    dictionary, x, _ = cases()[case]
    prefix = f"{case}.trained."
    dictionary.load_state_dict({k[len(prefix) :]: v for k, v in ranks[0].items() if k.startswith(prefix)})
    saved = Dictionary.load(spawned / f"{case}-saved")
    torch.testing.assert_close(saved(x), dictionary(x))


def test_ranks_given_other_weights_refuse(ranks: list[dict[str, torch.Tensor]]) -> None:
    assert [float(r["refused_other_weights"]) for r in ranks] == [1.0, 1.0]


def test_one_process_holds_every_latent_and_equals_the_dictionary() -> None:
    dictionary, x, _ = cases()["transcoder"]
    sharded = ShardedTopK(dictionary)
    torch.testing.assert_close(sharded(x), dictionary(x))
    torch.testing.assert_close(dense_codes(*sharded.encode(x), 37), dictionary.encode(x))
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            sharded.gather_full().state_dict().values(), dictionary.state_dict().values(), strict=True
        )
    )


def test_other_architectures_are_refused() -> None:
    with pytest.raises(DictionaryError, match="TopK dictionaries only, got 'relu'"):
        ShardedTopK(ReLUDictionary(8, 16))
