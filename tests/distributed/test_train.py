"""Data-parallel training matches one process: every family of step, the CLI launched two ways, kill, resume.

Tolerance: a 2-rank step sums two half-batch gradients where one process sums the whole batch at once, so
results differ by floating-point summation order (~1e-7 relative per step), which Adam's normalised steps
carry forward; after these 30 steps weights agree to ~4e-6 (entries ~0.1-1), checked at 2e-5.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from featurelens.distributed import World, process_group
from featurelens.training import TrainConfig, train_dictionaries
from tests.dictionaries.planted import planted_batches, planted_directions
from tests.distributed.processes import spawn_two_ranks

ATOL = 2e-5
STEPS = 30


def configs() -> list[TrainConfig]:
    """One of each kind of cross-rank state: AuxK on dead latents, a target-L0 controller, codebook revival
    and BatchTopK's running threshold (it selects per rank slice, so its ranks only have to agree)."""
    common = {
        "encoder_dtype": "float32",
        "batch_size": 256,
        "steps": STEPS,
        "lr": 1e-2,
        "warmup_steps": 5,
        "dead_after_tokens": 256,
    }
    return [
        TrainConfig(arch="topk", k=3, expansion=16, **common),  # type: ignore[arg-type]
        TrainConfig(arch="relu", target_l0=3.0, sparsity_coefficient=0.1, expansion=16, **common),  # type: ignore[arg-type]
        TrainConfig(arch="codebook", k=3, expansion=16, **common),  # type: ignore[arg-type]
        TrainConfig(arch="batchtopk", k=3, expansion=16, **common),  # type: ignore[arg-type]
    ]


def states(results: list) -> dict[str, torch.Tensor]:
    return {
        f"{i}.{name}": t.contiguous()
        for i, r in enumerate(results)
        for name, t in r.dictionary.state_dict().items()
    }


def train_rank(rank: int, port: int, batches: list[torch.Tensor], out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with process_group(World(rank, 2)):
        results = train_dictionaries(configs(), batches)
    save_file(states(results), str(out / f"rank{rank}.safetensors"))


def test_two_ranks_match_one_process_on_the_same_global_batches(tmp_path: Path) -> None:
    batches = planted_batches(planted_directions(128, 16), STEPS, 256, active=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = states(train_dictionaries(configs(), batches))
    finally:
        torch.set_num_threads(threads)
    spawn_two_ranks(train_rank, batches, tmp_path)
    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    for name, tensor in rank0.items():
        assert torch.equal(tensor, rank1[name]), name  # every rank holds the same dictionary, bit for bit
        if not name.startswith("3."):  # BatchTopK selects per rank slice
            torch.testing.assert_close(tensor, alone[name], rtol=0, atol=ATOL, msg=name)
