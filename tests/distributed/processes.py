"""Real processes for the distributed tests: the CLI under `--workers`, torchrun or a hand-set environment,
and the worker processes of a launch, found by their RANK."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp

from tests.cli.test_cli import CLI

# One thread per process: the store is then the same byte for byte whatever the number of processes, and
# two processes on a busy 2-core machine do not spin against each other.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
TORCHRUN = [
    CLI[0],
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc-per-node",
    "2",
    "-m",
    "featurelens.cli.main",
]


def run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env or ENV)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def spawn_two_ranks(function: Callable[..., None], *args: Any) -> None:
    """Run ``function(rank, port, *args)`` in two spawned processes on a fresh port."""
    mp.spawn(function, args=(free_port(), *args), nprocs=2)


def ranked_environment(rank: int, world_size: int, port: int) -> dict[str, str]:
    """What torchrun sets for one of its workers."""
    ranks = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": world_size, "LOCAL_WORLD_SIZE": world_size}
    return {
        **ENV,
        **{k: str(v) for k, v in ranks.items()},
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def worker_pids(launcher: int) -> dict[int, int]:
    """rank -> pid of the workers a launcher process started (its children with RANK in their environment)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        rank = [v[5:] for v in environ if v.startswith(b"RANK=")]
        if parent == launcher and rank:
            found[int(rank[0])] = int(entry.name)
    return found


def kill_rank_when(
    command: list[str], ready: Callable[[], bool], rank: int = 1, world_size: int = 2
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` (a `--workers` launch); once ``ready()``, freeze every worker, SIGKILL ``rank`` and let
    the others go on: a rank dying mid-run at a known point. Returns the launcher's completed process."""
    launcher = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    pids: dict[int, int] = {}
    while len(pids) < world_size or not ready():
        assert launcher.poll() is None and time.monotonic() < deadline, "the run ended before the kill"
        pids = pids if len(pids) == world_size else worker_pids(launcher.pid)
        time.sleep(0.005)
    for pid in pids.values():
        os.kill(pid, signal.SIGSTOP)
    os.kill(pids[rank], signal.SIGKILL)
    for other, pid in pids.items():
        if other != rank:
            os.kill(pid, signal.SIGCONT)
    stdout, stderr = launcher.communicate(timeout=240)
    return subprocess.CompletedProcess(command, launcher.returncode, stdout, stderr)
