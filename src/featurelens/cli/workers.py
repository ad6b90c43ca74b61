"""How capture and train run on several processes: ``--workers N`` launches them, torchrun's env is read.

``featurelens <verb> --workers N ...`` starts N copies of the same command (without ``--workers``) under
torch.distributed's elastic agent and waits; ``torchrun --nproc-per-node N -m featurelens.cli.main <verb>``
does the same from outside. Either way each worker finds its rank in the environment and joins a gloo group.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from featurelens import distributed
from featurelens.distributed import DistributedError, World


def add_workers_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="run on this many local processes (torch.distributed, gloo); under torchrun, ranks come from it",
    )


def without_workers(argv: Sequence[str]) -> list[str]:
    """``argv`` less its ``--workers N`` / ``--workers=N``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out


def launch_or_join(args: argparse.Namespace) -> World | None:
    """None once ``--workers`` processes have done the work; else the world this process runs in
    (from torchrun's environment, or a world of one)."""
    world = distributed.launched_world()
    if args.workers < 1:
        raise DistributedError(f"--workers must be a positive number of processes, got {args.workers}")
    if args.workers > 1:
        if world is not None:
            raise DistributedError("--workers cannot be used under torchrun, which already started the ranks")
        distributed.launch(without_workers(args.argv), args.workers)
        return None
    return world or World()
