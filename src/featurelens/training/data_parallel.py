"""Data-parallel training: each rank trains on its slice of every global batch and all stay identical.

Why an explicit all-reduce of gradients and not ``DistributedDataParallel``: a training step here is more
than one module's forward (several dictionaries trained on the same batches, an AuxK loss on the dead
latents, codebook revival, a target-L0 controller, fused Adam over plain tensors), and what must agree
across ranks is not only the gradients but the step's statistics: which latents fired, the measured L0,
the residual's variance (AuxK's normaliser) and the reported FVU. So a step makes exactly two collectives:
one sum of a small vector of statistics after the forward pass (:func:`step_statistics`) and one sum of
all gradients, flattened into one buffer, after the backward pass (:func:`all_reduce_step`). DDP's
bucketing would overlap that second one with the backward pass; on CPUs with gloo the step is compute
bound, and one explicit buffer keeps every rank's parameters bit-identical without DDP's wrapper.

Each rank's loss is its share of the global one (row means weighted by ``n_local / n``, AuxK's sum over
its rows divided by the global residual variance), so the summed gradients equal the one-process gradient
of the whole batch up to floating-point summation order: results match a one-process run on the same
global batches to about 1e-6 relative per step, not bit for bit. BatchTopK (and Matryoshka) pick the top
n*k activations within each rank's slice, i.e. of batches of n / world_size rows; their thresholds are
averaged over ranks in the same all-reduce.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from featurelens import distributed


@dataclass(frozen=True)
class StepStatistics:
    """One step's statistics over the global batch of ``n`` rows (all ranks).

    ``l0`` mean active latents per row; ``fired`` [d_latent] bool, fired on some row of some rank;
    ``sse`` summed squared residual; ``total`` summed squared deviation of the targets from their mean;
    ``residual_variance`` summed squared deviation of the residual from its mean (AuxK's normaliser).
    """

    n: int
    l0: float
    fired: torch.Tensor
    sse: float
    total: float
    residual_variance: torch.Tensor


def _centred_sum_of_squares(total_sum: torch.Tensor, sum_of_squares: torch.Tensor, n: int) -> torch.Tensor:
    """sum_i ||v_i - mean||^2 from sum_i v_i [d] and sum_i ||v_i||^2 over n rows."""
    return (sum_of_squares - total_sum.square().sum() / n).clamp_min(0.0)


@torch.no_grad()
def step_statistics(
    l0: torch.Tensor, fired: torch.Tensor, residual: torch.Tensor, targets: torch.Tensor
) -> StepStatistics:
    """Sum this rank's statistics with every other rank's in one all-reduce.

    ``l0`` this rank's mean active latents per row; ``fired`` [d_latent] bool; ``residual`` and ``targets``
    [n_local, d_out]."""
    n_local = residual.shape[0]
    parts = [
        torch.tensor([float(n_local), float(l0) * n_local], device=residual.device),
        fired.float(),
        residual.sum(0),
        residual.square().sum().reshape(1),
        targets.sum(0),
        targets.square().sum().reshape(1),
    ]
    summed = distributed.all_sum(torch.cat(parts).cpu().double())
    n, l0_sum = int(summed[0]), float(summed[1])
    d_latent, d_out = fired.shape[0], residual.shape[1]
    fired_any, rest = summed[2 : 2 + d_latent] > 0, summed[2 + d_latent :]
    residual_sum, sse, target_sum, target_squares = rest[:d_out], rest[d_out], rest[d_out + 1 : -1], rest[-1]
    return StepStatistics(
        n=n,
        l0=l0_sum / n,
        fired=fired_any.to(fired.device),
        sse=float(sse),
        total=float(_centred_sum_of_squares(target_sum, target_squares, n)),
        residual_variance=_centred_sum_of_squares(residual_sum, sse, n).float().to(residual.device),
    )


@torch.no_grad()
def all_reduce_step(module: torch.nn.Module, loss: torch.Tensor) -> float:
    """After the backward pass: sum ``module``'s gradients over ranks (each rank's loss is its share of the
    global loss, so the sum is the global gradient), average its floating-point buffers (running thresholds
    updated by the forward pass), and return the summed loss, all in one flattened all-reduce."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    flat = distributed.all_sum(_flatten_dense_tensors([*grads, *buffers, loss.detach().reshape(1)]))
    summed = _unflatten_dense_tensors(flat, [*grads, *buffers, loss.reshape(1)])
    world = distributed.current_world().size
    for grad, total in zip(grads, summed, strict=False):
        grad.copy_(total)
    for buffer, total in zip(buffers, summed[len(grads) :], strict=False):
        buffer.copy_(total / world)
    return float(summed[-1])
