"""The CLI as a user runs it: real subprocesses, one-line errors, kill -9 and --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import featurelens as fl

CLI = [sys.executable, "-m", "featurelens.cli.main"]


def featurelens(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_hooks_lists_every_point_with_its_shape(tiny_model_dir: Path) -> None:
    result = featurelens("hooks", "--model", str(tiny_model_dir))
    assert result.returncode == 0, result.stderr
    assert "embed" in result.stdout and "final_norm" in result.stdout
    for point in fl.models.LAYER_POINTS:
        assert f"layers.2.{point}" in result.stdout
    assert "[1, 4, 64]" in result.stdout and "[1, 4, 32]" in result.stdout  # neurons and residual widths


def test_capture_then_info(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "acts"
    args = [
        "capture",
        "--model",
        str(tiny_model_dir),
        "--hook",
        "layers.0.mlp_out",
        "--tokens",
        "640",
        "--seq-len",
        "32",
        "--out",
        str(out),
    ]
    result = featurelens(*args)
    assert result.returncode == 0, result.stderr
    assert "captured 640 tokens" in result.stdout
    assert "capturing: 0/640 tok" in result.stdout  # not a terminal: plain progress lines a log can keep
    assert "capturing: 640/640 tok (100.0%)" in result.stdout
    info = featurelens("info", str(out), "--json")
    manifest = json.loads(info.stdout)
    assert manifest["complete"] and manifest["hooks"] == {"layers.0.mlp_out": {"width": 32}}
    assert manifest["n_rows"] == len(fl.ActivationStore.open(out).tokens) > 500
    assert "layers.0.mlp_out" in featurelens("info", str(out)).stdout
    assert_one_line_error(featurelens(*args), "already holds this complete capture", "--overwrite")
    assert featurelens(*args, "--overwrite").returncode == 0


def test_kill_minus_nine_then_resume_equals_an_uninterrupted_run(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    common = [
        "capture",
        "--model",
        str(tiny_model_dir),
        "--hook",
        "layers.1.resid_post",
        "--tokens",
        "60000",
        "--seq-len",
        "64",
        "--shard-tokens",
        "640",
        "--batch-size",
        "2",
    ]
    straight = tmp_path / "straight"
    assert featurelens(*common, "--out", str(straight)).returncode == 0

    killed = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [*CLI, *common, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not (killed / "shards" / "000003").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    n_done = len(list((killed / "shards").glob("0*")))
    assert 4 <= n_done < 94, "the kill should land mid-capture"
    assert_one_line_error(featurelens("info", str(killed)), "interrupted capture", "--resume")
    assert_one_line_error(featurelens(*common, "--out", str(killed)), "interrupted capture", "--resume")

    resumed = featurelens(*common, "--out", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = fl.ActivationStore.open(straight), fl.ActivationStore.open(killed)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(
        np.asarray(a.activations("layers.1.resid_post")), np.asarray(b.activations("layers.1.resid_post"))
    )


def test_bad_input_is_one_clear_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = ["--model", str(tiny_model_dir), "--hook", "layers.0.resid_post"]
    out = ["--out", str(tmp_path / "acts")]
    assert_one_line_error(featurelens("hooks", "--model", str(tmp_path / "nope")), "nope", "accepted")
    not_gguf = tmp_path / "broken.gguf"
    not_gguf.write_bytes(b"this is not a gguf file at all" * 10)
    assert_one_line_error(featurelens("hooks", "--model", str(not_gguf)), "not a readable GGUF model")
    assert_one_line_error(featurelens("hooks", "--model", str(tmp_path)), "without config.json")
    assert_one_line_error(
        featurelens("hooks", "--model", "no-org/no-model"), "cannot load model 'no-org/no-model'"
    )
    assert_one_line_error(
        featurelens("capture", "--model", str(tiny_model_dir), *out, "--hook", "layers.7.resid_post"),
        "unknown hook point 'layers.7.resid_post'",
        "layers.{0..2}",
    )
    for tokens in ("0", "-5"):
        assert_one_line_error(
            featurelens("capture", *model, *out, "--tokens", tokens), "--tokens must be a positive"
        )
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_one_line_error(featurelens("capture", *model, *out, "--corpus", str(empty)), "no text")
    assert_one_line_error(
        featurelens("capture", *model, *out, "--corpus", str(tmp_path / "missing.jsonl")), "does not exist"
    )
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "thesis.tex").write_text("precious")
    assert_one_line_error(featurelens("capture", *model, "--out", str(occupied)), "holds other files")
    assert_one_line_error(featurelens("info", str(tmp_path)), "not an activation store")
    assert not (tmp_path / "acts").exists()  # nothing was written for any of these


def test_run_refuses_a_bad_number_before_its_first_stage(tmp_path: Path) -> None:
    out = tmp_path / "run"
    for flag, value, expected in [
        ("--tokens", "0", "--tokens must be a positive number, got 0"),
        ("--eval-tokens", "-1", "--eval-tokens must be a positive number"),
        ("--atlas-tokens", "0", "--atlas-tokens must be a positive number"),
        ("--eval-batch-size", "0", "--eval-batch-size must be a positive number"),
        ("--explain-local", "-2", "--explain-local must be 0 (none) or a number of features"),
        ("--epochs", "0", "--epochs must be a positive number"),
        ("--k", "0", "k must be between 1 and d_latent - 1, got 0"),
        ("--batch-size", "0", "batch_size must be a positive integer"),
        ("--k", "16,32", "featurelens run trains one dictionary"),
    ]:
        assert_one_line_error(featurelens("run", "--out", str(out), flag, value), expected)
    assert_one_line_error(
        featurelens("run", "--out", str(out), "--serve", "--port", "70000"), "--port must be"
    )
    assert not out.exists()  # refused before the capture (minutes with the bundled model) began
