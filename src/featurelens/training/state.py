"""One dictionary being trained: its weights, optimiser, sparsity controller and dead-latent counters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from featurelens import distributed
from featurelens.dictionaries.base import Dictionary, DictionaryError, TrainingOutput
from featurelens.dictionaries.registry import build_dictionary, dictionary_class
from featurelens.dictionaries.sparse_encode import selection_dtype
from featurelens.training.config import TrainConfig, learning_rate_factor
from featurelens.training.controller import L0Controller
from featurelens.training.data_parallel import all_reduce_step, step_statistics
from featurelens.training.losses import auxk_loss, geometric_median

FINAL_WINDOW = 10  # reported metrics average the last this-many steps


@dataclass(frozen=True)
class StepMetrics:
    """Core metrics of one training step on its batch (scaled space; FVU is scale-free)."""

    loss: float
    fvu: float
    l0: float
    dead_fraction: float


def normalising_scale(x: torch.Tensor) -> float:
    """The scalar that gives rows of x [n, d] a mean squared norm of d."""
    return float(x.shape[1] ** 0.5 / x.norm(dim=1).mean().clamp_min(1e-12))


def initial_dictionary(config: TrainConfig, x: torch.Tensor, y: torch.Tensor) -> Dictionary:
    """A dictionary sized, scaled and initialised from a first batch x [n, d_in], y [n, d_out].

    Decoder rows are random unit vectors, the encoder their transpose (SAEs), and the decoder bias the
    geometric median of the scaled targets.
    """
    d_in, d_out = x.shape[1], y.shape[1]
    kwargs = config.dictionary_kwargs()
    if d_out != d_in:
        kwargs["d_out"] = d_out
    cls = dictionary_class(config.arch)
    d_latent = config.d_latent(d_in)
    cls.check_training_fits(d_in, d_latent, d_out, config.batch_size, x.device)
    dictionary = cls(d_in, d_latent, **kwargs)
    dictionary.reset_parameters(torch.Generator().manual_seed(config.seed))
    s_in = normalising_scale(x)
    s_out = s_in if not dictionary.is_transcoder else normalising_scale(y)
    dictionary.set_scales_(s_in, s_out)
    if dictionary.b_dec.requires_grad:  # a dictionary without a trained bias keeps it at zero
        with torch.no_grad():
            dictionary.b_dec.copy_(geometric_median(y * s_out))
    return dictionary


class TrainingRun:
    """Adam with warm-up and decay, unit-norm decoder rows, AuxK on dead latents, optional target L0."""

    def __init__(self, config: TrainConfig, dictionary: Dictionary) -> None:
        self.config = config
        self.dictionary = dictionary
        dictionary.encoder_dtype = selection_dtype(config.encoder_dtype, dictionary.W_enc.device)
        self.optimizer = torch.optim.Adam(
            dictionary.parameters(), lr=config.lr, fused=True
        )  # 8x faster on CPU
        self.controller: L0Controller | None = None
        if config.target_l0 is not None:
            if dictionary.sparsity_coefficient is None:
                raise DictionaryError(
                    f"target_l0 needs a penalty architecture (relu, jumprelu), not {config.arch!r}: set k"
                )
            self.controller = L0Controller(config.target_l0, dictionary.sparsity_coefficient)
        self.rows_since_fired = torch.zeros(dictionary.d_latent, dtype=torch.long)
        self.k_aux = config.auxk_k or max(1, dictionary.d_out // 2)
        self.window: list[tuple[float, float, float]] = []  # (sse, total variance, l0) per step
        self.step = 0
        self.tokens = 0

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, *, gradient: torch.Tensor | None = None
    ) -> StepMetrics:
        """One optimiser step on raw inputs x [n, d_in] and targets y [n, d_out].

        ``gradient`` [n, d_in], the model's loss gradient with respect to x, reaches only dictionaries that
        need one (``needs_gradient``), in the scaled space: d loss / d (x * s) = gradient / s.
        """
        config, dictionary = self.config, self.dictionary
        group = distributed.active()  # data-parallel: x is this rank's slice of the global batch
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = config.lr * learning_rate_factor(self.step, config)
        xs, ys = x * dictionary.input_scale, y * dictionary.output_scale
        forward: Callable[..., TrainingOutput] = dictionary.training_forward
        if dictionary.needs_gradient:
            scaled = gradient / dictionary.input_scale if gradient is not None else None
            out = forward(xs, ys, gradient=scaled)
        else:
            out = forward(xs, ys)
        residual = ys - out.y_hat
        stats = step_statistics(out.l0, out.fired, residual.detach(), ys) if group else None
        loss = residual.square().sum(1).mean() / ys.shape[1] + out.extra_loss
        if stats is not None:
            loss = loss * (x.shape[0] / stats.n)  # this rank's share of the global batch's mean
        dead = self.rows_since_fired > config.dead_after_tokens
        if config.auxk_coefficient and dead.any():
            latents = dead.nonzero().flatten().to(xs.device)
            dead_pre = dictionary.pre_activation(xs, latents)  # only the dead columns: cheap
            variance = stats.residual_variance if stats is not None else None
            aux = auxk_loss(dead_pre, latents, residual.detach(), dictionary.W_dec, self.k_aux, variance)
            loss = loss + config.auxk_coefficient * aux
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        reported = all_reduce_step(dictionary, loss) if group else float(loss.detach())
        dictionary.remove_parallel_decoder_grad_()
        self.optimizer.step()
        dictionary.normalize_decoder_()
        l0, fired, n = (stats.l0, stats.fired, stats.n) if stats else (float(out.l0), out.fired, x.shape[0])
        if self.controller is not None:
            dictionary.sparsity_coefficient = self.controller.update(l0)
        self.rows_since_fired += n
        self.rows_since_fired[fired.cpu()] = 0
        if dead.any():
            self._revive(dead, xs, residual.detach())
        if stats is not None:
            sse, total = stats.sse, stats.total
        else:
            with torch.no_grad():
                sse = float(residual.square().sum())
                total = float((ys - ys.mean(0)).square().sum())
        self.window = [*self.window[-(FINAL_WINDOW - 1) :], (sse, total, l0)]
        self.step += 1
        self.tokens += n
        return StepMetrics(reported, sse / max(total, 1e-12), l0, float(dead.float().mean()))

    def _revive(self, dead: torch.Tensor, xs: torch.Tensor, residual: torch.Tensor) -> None:
        """Let the dictionary re-initialise dead latents; those it revives start afresh (counter, Adam).

        Data-parallel ranks hand a dictionary that revives from rows the whole global batch, so every
        rank revives the same latents to the same rows."""
        if distributed.active() and type(self.dictionary).revive_ is not Dictionary.revive_:
            xs, residual = distributed.gather_rows(xs), distributed.gather_rows(residual)  # the global batch
        revived = self.dictionary.revive_(dead.to(xs.device), xs, residual)
        if not len(revived):
            return
        self.rows_since_fired[revived.cpu()] = 0
        for parameter in self.dictionary.parameters():
            state = self.optimizer.state.get(parameter, {})
            if parameter.ndim and parameter.shape[0] == self.dictionary.d_latent:
                for name in ("exp_avg", "exp_avg_sq"):
                    if name in state:
                        state[name][revived] = 0.0

    # -- reported metrics -------------------------------------------------------------------------

    @property
    def fvu(self) -> float:
        """FVU over the last steps' batches."""
        return sum(w[0] for w in self.window) / max(sum(w[1] for w in self.window), 1e-12)

    @property
    def l0(self) -> float:
        """Mean L0 over the last steps' batches."""
        return sum(w[2] for w in self.window) / max(len(self.window), 1)

    @property
    def dead_fraction(self) -> float:
        """Latents that did not fire within the dead horizon (or since the start, if shorter)."""
        horizon = min(self.config.dead_after_tokens, self.tokens)
        return float((self.rows_since_fired >= horizon).float().mean())

    # -- checkpoints ------------------------------------------------------------------------------

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything tensor-valued needed to continue exactly: weights, Adam moments, fire counters."""
        tensors = {f"model.{name}": t.detach() for name, t in self.dictionary.state_dict().items()}
        for index, parameter in enumerate(self.dictionary.parameters()):
            for name, value in self.optimizer.state.get(parameter, {}).items():
                tensors[f"adam.{index}.{name}"] = value.detach()
        tensors["rows_since_fired"] = self.rows_since_fired
        return {name: t.contiguous().cpu() for name, t in tensors.items()}

    def state_json(self) -> dict[str, Any]:
        """The JSON-valued rest of the state."""
        return {
            "dictionary": self.dictionary.config(),
            "sparsity_coefficient": self.dictionary.sparsity_coefficient,
            "window": self.window,
            "step": self.step,
            "tokens": self.tokens,
        }

    @classmethod
    def restore(
        cls,
        config: TrainConfig,
        tensors: dict[str, torch.Tensor],
        state: dict[str, Any],
        device: str | torch.device = "cpu",
    ) -> TrainingRun:
        """The run as it was when :meth:`state_tensors` and :meth:`state_json` were taken, on ``device``."""
        dictionary = build_dictionary(state["dictionary"])
        model_state = {name[len("model.") :]: t for name, t in tensors.items() if name.startswith("model.")}
        try:
            dictionary.load_state_dict(model_state)
        except RuntimeError as error:
            raise DictionaryError(f"checkpoint weights do not fit the config: {error}") from None
        if state["sparsity_coefficient"] is not None:
            dictionary.sparsity_coefficient = float(state["sparsity_coefficient"])
        run = cls(config, dictionary.to(device))
        if run.controller is not None:
            run.controller.coefficient = float(state["sparsity_coefficient"])
        for index, parameter in enumerate(dictionary.parameters()):
            prefix = f"adam.{index}."
            moments = {n[len(prefix) :]: t for n, t in tensors.items() if n.startswith(prefix)}
            if moments:  # fused Adam keeps its moments and step counter on the parameters' device
                run.optimizer.state[parameter] = {name: t.to(device) for name, t in moments.items()}
        run.rows_since_fired = tensors["rows_since_fired"].clone()
        run.window = [(float(a), float(b), float(c)) for a, b, c in state["window"]]
        run.step, run.tokens = int(state["step"]), int(state["tokens"])
        return run
