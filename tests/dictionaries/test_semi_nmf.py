"""Known answers for semi-NMF: encode is an exact NNLS, the streaming fit equals the paper's full-batch
algorithm, planted directions are recovered, features edit the MLP exactly, and the CLI trains it like any
other family."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import nnls

import featurelens as fl
from featurelens.dictionaries import Dictionary, DictionaryError, build_dictionary
from featurelens.dictionaries.semi_nmf import (
    SemiNMFDictionary,
    semi_nmf_full_batch,
    semi_nmf_objective,
)
from featurelens.errors import FeatureLensError
from featurelens.intervene import FeatureEdit, add_features, intervening
from featurelens.training import TrainConfig
from featurelens.training.from_store import StoreTraining, train_on_store
from featurelens.training.live import LiveTraining, train_live
from featurelens.training.semi_nmf import SufficientStatistics, fit_semi_nmf
from tests.cli.test_cli import assert_one_line_error, featurelens
from tests.conftest import build_tiny_model
from tests.dictionaries.downstream import assert_flows_downstream
from tests.dictionaries.planted import mean_max_cosine, planted_codes, planted_directions, single_threaded

HOOK = "layers.1.mlp_neurons"

one_thread = pytest.fixture(autouse=True, scope="module")(single_threaded)


def with_directions(directions: torch.Tensor, **kwargs: object) -> SemiNMFDictionary:
    d = SemiNMFDictionary(directions.shape[1], directions.shape[0], **kwargs)  # type: ignore[arg-type]
    with torch.no_grad():
        d.W_dec.copy_(directions)
    return d


def planted_data(n_features: int, d: int, rows: int, active: int, noise: float) -> tuple[torch.Tensor, ...]:
    directions = planted_directions(n_features, d)
    codes = planted_codes(n_features, 1, rows, active=active)[0]
    x = codes @ directions + noise * torch.randn(rows, d, generator=torch.Generator().manual_seed(9))
    return x, directions


def scipy_nnls(x: torch.Tensor, directions: torch.Tensor) -> np.ndarray:
    """Float64 NNLS per row: argmin_{h >= 0} ||x_i - h directions||."""
    basis = directions.double().numpy().T
    return np.stack([nnls(basis, row)[0] for row in x.double().numpy()])


# -- 1. encode: non-negative least squares -----------------------------------------------------------


def test_encode_equals_scipy_nnls_when_k_is_not_limiting() -> None:
    directions = planted_directions(12, 24, seed=3)
    x = torch.randn(64, 24, generator=torch.Generator().manual_seed(4))
    reference = scipy_nnls(x, directions)
    assert (reference > 0).sum(1).max() <= 11 and (reference == 0).any()  # k=11 keeps every non-zero
    for k in (11, None):
        codes = with_directions(directions, k=k, iterations=200).encode(x)
        error = np.abs(codes.numpy() - reference).max()
        assert error < 1e-4, f"k={k}: max |codes - scipy nnls| = {error:.2e}"


def test_k_largest_codes_are_refitted_by_nnls_on_their_support() -> None:
    directions = planted_directions(12, 24, seed=3)
    x = torch.randn(32, 24, generator=torch.Generator().manual_seed(5))
    codes = with_directions(directions, k=3, iterations=200).encode(x)
    assert int((codes != 0).sum(1).max()) <= 3 and (codes >= 0).all()
    for row, code in zip(x, codes, strict=True):
        support = torch.topk(code, 3).indices
        refit = scipy_nnls(row[None], directions[support])[0]
        assert np.abs(code[support].numpy() - refit).max() < 1e-4


def test_l1_weight_soft_thresholds_orthonormal_directions() -> None:
    directions = torch.linalg.qr(torch.randn(16, 8, generator=torch.Generator().manual_seed(6)))[0].T
    x = torch.randn(40, 16, generator=torch.Generator().manual_seed(7))
    codes = with_directions(directions, k=None, l1=0.3).encode(x)
    torch.testing.assert_close(codes, (x @ directions.T - 0.3).clamp_min(0), atol=1e-5, rtol=0)


def test_the_gram_cache_follows_decoder_edits() -> None:
    d = SemiNMFDictionary(8, 6, k=3)
    gram, top = d.gram()
    assert d.gram()[0] is gram
    with torch.no_grad():
        d.W_dec.mul_(2.0)
    assert torch.allclose(d.gram()[0], 4 * gram) and d.gram()[1] == pytest.approx(4 * top, rel=1e-5)


# -- 2. fitting ---------------------------------------------------------------------------------------


def test_sufficient_statistics_give_the_exact_least_squares_directions_and_objective() -> None:
    x = torch.randn(300, 10, generator=torch.Generator().manual_seed(8)) + 1.0
    codes = torch.rand(300, 4, generator=torch.Generator().manual_seed(9))
    stats = SufficientStatistics(4, 10, torch.device("cpu"))
    for rows in zip(x.split(70), codes.split(70), strict=True):
        stats.add(*rows)
    f = stats.directions()
    reference = torch.linalg.lstsq(codes.double(), x.double()).solution
    torch.testing.assert_close(f, reference, atol=1e-8, rtol=1e-8)
    total = float((x.double() - x.double().mean(0)).square().sum())
    assert stats.fvu(f) == pytest.approx(semi_nmf_objective(x, codes, f) / total, rel=1e-8)


def test_streaming_fit_matches_the_full_batch_reference() -> None:
    # Measured: full batch (1000 multiplicative updates) 6.432, streaming (30 passes of 4 batches) 6.458.
    x, _ = planted_data(16, 32, 4000, active=3, noise=0.01)
    reference_directions, reference_codes = semi_nmf_full_batch(x, 16, iterations=1000, seed=0)
    assert torch.allclose(reference_directions.norm(dim=1), torch.ones(16)) and (reference_codes >= 0).all()
    reference = semi_nmf_objective(x, reference_codes, reference_directions)
    dictionary = SemiNMFDictionary(32, 16, k=None, iterations=100)
    seen: list[tuple[int, int | None]] = []
    reports = fit_semi_nmf(
        dictionary, x, lambda: x.split(1000), passes=30, seed=0, on_batch=lambda *read: seen.append(read)
    )
    assert seen[3] == (4000, None) and seen[4] == (5000, 120_000) and seen[-1] == (120_000, 120_000)
    streamed = semi_nmf_objective(x, dictionary.encode(x), dictionary.W_dec.detach())
    gap = streamed / reference - 1
    print(f"objective full batch {reference:.4f}, streaming {streamed:.4f} ({gap:+.2%})")
    assert abs(gap) <= 0.01
    assert reports[-1].fvu <= reports[0].fvu and reports[-1].rows == 4000 and reports[-1].batches == 4


def test_streaming_fit_recovers_planted_directions() -> None:
    # 24 signed directions in 48 dimensions, 3 per row. Measured: mean max-cosine 0.986 with k=3.
    x, directions = planted_data(24, 48, 8000, active=3, noise=0.01)
    dictionary = SemiNMFDictionary(48, 24, k=3)
    fit_semi_nmf(dictionary, x[:4000], lambda: x.split(1000), passes=15, seed=0)
    score = mean_max_cosine(directions, dictionary.W_dec.detach())
    print(f"planted recovery: mean max-cosine {score:.3f}")
    assert score >= 0.9


# -- 3. the paper's causal use through the intervention API ------------------------------------------


def test_adding_and_ablating_features_edit_the_mlp_exactly() -> None:
    lm = fl.LanguageModel(build_tiny_model("llama"), None, spec="tiny-llama")
    tokens = torch.randint(3, 96, (4, 16), generator=torch.Generator().manual_seed(10))
    names = [HOOK, "layers.1.mlp_out"]
    clean = lm.capture(tokens, names)
    neurons = clean[HOOK]
    width = neurons.shape[-1]
    dictionary = SemiNMFDictionary(width, 16, k=4, hook_in=HOOK)
    fit_semi_nmf(dictionary, neurons.reshape(-1, width), lambda: [neurons.reshape(-1, width)], passes=3)
    down = lm.model.model.layers[1].mlp.down_proj.weight.detach()  # [d_model, width], no bias in llama
    direction = dictionary.W_dec.detach()[5]
    with intervening(lm, {HOOK: add_features(dictionary, {5: 2.5})}):
        added = lm.capture(tokens, names)
    torch.testing.assert_close(added[HOOK] - neurons, (2.5 * direction).expand_as(neurons))
    expected = (2.5 * direction @ down.T).expand_as(clean["layers.1.mlp_out"])
    torch.testing.assert_close(added["layers.1.mlp_out"] - clean["layers.1.mlp_out"], expected)

    codes = dictionary.encode(neurons.reshape(-1, width))
    feature = int((codes != 0).sum(0).argmax())
    with intervening(lm, {HOOK: FeatureEdit(dictionary, scale={feature: 0.0})}):
        ablated = lm.capture(tokens, [HOOK])[HOOK]
    removed = -codes[:, feature : feature + 1] * dictionary.W_dec.detach()[feature]
    assert codes[:, feature].abs().sum() > 0
    torch.testing.assert_close(ablated - neurons, removed.reshape(neurons.shape), atol=1e-5, rtol=1e-5)


# -- 4. files, the CLI and the rest of the loop -------------------------------------------------------


@pytest.mark.parametrize("k", [5, None])
def test_save_load_and_config_round_trip(tmp_path: Path, k: int | None) -> None:
    config = {"arch": "seminmf", "d_in": 12, "d_latent": 8, "k": k, "iterations": 30, "l1": 0.1}
    d = build_dictionary({**config, "hook_in": HOOK})
    assert build_dictionary(d.config()).config() == d.config()
    x = torch.randn(20, 12, generator=torch.Generator().manual_seed(11)) * 3
    loaded = Dictionary.load(d.save(tmp_path / "seminmf"))
    assert type(loaded) is SemiNMFDictionary and loaded.config() == d.config()
    assert json.loads((tmp_path / "seminmf" / "config.json").read_text())["k"] == k
    assert torch.equal(loaded.encode(x), d.encode(x))


@pytest.fixture(scope="module")
def store(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seminmf-cli") / "acts"
    hooks = (HOOK, "layers.1.resid_post")
    fl.run_capture(
        fl.CaptureConfig(out=str(out), model=str(tiny_model_dir), hooks=hooks, n_tokens=4000, seq_len=32)
    )
    return out


def test_cli_trains_seminmf_and_it_flows_downstream(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "seminmf"
    small = ["--k", "4", "--latents", "16", "--epochs", "3", "--batch-size", "512", "--holdout", "500"]
    trained = featurelens(
        "train", "--acts", str(store), "--hook", HOOK, "--arch", "seminmf", "--out", str(out), *small
    )
    assert trained.returncode == 0, trained.stderr
    assert trained.stderr == "" and "semi-NMF pass 3/3" in trained.stdout
    dictionary = Dictionary.load(out)
    assert isinstance(dictionary, SemiNMFDictionary) and (dictionary.k, dictionary.d_latent) == (4, 16)
    training = json.loads((out / "training.json").read_text())
    assert training["train_config"]["latents"] == 16 and training["heldout_metrics"]["l0"] <= 4
    assert training["heldout_metrics"]["fvu"] < 1
    assert_flows_downstream(out, tmp_path, max_l0=4)


def test_cli_warns_once_for_a_hook_that_is_not_mlp_neurons(store: Path, tmp_path: Path) -> None:
    small = ["--k", "2", "--latents", "8", "--epochs", "1", "--holdout", "500"]
    hook = "layers.1.resid_post"
    out = str(tmp_path / "resid")
    trained = featurelens(
        "train", "--acts", str(store), "--hook", hook, "--arch", "seminmf", "--out", out, *small
    )
    assert trained.returncode == 0, trained.stderr
    assert trained.stderr.strip().splitlines() == [
        f"warning: seminmf is meant for MLP neurons (layers.N.mlp_neurons), not {hook}"
    ]


def test_cli_refuses_k_not_below_the_latents_in_one_line(store: Path, tmp_path: Path) -> None:
    bad = ["--hook", HOOK, "--arch", "seminmf", "--k", "16", "--latents", "16", "--out", str(tmp_path / "o")]
    assert_one_line_error(
        featurelens("train", "--acts", str(store), *bad), "k must be between 1 and d_latent - 1 = 15, got 16"
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"acts": "missing"}, "missing"),
        ({"hook_in": "layers.0.mlp_neurons"}, "layers.0.mlp_neurons"),
        ({"steps": 5}, "--epochs, not --steps"),
        ({"hook_out": "layers.1.resid_post"}, "one hook, without a skip connection"),
    ],
)
def test_store_training_refuses_bad_input(
    store: Path, tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    job = {"acts": str(store), "out": str(tmp_path / "o"), "holdout_tokens": 500}
    config = TrainConfig(arch="seminmf", k=2, latents=8, hook_in=HOOK)
    for field in ("hook_in", "hook_out"):
        if field in changes:
            config = dataclasses.replace(config, **{field: changes.pop(field)})
    job |= {key: str(tmp_path / value) if key == "acts" else value for key, value in changes.items()}
    with pytest.raises(FeatureLensError, match=message):
        train_on_store(StoreTraining(**job), [config])  # type: ignore[arg-type]


def test_live_training_is_refused_before_loading_a_model(tmp_path: Path) -> None:
    job = LiveTraining(model=str(tmp_path / "no-model"), out=str(tmp_path / "o"))
    with pytest.raises(DictionaryError, match="not live: capture them with featurelens capture"):
        train_live(job, [TrainConfig(arch="seminmf", k=2, latents=8, hook_in=HOOK)])


def test_dictionary_refuses_bad_settings() -> None:
    with pytest.raises(DictionaryError, match="k must be between 1 and d_latent - 1 = 7, got 8"):
        SemiNMFDictionary(12, 8, k=8)
    with pytest.raises(DictionaryError, match="iterations >= 1 and l1 >= 0"):
        SemiNMFDictionary(12, 8, k=2, l1=-1.0)
    with pytest.raises(DictionaryError, match="not by gradient steps"):
        SemiNMFDictionary(12, 8, k=2).training_forward(torch.zeros(1, 12), torch.zeros(1, 12))
