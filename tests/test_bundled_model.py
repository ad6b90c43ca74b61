"""The bundled SmolLM2-135M-Instruct through its real GGUF loading code (marked slow; CI runs it)."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import featurelens as fl
from featurelens.capture.run import CaptureConfig
from featurelens.explain.prompts import degenerate_reason

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2() -> fl.LanguageModel:
    started = time.perf_counter()
    lm = fl.load_model("smollm2", device="cpu")
    seconds = time.perf_counter() - started
    print(f"\nload_model('smollm2'): {seconds:.1f}s (GGUF conversion included on a cold cache)")
    return lm


def test_cached_reload_is_fast_and_identical(smollm2: fl.LanguageModel) -> None:
    started = time.perf_counter()
    again = fl.load_model("smollm2", device="cpu")
    seconds = time.perf_counter() - started
    print(f"\ncached reload: {seconds:.1f}s from {again.path}")
    assert again.path is not None and (again.path / "model.safetensors").is_file()
    for (name, a), b in zip(
        smollm2.model.state_dict().items(), again.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_bundled_capture_matches_output_hidden_states(smollm2: fl.LanguageModel) -> None:
    assert smollm2.n_layers == 30 and smollm2.d_model == 576
    ids = smollm2.tokenizer(
        ["def f(x):\n    return x + 1", "The import statement"], return_tensors="pt", padding=True
    )["input_ids"]
    hooks = ["layers.15.resid_post", "layers.28.resid_post", "final_norm", "layers.15.mlp_neurons"]
    acts = smollm2.capture(ids, hooks)
    with torch.inference_mode():
        hidden = smollm2.model(input_ids=ids, output_hidden_states=True).hidden_states
    for hook, reference in (
        ("layers.15.resid_post", hidden[16]),
        ("layers.28.resid_post", hidden[29]),
        ("final_norm", hidden[30]),
    ):
        diff = (acts[hook] - reference).abs().max().item()
        print(f"\n{hook}: max |featurelens - output_hidden_states| = {diff:.3g}")
        assert diff <= 1e-5 * reference.abs().max().item()
    assert acts["layers.15.mlp_neurons"].shape == (*ids.shape, 1536)


def test_attention_sinks_are_reported_as_norm_outliers(smollm2: fl.LanguageModel, tmp_path: Path) -> None:
    config = CaptureConfig(out=str(tmp_path / "acts"), n_tokens=4096, skip_positions=0, keep_special=True)
    fl.run_capture(config, smollm2)
    store = fl.ActivationStore.open(config.out)
    norms = store.norms("layers.15.resid_post")
    position_zero = np.flatnonzero(store.positions == 0)
    print(f"\nmedian norm {np.median(norms):.0f}, position-0 norms {norms[position_zero].min():.0f}+")
    assert set(position_zero) <= set(store.outlier_rows("layers.15.resid_post"))
    dropped = dataclasses.replace(config, out=str(tmp_path / "dropped"), skip_positions=1)
    fl.run_capture(dropped, smollm2)
    assert fl.ActivationStore.open(dropped.out).manifest["outliers"]["rows"]["layers.15.resid_post"] < len(
        position_zero
    )


def run_featurelens(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    command = [sys.executable, "-m", "featurelens.cli.main", *args]
    # the bundled model explaining on a busy 2-core CPU has run past 10 minutes
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=1500)


def test_featurelens_run_captures_trains_evaluates_and_maps(tmp_path: Path) -> None:
    args = ["run", "--tokens", "4096", "--expansion", "4", "--batch-size", "512", "--eval-tokens", "512"]
    result = run_featurelens(*args, "--explain-local", "2", "--out", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    assert "captured 4,096 tokens" in result.stdout and "layers.15.resid_post" in result.stdout
    store = fl.ActivationStore.open(tmp_path / "demo" / "acts")
    assert store.activations("layers.15.resid_post").shape[1] == 576
    sae = fl.Dictionary.load(tmp_path / "demo" / "sae")
    assert (sae.d_in, sae.d_latent, sae.hook_in) == (576, 2304, "layers.15.resid_post")
    evaluation = json.loads((tmp_path / "demo" / "sae" / "evaluation.json").read_text())
    assert evaluation["held_out"] and evaluation["l0"] <= 32
    assert evaluation["fvu"] < 1.0 and 0.0 < evaluation["ce_loss_recovered"] < 1.0  # a real model, brief SAE
    assert "CE loss recovered" in result.stdout
    with fl.Atlas.open(tmp_path / "demo" / "atlas.sqlite") as atlas:
        assert len(atlas) == 2304 and atlas.meta["source"] == "store"
        assert atlas.meta["tokens"] == store.n_tokens - len(store.outlier_rows("layers.15.resid_post"))
        densest = atlas.feature(atlas.features(limit=1)[0].id)
        assert densest.top and densest.top[0].activation == densest.max_activation
        lm = fl.load_model("smollm2")
        direction = sae.W_dec[densest.id].detach()
        unit = direction / direction.pow(2).mean().sqrt()
        logits = lm.model.lm_head.weight.detach() @ (lm.model.model.norm.weight.detach() * unit)
        assert [t.token for t in densest.output_top] == logits.topk(10).indices.tolist()
        # run explains the two densest with the bundled model too: a 135M explainer's reply is either stored
        # (and then not degenerate) or recorded as a skip with its reason (it often says only "9." or "-")
        skipped = dict(
            sqlite3.connect(tmp_path / "demo" / "atlas.sqlite").execute(
                "SELECT feature, reason FROM explanation_skips WHERE method = 'local:smollm2'"
            )
        )
        explained = []
        for summary in atlas.features(limit=2):
            methods = {e.method: e for e in atlas.feature(summary.id).explanations}
            assert methods["baseline"].scorer == "local:smollm2"
            assert ("local:smollm2" in methods) != (summary.id in skipped), (methods, skipped)
            assert all(
                e.detection_auroc is not None and 0 <= e.detection_auroc <= 1 for e in methods.values()
            )
            if "local:smollm2" in methods:
                explained.append(methods["local:smollm2"].text)
        assert all(degenerate_reason(text) is None for text in explained), explained
        assert len(explained) + len(skipped) == 2
        assert all(reason for reason in skipped.values()) and set(skipped) <= {
            f.id for f in atlas.features(limit=2)
        }
        assert sum(1 for f in atlas.features(limit=len(atlas)) if f.explanation) >= len(atlas) // 2
    rerun = run_featurelens(*args, "--out", str(tmp_path / "demo"))
    assert rerun.returncode == 0, rerun.stderr
    assert "reusing the finished capture" in rerun.stdout and "reusing the trained dictionary" in rerun.stdout
    assert "reusing the atlas" in rerun.stdout and "featurelens serve" in rerun.stdout
    assert "were already explained" in rerun.stdout
    # the default leaves the bundled explainer out and names the command for a stronger one
    assert "--explainer openai --base-url" in rerun.stdout and "--explainer openai" not in result.stdout
    stages = [line.split()[1] for line in rerun.stdout.splitlines() if "│ reused" in line]
    assert stages == ["capture", "train", "atlas"] and "featurelens run:" in rerun.stdout
