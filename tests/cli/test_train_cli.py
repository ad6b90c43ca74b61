"""`featurelens train` and `featurelens evaluate` as a user runs them: real subprocesses on a real store."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import featurelens as fl
from featurelens.dictionaries import Dictionary
from featurelens.training.from_store import short_run_warning
from tests.cli.test_cli import CLI, assert_one_line_error, featurelens

HOOK = "layers.1.resid_post"


@pytest.fixture(scope="module")
def store(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train-cli") / "acts"
    config = fl.CaptureConfig(
        out=str(out),
        model=str(tiny_model_dir),
        hooks=(HOOK, "layers.1.mlp_in", "layers.1.mlp_out"),
        n_tokens=12_000,
        seq_len=32,
        batch_size=16,
    )
    fl.run_capture(config)
    return out


def train(store: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return featurelens("train", "--acts", str(store), "--hook", HOOK, "--out", str(out), *extra)


SMALL = ["--k", "4", "--expansion", "4", "--batch-size", "256", "--lr", "0.01"]


def test_train_then_evaluate(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "sae"
    result = train(store, out, *SMALL, "--epochs", "3", "--holdout", "1000")
    assert result.returncode == 0, result.stderr
    assert "held-out FVU" in result.stdout and f"featurelens evaluate {out}" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "training.json", "weights.safetensors"]
    training = json.loads((out / "training.json").read_text())
    n_rows = fl.ActivationStore.open(store).n_tokens
    assert training["rows"] == {"train": [0, n_rows - 1000], "heldout": [n_rows - 1000, n_rows]}
    assert training["steps"] == 3 * -(-(n_rows - 1000) // 256)
    held = training["heldout_metrics"]
    assert held["n_tokens"] == 1000 and held["l0"] <= 4 and held["fvu"] < 0.8  # learned beyond the mean

    dictionary = Dictionary.load(out)
    x = torch.from_numpy(np.asarray(fl.ActivationStore.open(store).activations(HOOK)[-1000:])).float()
    assert dictionary.hook_in == HOOK and dictionary.d_latent == 128
    fvu = ((dictionary(x) - x).square().sum() / (x - x.mean(0)).square().sum()).item()
    assert fvu == pytest.approx(held["fvu"], rel=1e-4)  # the saved weights are the ones measured

    evaluation = featurelens("evaluate", str(out), "--tokens", "640", "--json")
    assert evaluation.returncode == 0, evaluation.stderr
    metrics = json.loads(evaluation.stdout)
    assert 20 * 31 - 10 <= metrics["n_tokens"] <= 20 * 31  # 20 sequences of 32 less position 0 and EOS
    assert metrics["ce_zero_ablated"] > metrics["ce_clean"]
    assert metrics["ce_loss_recovered"] > 0 and metrics["kl_to_clean"] > 0  # a random model: may exceed 1
    assert json.loads((out / "evaluation.json").read_text())["held_out"] is True
    shown = featurelens("evaluate", str(out), "--tokens", "64", "--no-loss")
    assert "fraction of variance unexplained" in shown.stdout and "CE loss" not in shown.stdout


def test_a_sweep_trains_every_combination_in_one_pass(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    result = train(store, out, "--k", "2,4", "--expansion", "2,4", "--batch-size", "512", "--steps", "5")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["k2-x2", "k2-x4", "k4-x2", "k4-x4"]
    for folder in out.iterdir():
        config = json.loads((folder / "config.json").read_text())
        assert folder.name == f"k{config['k']}-x{config['d_latent'] // 32}"
        assert json.loads((folder / "training.json").read_text())["steps"] == 5


def test_a_transcoder_reads_one_hook_and_writes_another(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "transcoder"
    args = ["--hook", "layers.1.mlp_in", "--hook-out", "layers.1.mlp_out", "--skip", "--steps", "10"]
    result = featurelens("train", "--acts", str(store), "--out", str(out), *SMALL, *args)
    assert result.returncode == 0, result.stderr
    transcoder = Dictionary.load(out)
    assert (transcoder.hook_in, transcoder.hook_out) == ("layers.1.mlp_in", "layers.1.mlp_out")
    assert transcoder.W_skip is not None


def test_export_to_saelens_and_back_keeps_the_outputs(store: Path, tmp_path: Path) -> None:
    assert train(store, tmp_path / "sae", *SMALL, "--steps", "3").returncode == 0
    exported = featurelens(
        "export", str(tmp_path / "sae"), "--format", "saelens", "--out", str(tmp_path / "sl")
    )
    assert exported.returncode == 0, exported.stderr
    assert sorted(p.name for p in (tmp_path / "sl").iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    assert (
        json.loads((tmp_path / "sl" / "cfg.json").read_text())["metadata"]["hook_name"]
        == "blocks.1.hook_resid_post"
    )
    back = featurelens(
        "export", str(tmp_path / "sl"), "--format", "featurelens", "--out", str(tmp_path / "back")
    )
    assert back.returncode == 0, back.stderr
    x = torch.randn(20, 32)
    original, returned = Dictionary.load(tmp_path / "sae"), Dictionary.load(tmp_path / "back")
    assert returned.hook_in == HOOK
    torch.testing.assert_close(returned.encode(x), original.encode(x))
    torch.testing.assert_close(returned(x), original(x))
    again = featurelens("export", str(tmp_path / "sae"), "--format", "saelens", "--out", str(tmp_path / "sl"))
    assert_one_line_error(again, "already holds files")


def test_live_training_needs_no_store_and_is_deterministic(tiny_model_dir: Path, tmp_path: Path) -> None:
    live = ["train", "--model", str(tiny_model_dir), "--hook", HOOK, "--tokens", "6400", "--seq-len", "32"]
    first = featurelens(*live, *SMALL, "--out", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr
    training = json.loads((tmp_path / "a" / "training.json").read_text())
    assert training["live"] and training["model"] == str(tiny_model_dir)
    assert training["steps"] == 6400 * 31 // 32 // 256 + 1 and training["train_metrics"]["l0"] <= 4
    assert featurelens(*live, *SMALL, "--out", str(tmp_path / "b")).returncode == 0
    a, b = (
        load_file(tmp_path / "a" / "weights.safetensors"),
        load_file(tmp_path / "b" / "weights.safetensors"),
    )
    assert all(torch.equal(a[name], b[name]) for name in a)
    evaluation = featurelens("evaluate", str(tmp_path / "a"), "--tokens", "320", "--json")
    assert evaluation.returncode == 0, evaluation.stderr
    assert json.loads(evaluation.stdout)["fvu"] < 1.0
    assert_one_line_error(
        featurelens("train", "--model", str(tiny_model_dir), "--out", str(tmp_path / "c")), "--hook"
    )


def test_kill_minus_nine_then_resume_equals_an_uninterrupted_run(store: Path, tmp_path: Path) -> None:
    slow = [
        "--k",
        "8",
        "--expansion",
        "64",
        "--batch-size",
        "512",
        "--epochs",
        "12",
        "--checkpoint-every",
        "3",
    ]
    straight = tmp_path / "straight"
    assert train(store, straight, *slow).returncode == 0

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [*CLI, "train", "--acts", str(store), "--hook", HOOK, "--out", str(killed), *slow],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = killed / "checkpoint" / "state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (state.exists() and '"step": 9' in state.read_text()):
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "training.json").exists(), "the kill should land mid-training"
    assert_one_line_error(train(store, killed, *slow), "unfinished training run", "--resume")
    assert_one_line_error(train(store, killed, *slow, "--k", "6", "--resume"), "other settings")

    resumed = train(store, killed, *slow, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_file(straight / "weights.safetensors"), load_file(killed / "weights.safetensors")
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, rtol=1e-5, atol=1e-6)
    assert not (killed / "checkpoint").exists()


def test_bad_input_is_one_clear_line(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "sae"
    assert_one_line_error(
        train(store, out, "--k", "128", "--expansion", "4"), "k must be between 1 and d_latent - 1 = 127"
    )
    assert_one_line_error(train(store, out, "--k", "0"), "k must be between")
    assert_one_line_error(
        featurelens("train", "--acts", str(store), "--out", str(out)), "several hooks", "--hook"
    )
    assert_one_line_error(
        featurelens("train", "--acts", str(store), "--hook", "layers.9.resid_post", "--out", str(out)),
        "no hook 'layers.9.resid_post'",
    )
    assert_one_line_error(train(tmp_path / "nowhere", out), "not an activation store")
    assert_one_line_error(train(store, out, "--epochs", "0"), "--epochs must be a positive")
    assert_one_line_error(train(store, out, "--holdout", "99999999"), "leaves nothing to train on")
    assert not out.exists()
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("precious")
    assert_one_line_error(train(store, occupied, *SMALL, "--steps", "2"), "not a featurelens training folder")
    assert train(store, out, *SMALL, "--steps", "2").returncode == 0
    assert_one_line_error(train(store, out, *SMALL, "--steps", "2"), "already holds", "--overwrite")
    assert train(store, out, *SMALL, "--steps", "2", "--overwrite").returncode == 0
    assert_one_line_error(featurelens("evaluate", str(occupied)), "occupied")
    assert_one_line_error(featurelens("evaluate", str(out), "--tokens", "0"), "--tokens must be a positive")


def test_nan_activations_are_named_by_row(store: Path, tmp_path: Path) -> None:
    poisoned = tmp_path / "poisoned"
    subprocess.run(["cp", "-r", str(store), str(poisoned)], check=True)
    shard = next((poisoned / "shards").iterdir()) / f"{HOOK}.npy"
    rows = np.load(shard, mmap_mode="r+")
    rows[7, 3] = np.nan
    rows.flush()
    del rows
    result = train(poisoned, tmp_path / "sae", *SMALL, "--steps", "200")
    assert_one_line_error(result, "NaN/Inf in 1 rows")


def test_a_run_too_short_to_converge_is_flagged_before_it_starts(store: Path, tmp_path: Path) -> None:
    # one epoch of ~11,000 training rows at 256 per step is ~43 steps: below the 200 a dictionary needs
    short = train(store, tmp_path / "short", *SMALL, "--epochs", "1", "--holdout", "1000")
    assert short.returncode == 0, short.stderr
    warning = [line for line in short.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "--epochs or --steps" in warning[0], short.stderr
    steps = re.search(r"(\d+) steps x 256 tokens", warning[0])
    assert steps is not None, warning[0]
    assert (
        int(steps.group(1)) == json.loads((tmp_path / "short" / "training.json").read_text())["steps"] < 200
    )
    enough = train(store, tmp_path / "enough", *SMALL, "--steps", "200", "--holdout", "1000")
    assert enough.returncode == 0 and "warning" not in enough.stderr, enough.stderr


@pytest.mark.parametrize(
    ("steps", "batch_size", "latents", "warns"),
    [(199, 4096, 1000, True), (200, 4096, 1000, False), (200, 2, 1000, True), (1000, 1, 1000, False)],
)
def test_the_short_run_rule(steps: int, batch_size: int, latents: int, warns: bool) -> None:
    assert (short_run_warning(steps, batch_size, latents) is not None) == warns
