"""Leaving `process_group` ends the group: no gloo thread outlives it.

A group kept alive past ``destroy_process_group`` (torch.distributed.nn.functional's default arguments,
bound when torch._dynamo is first imported inside a group, as creating an optimizer does) leaves gloo's
threads running into interpreter shutdown, where one of them now and then aborts the process (SIGABRT).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from featurelens.distributed import World, all_sum, process_group
from tests.distributed.processes import spawn_two_ranks

GLOO_THREADS = ("pt_gloo_runloop", "gloo_tcp_loop")


def thread_names() -> list[str]:
    return [(task / "comm").read_text().strip() for task in Path("/proc/self/task").iterdir()]


def rank_leaves_no_gloo_thread(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    assert "torch._dynamo" not in sys.modules, (
        "the first import of torch._dynamo must happen inside the group"
    )
    with process_group(World(rank, 2)):
        weight = torch.nn.Parameter(torch.ones(3))
        torch.optim.Adam([weight]).zero_grad()  # imports torch._dynamo
        assert "torch._dynamo" in sys.modules
        assert all_sum(torch.ones(3)).tolist() == [2.0, 2.0, 2.0]
        assert any(name in GLOO_THREADS for name in thread_names())
    assert not any(name in GLOO_THREADS for name in thread_names()), thread_names()


def test_leaving_the_group_stops_its_threads() -> None:
    spawn_two_ranks(rank_leaves_no_gloo_thread)
