"""Capture on several processes fills the same store as one process: `--workers`, torchrun, kill, resume."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.cli.test_cli import CLI, assert_one_line_error
from tests.distributed.processes import TORCHRUN, free_port, kill_rank_when, ranked_environment, run

HOOKS = ["--hook", "layers.1.resid_post", "--hook", "layers.2.mlp_neurons"]
# 41,000 tokens in sequences of 32 and shards of 16 sequences: 81 shards (the last of 2 sequences), which
# two ranks split 41 / 40.
SIZES = ["--tokens", "41000", "--seq-len", "32", "--batch-size", "4", "--shard-tokens", "512"]


def capture_args(model: Path, out: Path, *extra: str) -> list[str]:
    return ["capture", "--model", str(model), *HOOKS, *SIZES, "--out", str(out), *extra]


def store_files(root: Path) -> dict[str, bytes]:
    """Every file of a store's manifest and named shards, by relative path (staging folders left out)."""
    files = {"manifest.json": (root / "manifest.json").read_bytes()}
    for shard in sorted((root / "shards").glob("0*")):
        for file in sorted(shard.iterdir()):
            files[str(file.relative_to(root))] = file.read_bytes()
    return files


@pytest.fixture(scope="module")
def single(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The store of a one-process capture."""
    out = tmp_path_factory.mktemp("single") / "acts"
    result = run([*CLI, *capture_args(tiny_model_dir, out)])
    assert result.returncode == 0, result.stderr
    return store_files(out)


def test_workers_and_torchrun_fill_the_same_store_byte_for_byte(
    tiny_model_dir: Path, tmp_path: Path, single: dict[str, bytes]
) -> None:
    assert len([name for name in single if name.endswith("tokens.npy")]) == 81
    workers = run([*CLI, *capture_args(tiny_model_dir, tmp_path / "workers", "--workers", "2")])
    assert workers.returncode == 0, workers.stderr
    assert "captured 41,024 tokens" in workers.stdout  # both ranks' tokens, reported once by rank 0
    assert workers.stdout.count("captured") == 1
    torchrun = run([*TORCHRUN, *capture_args(tiny_model_dir, tmp_path / "torchrun")])
    assert torchrun.returncode == 0, torchrun.stderr
    for out in ("workers", "torchrun"):
        files = store_files(tmp_path / out)
        assert files.keys() == single.keys()
        assert [name for name in files if files[name] != single[name]] == []  # the manifest too: no timings


def test_a_killed_rank_stops_the_run_in_one_line_and_resume_completes_it(
    tiny_model_dir: Path, tmp_path: Path, single: dict[str, bytes]
) -> None:
    out = tmp_path / "acts"
    command = [*CLI, *capture_args(tiny_model_dir, out, "--workers", "2")]
    killed = kill_rank_when(command, lambda: (out / "shards" / "000000").is_dir())
    assert_one_line_error(killed, "rank 1 was killed by SIGKILL", "--resume")
    done = {p.name for p in (out / "shards").glob("0*")}
    assert "000000" in done and len(done) < 81  # finished shards are kept, the store is not complete
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    resumed = run([*CLI, *capture_args(tiny_model_dir, out, "--resume")])  # one process: another N
    assert resumed.returncode == 0, resumed.stderr
    assert f"{81 - len(done)} shard(s) written, {len(done)} already there" in resumed.stdout
    assert store_files(out) == single


def test_ranks_started_with_other_options_are_refused_in_one_line(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    ranks = [
        subprocess.Popen(
            [*CLI, *capture_args(tiny_model_dir, tmp_path / "acts", "--tokens", tokens)],
            env=ranked_environment(rank, 2, port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank, tokens in enumerate(("640", "960"))
    ]
    for rank, process in enumerate(ranks):
        stdout, stderr = process.communicate(timeout=300)
        result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        assert_one_line_error(
            result, f"rank {rank}: rank 1 was started with other capture options", "n_tokens"
        )
    assert not (tmp_path / "acts").exists()
