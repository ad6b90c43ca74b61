"""Options of one dictionary training run, recorded next to the weights it produces."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from featurelens.dictionaries.base import DictionaryError

# sparsity set by k
K_ARCHITECTURES = ("topk", "batchtopk", "matryoshka", "mp", "gtopk", "seminmf", "codebook")
PENALTY_ARCHITECTURES = ("relu", "jumprelu")  # sparsity set by a penalty (or a target L0)
GRADIENT_ARCHITECTURES = ("gtopk",)  # latents picked with the model's loss gradient (live training only)
ENCODER_DTYPES = ("auto", "float32", "bfloat16")


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    ``expansion`` sets d_latent = expansion * d_in, unless ``latents`` gives d_latent itself (e.g. fewer
    features than inputs, as semi-NMF usually wants). The learning rate warms up linearly over
    ``warmup_steps`` and decays linearly to 0 over the last ``decay_fraction`` of ``steps``. A latent is
    dead after ``dead_after_tokens`` rows without firing; AuxK (weight ``auxk_coefficient``, ``auxk_k``
    latents, default d_in // 2) then trains it on the main residual. ``seed`` fixes initialisation.
    Architectures with a sparsity penalty (relu, jumprelu) start from ``sparsity_coefficient``; with
    ``target_l0`` a controller steers that coefficient until the mean L0 reaches the target.
    ``encoder_dtype`` is the precision of the TopK encoder's forward matmul, which picks the active latents
    (gradients and weights stay float32): ``bfloat16`` runs 3x faster on CPUs with AVX512-BF16 and on GPUs;
    ``auto`` picks it where the hardware has it. ``gradient_weight`` is the beta of gradient-aware TopK
    (gtopk): the weight of a latent's |activation x loss gradient| attribution in the choice of latents.
    """

    arch: str = "topk"
    k: int = 32
    expansion: int = 16
    latents: int | None = None
    sparsity_coefficient: float = 1.0
    target_l0: float | None = None
    lr: float = 1e-3
    batch_size: int = 4096
    steps: int = 1000
    seed: int = 0
    warmup_steps: int = 50
    decay_fraction: float = 0.2
    auxk_coefficient: float = 1 / 32
    auxk_k: int | None = None
    dead_after_tokens: int = 1_000_000
    hook_in: str = ""
    hook_out: str | None = None
    skip: bool = False
    encoder_dtype: str = "auto"
    gradient_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.encoder_dtype not in ENCODER_DTYPES:
            raise DictionaryError(
                f"encoder_dtype must be one of {', '.join(ENCODER_DTYPES)}, got {self.encoder_dtype!r}"
            )
        for name in ("expansion", "batch_size", "steps", "dead_after_tokens"):
            if getattr(self, name) < 1:
                raise DictionaryError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.latents is not None and self.latents < 1:
            raise DictionaryError(f"latents must be a positive integer, got {self.latents}")
        if self.lr <= 0:
            raise DictionaryError(f"lr must be positive, got {self.lr}")
        if self.target_l0 is not None and self.target_l0 <= 0:
            raise DictionaryError(f"target_l0 must be positive, got {self.target_l0}")
        if self.sparsity_coefficient < 0:
            raise DictionaryError(f"sparsity_coefficient must be >= 0, got {self.sparsity_coefficient}")
        if not 0 <= self.decay_fraction <= 1:
            raise DictionaryError(f"decay_fraction must be in [0, 1], got {self.decay_fraction}")

    def dictionary_kwargs(self) -> dict[str, Any]:
        """The architecture-specific constructor arguments this config implies."""
        kwargs: dict[str, Any] = {"hook_in": self.hook_in, "hook_out": self.hook_out, "skip": self.skip}
        if self.arch in K_ARCHITECTURES:
            kwargs["k"] = self.k
        if self.arch in PENALTY_ARCHITECTURES:
            kwargs["sparsity_coefficient"] = self.sparsity_coefficient
        if self.arch in GRADIENT_ARCHITECTURES:
            kwargs["gradient_weight"] = self.gradient_weight
        return kwargs

    def d_latent(self, width: int) -> int:
        """The number of latents for inputs of ``width``: ``latents``, or ``expansion * width``."""
        return self.latents if self.latents is not None else self.expansion * width

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of ``config.lr`` at ``step``: linear warm-up, constant, then linear decay to 0."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    decay_steps = int(config.decay_fraction * config.steps)
    decay_start = config.steps - decay_steps
    if decay_steps and step >= decay_start:
        return max(0.0, (config.steps - step) / decay_steps)
    return 1.0
