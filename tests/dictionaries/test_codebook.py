"""Known answers for codebook features: the output is exactly the sum of the k codes nearest by cosine, the
choice ignores the input's scale, training recovers a planted codebook, and it runs through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import featurelens as fl
from featurelens.dictionaries import CodebookDictionary, Dictionary, DictionaryError, build_dictionary
from featurelens.dictionaries.codebook import check_memory
from featurelens.training import TrainConfig, train_dictionary
from featurelens.training.state import TrainingRun, initial_dictionary
from tests.cli.test_cli import assert_one_line_error, featurelens
from tests.dictionaries.downstream import assert_flows_downstream
from tests.dictionaries.planted import mean_max_cosine, planted_directions, single_threaded

HOOK = "layers.1.resid_post"

one_thread = pytest.fixture(autouse=True, scope="module")(single_threaded)


def random_codebook(d: int, n_codes: int, k: int, scale: float = 1.0, seed: int = 0) -> CodebookDictionary:
    """A codebook with random directions and norms in [0.5, 2], trained at input/output scale ``scale``."""
    codebook = CodebookDictionary(d, n_codes, k=k, hook_in=HOOK)
    codebook.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        codebook.code_norms.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(seed + 1))
    codebook.set_scales_(scale, scale)
    return codebook


def brute_force_output(x: torch.Tensor, codes: torch.Tensor, k: int) -> torch.Tensor:
    """Float64 sum [n, d] of the k codes [n_codes, d] of largest cosine with each row of x [n, d]."""
    x, codes = x.double(), codes.double()
    cosine = (x / x.norm(dim=1, keepdim=True)) @ (codes / codes.norm(dim=1, keepdim=True)).T
    order = cosine.argsort(dim=1, descending=True)[:, :k]
    return codes[order].sum(dim=1)


# -- 1. the output is the sum of the top-k codes by cosine -------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_decode_of_encode_is_the_float64_sum_of_the_top_k_codes_by_cosine(scale: float) -> None:
    codebook = random_codebook(16, 48, k=5, scale=scale)
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(2)) * 4
    expected = brute_force_output(x, codebook.code_vectors().detach(), 5)
    with torch.no_grad():
        got = codebook.decode(codebook.encode(x))
        assert torch.equal(codebook(x), got)  # no skip, no bias: forward is decode(encode(x))
    assert (got.double() - expected).abs().max() < 1e-5


def test_choice_ignores_the_scale_of_x_and_codes_are_the_code_norms() -> None:
    codebook = random_codebook(16, 48, k=5)
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        codes, codes_scaled = codebook.encode(x), codebook.encode(7.5 * x)
        active = codes != 0
        assert torch.equal(codes_scaled, codes)  # same codes, same values: cosine ignores |x|
        assert (active.sum(1) == 5).all()
        assert torch.equal(codes[active], codebook.code_norms.expand_as(codes)[active])
        # The output is the codes' sum whatever |x| is, unlike a TopK SAE's, which grows with x.
        assert torch.equal(codebook(7.5 * x), codebook(x))
        topk = fl.dictionaries.TopKDictionary(16, 48, k=5)
        assert not torch.allclose(topk(7.5 * x), topk(x))
        # Reversing x is not a rescaling: its nearest codes by cosine are others.
        assert not torch.equal(codebook.encode(-x) != 0, active)


def test_training_forward_matches_inference_and_trains_only_the_codes() -> None:
    codebook = random_codebook(16, 48, k=3)
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(4))
    out = codebook.training_forward(x, x)
    assert torch.allclose(out.y_hat, codebook(x), atol=1e-5)
    assert float(out.l0) == 3.0 and int(out.fired.sum()) == int((codebook.encode(x) != 0).any(0).sum())
    out.y_hat.square().sum().backward()
    for trained in (codebook.W_dec, codebook.code_norms):
        assert trained.grad is not None and trained.grad.abs().sum() > 0
    # The choice is not differentiable and there is no bias: nothing else gets a gradient.
    assert codebook.W_enc.grad is None and codebook.b_enc.grad is None and codebook.b_dec.grad is None


# -- 2. training recovers a planted codebook ---------------------------------------------------------


def test_training_recovers_a_planted_codebook() -> None:
    # 128 planted codes in 128 dims with norms in [0.8, 1.2]; each row is the sum of 4 of them plus noise
    # of norm ~0.11. The learned codebook has 128 codes too. Measured: mean max-cosine 1.000; the best-
    # matching learned code's norm is within 10% of its planted code's for all 128 codes (median
    # error 0.55%); FVU 0.0069 against 0.0072 for the planted codebook itself (its few cross-talk errors).
    n_codes, d, k, batch = 128, 128, 4, 512
    generator = torch.Generator().manual_seed(5)
    directions = planted_directions(n_codes, d)
    norms = 0.8 + 0.4 * torch.rand(n_codes, generator=generator)
    planted = norms[:, None] * directions
    batches = []
    for _ in range(600):
        chosen = torch.rand(batch, n_codes, generator=generator).topk(k, dim=1).indices
        batches.append(planted[chosen].sum(1) + 0.01 * torch.randn(batch, d, generator=generator))
    config = TrainConfig(
        arch="codebook", k=k, expansion=1, batch_size=batch, steps=600, lr=1e-2, warmup_steps=20
    )
    result = train_dictionary(config, batches)
    learned = result.dictionary.code_vectors().detach()
    score = mean_max_cosine(directions, learned)
    best = (directions @ (learned / learned.norm(dim=1, keepdim=True).clamp_min(1e-12)).T).argmax(1)
    norm_error = (learned[best].norm(dim=1) / norms - 1).abs()
    within = float((norm_error <= 0.1).float().mean())
    message = (
        f"mean max-cosine {score:.4f}; norms within 10%: {within:.1%} (median error "
        f"{float(norm_error.median()):.2%}); FVU {result.fvu:.4f}"
    )
    print(message)
    assert score >= 0.9, message
    assert within >= 0.9 and float(norm_error.median()) <= 0.05, message
    assert result.l0 == 4.0 and result.dead_fraction == 0.0


def test_unused_codes_are_revived_as_the_worst_reconstructed_rows_a_few_per_step() -> None:
    codebook = random_codebook(12, 300, k=4)  # up to 1% of the codes (3) are revived per step
    with torch.no_grad():
        codebook.code_norms.copy_(torch.linspace(0.5, 1.5, 300))
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(30, 12, generator=generator)
    residual = torch.randn(30, 12, generator=generator)
    dead = torch.zeros(300, dtype=torch.bool)
    dead[[3, 17, 40, 41]] = True
    before = codebook.W_dec.detach().clone()
    in_use_median = codebook.code_norms.detach()[~dead].median()
    revived = codebook.revive_(dead, x, residual)
    worst = residual.norm(dim=1).topk(3).indices
    assert revived.tolist() == [3, 17, 40]
    expected = x[worst] / x[worst].norm(dim=1, keepdim=True)
    assert torch.allclose(codebook.W_dec.detach()[revived], expected)
    assert torch.equal(codebook.code_norms.detach()[revived], in_use_median.expand(3))
    # each revived code is now its row's nearest by cosine, so it is chosen for that row
    for code, row in zip(revived.tolist(), worst.tolist(), strict=True):
        assert codebook.encode(x[row : row + 1])[0, code] > 0
    untouched = torch.ones(300, dtype=torch.bool)
    untouched[revived] = False
    assert torch.equal(codebook.W_dec.detach()[untouched], before[untouched])


def test_training_revives_dead_codes_and_restarts_their_adam_moments() -> None:
    d, n_codes, k, batch = 16, 64, 2, 256
    generator = torch.Generator().manual_seed(9)
    planted = planted_directions(8, d, seed=9) * 4.0  # 8 codes explain everything: 56 stay unused
    batches = [planted[torch.randint(8, (batch, k), generator=generator)].sum(1) for _ in range(12)]
    config = TrainConfig(
        arch="codebook",
        k=k,
        expansion=n_codes // d,
        batch_size=batch,
        steps=12,
        lr=1e-2,
        warmup_steps=1,
        dead_after_tokens=4 * batch,
        auxk_coefficient=0.0,
    )
    x = batches[0]
    run = TrainingRun(config, initial_dictionary(config, x, x))
    for step in batches[:5]:  # 5 x 256 rows: codes unused since the start are now past the horizon
        run.train_step(step, step)
    dead = run.rows_since_fired > config.dead_after_tokens
    before = run.dictionary.W_dec.detach().clone()
    run.train_step(batches[5], batches[5])
    moments = run.optimizer.state[run.dictionary.W_dec]
    assert dead.any()
    revived = dead & (run.rows_since_fired == 0)
    assert revived.sum() == 1 < dead.sum()  # one dead code (1% of 64, at least one) revived per step ...
    assert not torch.allclose(run.dictionary.W_dec.detach()[revived], before[revived])
    assert float(moments["exp_avg"][revived].abs().max()) == 0.0  # ... and starts with fresh moments
    assert float(moments["exp_avg_sq"][revived].abs().max()) == 0.0


# -- 3. files and the CLI ----------------------------------------------------------------------------


def test_save_load_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    codebook = random_codebook(12, 40, k=4, scale=2.5)
    x = torch.randn(50, 12, generator=torch.Generator().manual_seed(6)) * 3
    loaded = Dictionary.load(codebook.save(tmp_path / "codebook"))
    assert type(loaded) is CodebookDictionary and loaded.config() == codebook.config()
    with torch.no_grad():
        assert torch.equal(loaded.encode(x) != 0, codebook.encode(x) != 0)
        assert torch.allclose(loaded(x), codebook(x), atol=1e-6)
        assert torch.allclose(loaded.code_vectors(), codebook.code_vectors(), atol=1e-6)
    again = Dictionary.load(loaded.save(tmp_path / "again"))
    with torch.no_grad():
        assert torch.equal(again(x), loaded(x))  # scales already folded: an exact round trip


@pytest.fixture(scope="module")
def store(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("codebook-cli") / "acts"
    fl.run_capture(
        fl.CaptureConfig(out=str(out), model=str(tiny_model_dir), hooks=(HOOK,), n_tokens=4000, seq_len=32)
    )
    return out


def test_cli_trains_a_codebook_that_flows_downstream(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "codebook"
    small = ["--k", "4", "--expansion", "4", "--batch-size", "256", "--steps", "20", "--holdout", "500"]
    trained = featurelens("train", "--acts", str(store), "--arch", "codebook", "--out", str(out), *small)
    assert trained.returncode == 0, trained.stderr
    codebook = Dictionary.load(out)
    assert isinstance(codebook, CodebookDictionary) and codebook.k == 4
    assert torch.equal(codebook.b_dec, torch.zeros(32))
    assert_flows_downstream(out, tmp_path, max_l0=4)


# -- 4. bad input ------------------------------------------------------------------------------------


def test_a_codebook_too_large_for_memory_is_refused_in_one_line(store: Path, tmp_path: Path) -> None:
    huge = featurelens(
        "train", "--acts", str(store), "--arch", "codebook", "--expansion", "1000000000", "--k", "4",
        "--out", str(tmp_path / "huge"), "--steps", "2", "--batch-size", "64",
    )  # fmt: skip
    assert_one_line_error(huge, "training a codebook of 32,000,000,000 codes", "available", "--expansion")
    assert not (tmp_path / "huge" / "weights.safetensors").exists()
    with pytest.raises(DictionaryError, match=r"needs ~.* TB .* but cpu has .* available; lower"):
        CodebookDictionary(64, 10**12, k=4)  # building one directly is checked too


def test_the_memory_check_names_each_part() -> None:
    parts = {"weights": 3 * 2**40, "similarities": 2**40}
    with pytest.raises(DictionaryError, match=r"needs ~4.0 TB \(weights 3.0 TB, similarities 1.0 TB\)"):
        check_memory(parts, torch.device("cpu"), "a test", "it")
    check_memory({"weights": 1024}, torch.device("cpu"), "a test", "it")  # fits: no error


@pytest.mark.parametrize("k", [0, 40, 41])
def test_k_of_at_least_the_number_of_codes_is_refused(k: int) -> None:
    with pytest.raises(DictionaryError, match=rf"k must be between 1 and d_latent - 1 = 39, got {k}"):
        build_dictionary({"arch": "codebook", "d_in": 12, "d_latent": 40, "k": k})


def test_k_of_at_least_the_number_of_codes_is_refused_by_the_cli(store: Path, tmp_path: Path) -> None:
    result = featurelens(
        "train", "--acts", str(store), "--arch", "codebook", "--expansion", "1", "--k", "32",
        "--out", str(tmp_path / "k"),
    )  # fmt: skip
    assert_one_line_error(result, "k must be between 1 and d_latent - 1 = 31, got 32")


def test_transcoders_and_skip_connections_are_refused() -> None:
    with pytest.raises(DictionaryError, match="one hook without a skip"):
        CodebookDictionary(12, 48, k=4, hook_in="a", hook_out="b")
    with pytest.raises(DictionaryError, match="one hook without a skip"):
        CodebookDictionary(12, 48, k=4, skip=True)
