"""`featurelens train` on several processes as a user runs it: `--workers`, torchrun, a killed rank, resume.

300 steps on a tiny store; the weights of a 2-rank run stay within ATOL of one process's (summation order of
the gradient all-reduce, see tests/distributed/test_train.py: ~3e-7 here), and so does a run resumed in one
process from the checkpoint of a 2-rank run killed mid-way. The TopK selection runs in float32: with the
bfloat16 selection (``auto`` on AVX512-BF16 CPUs) a 1e-7 difference moves a pre-activation across a bfloat16
rounding step now and then, a near-tied pick flips, and after 300 steps the two runs are different draws
of the same training (W_dec 0.58 apart), not the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

import featurelens as fl
from tests.cli.test_cli import CLI, assert_one_line_error
from tests.distributed.processes import TORCHRUN, kill_rank_when, run

HOOK = "layers.1.resid_post"
ATOL = 1e-5
OPTIONS = [
    *("--hook", HOOK, "--k", "4", "--expansion", "4", "--batch-size", "256", "--lr", "0.01"),
    *("--steps", "300", "--checkpoint-every", "10", "--dead-after-tokens", "2000", "--holdout", "1000"),
    *("--encoder-dtype", "float32"),
]


@pytest.fixture(scope="module")
def store(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train-ranks") / "acts"
    fl.run_capture(
        fl.CaptureConfig(out=str(out), model=str(tiny_model_dir), hooks=(HOOK,), n_tokens=12_000, seq_len=32)
    )
    return out


@pytest.fixture(scope="module")
def single(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "sae"
    result = run([*CLI, "train", "--acts", str(store), *OPTIONS, "--out", str(out)])
    assert result.returncode == 0, result.stderr
    return out


def assert_close_weights(a: Path, b: Path) -> None:
    first, second = load_file(str(a / "weights.safetensors")), load_file(str(b / "weights.safetensors"))
    for name, tensor in first.items():
        gap = float((tensor - second[name]).abs().max())
        assert gap <= ATOL, f"{name} differs by {gap}"


def test_workers_and_torchrun_train_what_one_process_trains(
    store: Path, single: Path, tmp_path: Path
) -> None:
    base = ["train", "--acts", str(store), *OPTIONS]
    workers = run([*CLI, *base, "--out", str(tmp_path / "workers"), "--workers", "2"])
    assert workers.returncode == 0, workers.stderr
    assert workers.stdout.count("held-out FVU") == 1  # rank 0 reports for both
    torchrun = run([*TORCHRUN, *base, "--out", str(tmp_path / "torchrun")])
    assert torchrun.returncode == 0, torchrun.stderr
    expected = json.loads((single / "training.json").read_text())
    for out in ("workers", "torchrun"):
        assert sorted(p.name for p in (tmp_path / out).iterdir()) == sorted(p.name for p in single.iterdir())
        assert_close_weights(single, tmp_path / out)
        training = json.loads((tmp_path / out / "training.json").read_text())
        assert training["steps"] == 300 and training["tokens"] == expected["tokens"]
        assert training["heldout_metrics"]["fvu"] == pytest.approx(
            expected["heldout_metrics"]["fvu"], rel=1e-3
        )


def test_a_killed_rank_stops_training_and_one_process_resumes_it(
    store: Path, single: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sae"
    command = [*CLI, "train", "--acts", str(store), *OPTIONS, "--out", str(out), "--workers", "2"]
    killed = kill_rank_when(command, lambda: (out / "checkpoint" / "state.json").is_file())
    assert_one_line_error(killed, "rank 1 was killed by SIGKILL", "--resume")
    assert not (out / "training.json").exists()
    step = json.loads((out / "checkpoint" / "state.json").read_text())["runs"][0]["step"]
    assert 10 <= step < 300
    resumed = run([*CLI, "train", "--acts", str(store), *OPTIONS, "--out", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "training.json").read_text())["steps"] == 300
    assert_close_weights(single, out)
