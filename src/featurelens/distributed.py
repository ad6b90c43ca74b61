"""Several processes on one job: the rank and world size torchrun gives, a gloo process group, collectives
that do nothing in one process, and the launcher behind ``--workers N`` (torch.distributed's elastic agent).

Capture and training use the same few calls. One process (the default) never creates a process group:
every collective here returns its input unchanged when no group is active.

A rank whose work fails records its one-line error in torchelastic's error file; the launcher then names
the rank that failed first. Ranks that stop only because a peer went away (:class:`PeerLost`) or were
terminated by the agent are not the cause and are named only when nothing else failed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

# Imported before any process group exists, torch.distributed.nn.functional binds None where it binds
# `group=group.WORLD` as default arguments. Imported later (torch._dynamo imports it, and creating any torch
# optimizer imports torch._dynamo), it would keep the group alive after destroy_process_group: the group's
# gloo threads then outlive Python, and one still releasing the last collective's tensors (which needs the
# GIL) aborts the exiting process (SIGABRT, "terminate called without an active exception").
if dist.is_available():  # a torch built without distributed has no groups, and no such module to import
    import torch.distributed.nn.functional

from featurelens.errors import FeatureLensError

T = TypeVar("T")
TIMEOUT = timedelta(minutes=30)  # a collective waits this long for a slow peer (a shard, a checkpoint)
LAUNCHED = "FEATURELENS_LAUNCHED"  # set by :func:`launch`: workers leave error reporting to the launcher
_PEER_LOST = "stopped because another rank failed"


class DistributedError(FeatureLensError):
    """A distributed run that cannot go on: ranks that disagree, a failed rank, a bad launch."""


class PeerLost(DistributedError):
    """A collective failed because another rank went away (that rank's error is the cause)."""


@dataclass(frozen=True)
class World:
    """This process's place in a job: ``rank`` in [0, ``size``)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_world() -> World | None:
    """The rank and world size torchrun (or ``--workers``) set in the environment, or None outside one."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
    except ValueError:
        raise DistributedError(
            f"RANK={os.environ['RANK']!r} and WORLD_SIZE={os.environ['WORLD_SIZE']!r} must be integers"
        ) from None


def active() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def current_world() -> World:
    """The active group's rank and size, or a world of one."""
    return World(dist.get_rank(), dist.get_world_size()) if active() else World()


@contextmanager
def process_group(world: World | None) -> Iterator[World]:
    """Join the gloo group of ``world`` (MASTER_ADDR/PORT come from the launcher) for the duration.

    A world of one (or None) creates nothing. Leaving destroys the group and joins its gloo threads."""
    if world is None or world.size == 1 or dist.is_initialized():
        yield world or World()
        return
    try:
        dist.init_process_group("gloo", rank=world.rank, world_size=world.size, timeout=TIMEOUT)
    except (RuntimeError, ValueError) as error:
        raise DistributedError(f"rank {world.rank} cannot join its {world.size} peers: {error}") from None
    try:
        yield world
    finally:
        dist.destroy_process_group()


def _collective(call: Callable[[], T]) -> T:
    """Run one collective; a peer that went away becomes :class:`PeerLost`, not a gloo traceback."""
    try:
        return call()
    except RuntimeError as error:  # DistBackendError and gloo's own errors are RuntimeErrors
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PeerLost(f"rank {dist.get_rank()} {_PEER_LOST} ({first})") from None


def barrier() -> None:
    """Wait for every rank."""
    if active():
        _collective(dist.barrier)


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place; every rank gets the same result."""
    if active():
        _collective(lambda: dist.all_reduce(tensor, op=dist.ReduceOp.SUM))
    return tensor


def all_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``tensor`` over ranks, in place."""
    if active():
        _collective(lambda: dist.all_reduce(tensor, op=dist.ReduceOp.MAX))
    return tensor


def gather_objects(value: T) -> list[T]:
    """Every rank's ``value`` (JSON-like, picklable by torch's own protocol), in rank order."""
    if not active():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    _collective(lambda: dist.all_gather_object(out, value))
    return out


def gather_same_shape(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (the same shape and dtype on every rank), in rank order."""
    if not active():
        return [tensor]
    if tensor.device.type != "cpu" and dist.get_backend() == "gloo":  # gloo gathers CPU tensors only
        return [part.to(tensor.device) for part in gather_same_shape(tensor.cpu())]
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    _collective(lambda: dist.all_gather(parts, tensor.contiguous()))
    return parts


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Every rank's rows [n_r, ...] concatenated in rank order [sum n_r, ...] (n_r may differ by rank)."""
    if not active():
        return rows
    sizes = gather_same_shape(torch.tensor([rows.shape[0]]))
    longest = int(max(size.item() for size in sizes))
    padded = rows.new_zeros((longest, *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    parts = gather_same_shape(padded)
    return torch.cat([part[: int(size.item())] for part, size in zip(parts, sizes, strict=True)])


def check_same(value: Any, what: str) -> None:
    """Refuse, on every rank alike, when ranks were started with different ``value`` (a dict of options)."""
    values = gather_objects(value)
    for rank, other in enumerate(values):
        if other != values[0]:
            keys = sorted(k for k in {*values[0], *other} if values[0].get(k) != other.get(k))
            raise DistributedError(
                f"rank {rank} was started with other {what} than rank 0 ({', '.join(keys) or 'values'}); "
                "launch every rank with the same options"
            )


def on_main(call: Callable[[], T], error: type[FeatureLensError] = FeatureLensError) -> T | None:
    """Run ``call`` on rank 0 only; its error (a `FeatureLensError`) is raised on every rank alike.

    Returns rank 0's result there and None elsewhere; every rank waits until rank 0 is done."""
    result, message = None, None
    if current_world().is_main:
        try:
            result = call()
        except FeatureLensError as failure:
            if not active():
                raise
            message = str(failure)
    if active():
        message = gather_objects(message)[0]
    if message is not None:
        raise error(message)
    return result


def slice_rows(n: int, world: World) -> slice:
    """The contiguous part of n rows that ``world.rank`` takes: ranks in order, sizes differing by <= 1."""
    return slice(n * world.rank // world.size, n * (world.rank + 1) // world.size)


# -- errors and the launcher ---------------------------------------------------------------------------


def record_error(message: str) -> None:
    """Leave this rank's one-line error where torchelastic's agent reads it (its error file), if launched."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    extra = {"py_callstack": "", "timestamp": str(int(time.time()))}
    payload = {"message": {"message": message, "extraInfo": extra}}
    try:
        with open(path, "w") as file:
            json.dump(payload, file)
    except OSError:
        pass  # the launcher then reports the exit code alone


def report_to_launcher() -> bool:
    """True in a worker that :func:`launch` started: its launcher prints the one error line."""
    return os.environ.get(LAUNCHED) == "1"


def failure_line(failures: dict[int, Any]) -> str:
    """One line naming the rank that failed first and its error, from torchelastic's ``ProcessFailure``s.

    Ranks that only lost a peer or were terminated by the agent (SIGTERM) are consequences, named only when
    they are all there is. When every failed rank gives the same message (a refusal all ranks agree on),
    the message alone."""

    def consequence(failure: Any) -> bool:
        return _PEER_LOST in str(failure.message) or failure.exitcode == -signal.SIGTERM

    rank, failure = min(failures.items(), key=lambda item: (consequence(item[1]), item[1].timestamp, item[0]))
    messages = {str(f.message) for f in failures.values()}
    if len(messages) == 1 and len(failures) > 1 and failure.exitcode > 0:
        return str(failure.message)
    if failure.exitcode < 0:
        what = f"was killed by {failure.signal_name()}"
    elif failure.error_file_data.get("message", "<NONE>") != "<NONE>":
        what = f"failed: {failure.message}"
    else:
        what = f"exited with code {failure.exitcode} (its error is above)"
    return f"rank {rank} {what}; finished work is kept: rerun with --resume"


def launch(argv: Sequence[str], workers: int) -> None:
    """Run ``featurelens <argv>`` in ``workers`` local processes under torch.distributed's elastic agent.

    Workers read their rank from the environment, as under torchrun; each gets ``cpus // workers`` threads
    unless OMP_NUM_THREADS is set. A failure stops the others and raises one `DistributedError` line."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if workers < 1:
        raise DistributedError(f"--workers must be a positive number of processes, got {workers}")
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)  # the agent's own progress and failure tables
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    os.environ[LAUNCHED] = "1"
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=workers,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        monitor_interval=0.1,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "featurelens.cli.main", *argv)
    except ChildFailedError as error:
        raise DistributedError(failure_line(error.failures)) from None
    finally:
        del os.environ[LAUNCHED]
