"""Known answers for gradient-aware TopK (gtopk, the g-SAE): its per-latent attribution is what autograd
gives for a multiplier on each latent's contribution spliced into the model, it picks the top k of
activation + beta |attribution|, it is exactly TopK where the rule says so, the live rows carry the right
gradient, training lowers the model's loss gap, and it runs through the CLI and every later stage."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

import featurelens as fl
from featurelens.capture.live import live_rows, loss_gradient
from featurelens.corpus import CorpusConfig, documents, pack_sequences
from featurelens.dictionaries import Dictionary, DictionaryError, GradientTopKDictionary, build_dictionary
from featurelens.dictionaries.gradient_topk import latent_attribution
from featurelens.dictionaries.sparse_encode import picked_encode
from featurelens.evaluate.spliced import next_token_loss, spliced_loss
from featurelens.models.tracing import replacing
from featurelens.training import TrainConfig, train_dictionary
from featurelens.training.live import shuffled_batches
from featurelens.training.state import TrainingRun, initial_dictionary
from tests.cli.test_cli import assert_one_line_error, featurelens
from tests.conftest import build_tiny_model, build_tiny_tokenizer
from tests.dictionaries.downstream import assert_flows_downstream
from tests.dictionaries.planted import single_threaded

HOOK = "layers.1.resid_post"
SCALE = 3.7  # a training-space input scale that is not 1, so a missing or doubled 1/scale shows

one_thread = pytest.fixture(autouse=True, scope="module")(single_threaded)


def random_gtopk(d_in: int, d_latent: int, k: int, weight: float, seed: int) -> GradientTopKDictionary:
    """A gtopk SAE with untied random encoder, biases and an input scale, in float64."""
    generator = torch.Generator().manual_seed(seed)
    dictionary = GradientTopKDictionary(d_in, d_latent, k=k, gradient_weight=weight, hook_in=HOOK).double()
    with torch.no_grad():
        dictionary.W_enc.add_(0.5 * torch.randn(d_in, d_latent, generator=generator, dtype=torch.float64))
        dictionary.b_enc.copy_(0.1 * torch.randn(d_latent, generator=generator, dtype=torch.float64))
        dictionary.b_dec.copy_(0.3 * torch.randn(d_in, generator=generator, dtype=torch.float64))
    dictionary.set_scales_(SCALE, SCALE)
    return dictionary


def multiplier_gradient(
    lm: fl.LanguageModel, ids: torch.Tensor, dictionary: Dictionary, codes: torch.Tensor
) -> torch.Tensor:
    """Brute force: dL/dm [n, d_latent] at m = 1 for the reconstruction sum_j m_j z_j d_j spliced in at HOOK
    (raw space, plus the detached error so the forward pass is the clean one); L = summed next-token CE."""
    multipliers = torch.ones_like(codes, requires_grad=True)

    def splice(acts: torch.Tensor) -> torch.Tensor:
        flat = acts.reshape(-1, acts.shape[-1])
        reconstruction = (
            (multipliers * codes) @ dictionary.W_dec.detach() + dictionary.b_dec.detach()
        ) / SCALE
        return (reconstruction + (flat - reconstruction).detach()).reshape(acts.shape)

    with replacing(lm.hook_point(HOOK), splice):
        logits = lm.model(input_ids=ids).logits
    (gradient,) = torch.autograd.grad(next_token_loss(logits, ids).sum(), multipliers)
    return gradient


@pytest.fixture(scope="module")
def double_lm() -> fl.LanguageModel:
    return fl.LanguageModel(build_tiny_model("llama").double(), None, spec="tiny-llama-float64")


# -- 1. the attribution and the choice equal a brute-force autograd computation --------------------------


def test_attribution_and_choice_equal_brute_force_multipliers(double_lm: fl.LanguageModel) -> None:
    ids = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    acts, gradient = loss_gradient(double_lm, ids, [HOOK], HOOK)
    x, g = acts[HOOK].reshape(-1, 32), gradient.reshape(-1, 32)
    dictionary = random_gtopk(32, 128, k=4, weight=30.0, seed=1)
    codes = dictionary.pre_activation(x * SCALE).relu().detach()

    brute = multiplier_gradient(double_lm, ids, dictionary, codes)
    attribution = latent_attribution(codes, g / SCALE, dictionary.W_dec.detach())
    assert brute.abs().max() > 1e-3  # a real signal, not two zeros
    assert (attribution - brute).abs().max() <= 1e-5 * brute.abs().max()

    expected = (codes + 30.0 * brute.abs()).topk(4, dim=1).indices.sort(dim=1).values
    picked = dictionary.select(codes, g / SCALE).sort(dim=1).values
    assert torch.equal(picked, expected)
    by_activation = codes.topk(4, dim=1).indices.sort(dim=1).values
    differs = (by_activation != expected).any(dim=1)
    assert differs.sum() >= 3, "the gradient term must change the choice on some rows for this test to bite"

    # The training step gets raw activations and the raw gradient: it must hand the dictionary g / scale.
    row = int(differs.nonzero()[0])
    run = TrainingRun(TrainConfig(arch="gtopk", k=4, hook_in=HOOK, warmup_steps=1), dictionary)
    run.train_step(x[row : row + 1], x[row : row + 1], gradient=g[row : row + 1])
    fired = (run.rows_since_fired == 0).nonzero().flatten()
    positive = expected[row][codes[row, expected[row]] > 0]
    assert torch.equal(fired.sort().values, positive.sort().values)


# -- 2. where the rule reduces to TopK ------------------------------------------------------------------


def test_zero_or_uniform_gradient_projection_is_exactly_topk() -> None:
    """score = z (1 + beta |<d_j, g>|): a zero g, or one with the same |<d_j, g>| for every latent, scales all
    scores alike, so the training choice equals the inference TopK. A real identity of the rule."""
    d, n_latent = 16, 64
    generator = torch.Generator().manual_seed(2)
    dictionary = random_gtopk(d, n_latent, k=5, weight=50.0, seed=3)
    rest = torch.randn(n_latent, d - 1, generator=generator, dtype=torch.float64)
    rest = 0.8 * rest / rest.norm(dim=1, keepdim=True)
    signs = torch.where(torch.rand(n_latent, 1, generator=generator) < 0.5, -1.0, 1.0).double()
    with torch.no_grad():
        dictionary.W_dec.copy_(torch.cat([0.6 * signs, rest], dim=1))  # |d_j[0]| = 0.6: unit rows
    x = torch.randn(40, d, generator=generator, dtype=torch.float64)
    along_first = torch.zeros_like(x)
    along_first[:, 0] = 5.0 * torch.randn(40, generator=generator, dtype=torch.float64)
    for gradient in (torch.zeros_like(x), along_first):
        out = dictionary.training_forward(x * SCALE, x * SCALE, gradient=gradient)
        assert torch.allclose(out.y_hat / SCALE, dictionary(x), atol=1e-12)
    tilted = along_first + torch.randn(x.shape, generator=generator, dtype=torch.float64)
    out = dictionary.training_forward(x * SCALE, x * SCALE, gradient=tilted)
    assert not torch.allclose(out.y_hat / SCALE, dictionary(x), atol=1e-6)


def test_sparse_backward_of_the_picked_latents_equals_dense_autograd() -> None:
    generator = torch.Generator().manual_seed(4)
    x, W, b = (
        torch.randn(*shape, generator=generator, dtype=torch.float64) for shape in ((30, 8), (8, 64), (64,))
    )
    indices = torch.randn(30, 64, generator=generator).topk(3, dim=1).indices  # any rule's picks
    weights = torch.randn(30, 3, generator=generator, dtype=torch.float64)
    grads = []
    for sparse in (True, False):
        leaves = [t.clone().requires_grad_(True) for t in (x, W, b)]
        pre = leaves[0] @ leaves[1] + leaves[2]
        if sparse:
            values = picked_encode(*leaves, pre.detach().gather(1, indices), indices)
        else:
            values = pre.gather(1, indices).relu()
        (values * weights).sum().backward()
        grads.append([leaf.grad for leaf in leaves])
    assert (values > 0).any() and (values == 0).any()  # both sides of the relu are exercised
    for sparse_grad, dense_grad in zip(*grads, strict=True):
        assert torch.allclose(sparse_grad, dense_grad, atol=1e-12)


# -- 3. the live rows carry the gradient of their own position ------------------------------------------


def test_live_gradient_rows_align_with_the_rows_live_training_uses(tiny_model_dir: Path) -> None:
    lm = fl.load_model(str(tiny_model_dir))
    corpus = CorpusConfig()
    options = {"seq_len": 32, "n_tokens": 256, "batch_size": 4}
    plain = list(live_rows(lm, [HOOK], corpus, **options))  # type: ignore[arg-type]
    with_gradient = list(live_rows(lm, [HOOK], corpus, gradient_hook=HOOK, **options))  # type: ignore[arg-type]
    assert [len(r.tokens) for r in plain] == [len(r.tokens) for r in with_gradient]
    for a, b in zip(plain, with_gradient, strict=True):
        assert a.gradients is None and b.gradients is not None
        assert np.array_equal(a.positions, b.positions) and np.array_equal(a.sequences, b.sequences)
        assert np.allclose(a.activations[0], b.activations[0], atol=1e-6)
    assert min(r.positions.min() for r in with_gradient) == 1  # position 0 is left out as before
    sequences = [s.tokens for s in islice(pack_sequences(documents(corpus), lm.tokenizer, 32), 8)]
    _, full = loss_gradient(lm, torch.from_numpy(np.stack(sequences)).long(), [HOOK], HOOK)
    for rows in with_gradient:
        expected = full[torch.from_numpy(rows.sequences), torch.from_numpy(rows.positions).long()]
        assert np.allclose(rows.gradients, expected.numpy(), atol=1e-6)


# -- 4. training lowers the model's loss gap ------------------------------------------------------------


def trained_tiny_lm(steps: int = 150, seq_len: int = 64) -> tuple[fl.LanguageModel, torch.Tensor]:
    """The tiny llama trained briefly on the bundled corpus (a random one barely uses its hooks), and the
    sequences [n, seq_len] it was trained on: the first 400 (the rest are held out)."""
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model("llama").train()
    packed = pack_sequences(documents(CorpusConfig()), tokenizer, seq_len)
    data = torch.from_numpy(np.stack([s.tokens for s in islice(packed, 480)])).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        ids = data[torch.randint(0, 400, (16,), generator=generator)]
        loss = next_token_loss(model(input_ids=ids).logits, ids).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return fl.LanguageModel(model.eval(), tokenizer, spec="tiny-llama-trained"), data


def test_live_training_lowers_the_heldout_loss_gap() -> None:
    lm, data = trained_tiny_lm()
    corpus, tokens = CorpusConfig(), 8192  # 128 sequences of 64: all before the held-out ones
    held = data[-64:]
    mask = torch.ones_like(held, dtype=torch.bool)
    mask[:, 0] = False
    gaps = {}
    for arch in ("topk", "gtopk"):
        gradient = arch == "gtopk"
        rows = live_rows(
            lm, [HOOK], corpus, seq_len=64, n_tokens=tokens, gradient_hook=HOOK if gradient else None
        )
        parts = (r.activations + ([r.gradients] if r.gradients is not None else []) for r in rows)
        batches = list(shuffled_batches(parts, 256, 4096, 0, gradient=gradient))
        config = TrainConfig(
            arch=arch,
            k=4,
            expansion=8,
            batch_size=256,
            steps=len(batches),
            hook_in=HOOK,
            lr=3e-3,
            warmup_steps=5,
        )
        first = batches[0][0] if isinstance(batches[0], tuple) else batches[0]
        start = initial_dictionary(config, first, first)
        trained = train_dictionary(config, batches).dictionary.eval()
        with torch.no_grad():
            before, after = (spliced_loss(lm, HOOK, d, held, mask) for d in (start, trained))
        gaps[arch] = (before.spliced - before.clean, after.spliced - after.clean, after.ce_loss_recovered)
    print("held-out CE gap (init, trained, CE recovered):", gaps)
    before_gap, after_gap, recovered = gaps["gtopk"]
    assert after_gap < 0.8 * before_gap and recovered > 0.8


def test_training_without_gradients_is_refused() -> None:
    x = torch.randn(64, 8)
    with pytest.raises(DictionaryError, match=r"gradient-aware training needs the model: .* use --model"):
        train_dictionary(TrainConfig(arch="gtopk", k=2, expansion=2, batch_size=64, steps=2), [x, x])


# -- 5. the CLI trains it live; every later stage takes it unchanged ------------------------------------


def test_cli_trains_gtopk_live_and_it_flows_downstream(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "gsae"
    small = ["--k", "4", "--expansion", "4", "--batch-size", "256", "--tokens", "2048", "--seq-len", "64"]
    trained = featurelens(
        "train",
        "--model",
        str(tiny_model_dir),
        "--hook",
        HOOK,
        "--arch",
        "gtopk",
        "--out",
        str(out),
        *small,
        "--gradient-weight",
        "5",
    )
    assert trained.returncode == 0, trained.stderr
    dictionary = Dictionary.load(out)
    assert isinstance(dictionary, GradientTopKDictionary)
    assert (dictionary.k, dictionary.gradient_weight) == (4, 5.0)
    assert json.loads((out / "training.json").read_text())["live"] is True
    assert_flows_downstream(out, tmp_path, max_l0=4)


# -- 6. bad input ---------------------------------------------------------------------------------------


def test_cli_refuses_gtopk_on_a_store(tiny_model_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "acts"
    fl.run_capture(
        fl.CaptureConfig(out=str(store), model=str(tiny_model_dir), hooks=(HOOK,), n_tokens=256, seq_len=32)
    )
    refused = featurelens(
        "train", "--acts", str(store), "--arch", "gtopk", "--k", "4", "--out", str(tmp_path / "o")
    )
    assert_one_line_error(refused, "gradient-aware training needs the model", "use --model")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("k", [0, 64, 100])
def test_k_outside_one_to_d_latent_is_refused(k: int) -> None:
    with pytest.raises(DictionaryError, match=rf"k must be between 1 and d_latent - 1 = 63, got {k}"):
        build_dictionary({"arch": "gtopk", "d_in": 16, "d_latent": 64, "k": k})


def test_transcoders_and_negative_weights_are_refused() -> None:
    with pytest.raises(DictionaryError, match="reconstructs the hook it reads"):
        build_dictionary({"arch": "gtopk", "d_in": 8, "d_latent": 32, "k": 2, "hook_out": "layers.2.mlp_out"})
    with pytest.raises(DictionaryError, match="gradient_weight must be >= 0"):
        build_dictionary({"arch": "gtopk", "d_in": 8, "d_latent": 32, "k": 2, "gradient_weight": -1.0})


def test_config_round_trips_through_build_dictionary() -> None:
    dictionary = GradientTopKDictionary(8, 32, k=3, gradient_weight=2.5, hook_in=HOOK)
    rebuilt = build_dictionary(dictionary.config())
    assert isinstance(rebuilt, GradientTopKDictionary) and rebuilt.config() == dictionary.config()
