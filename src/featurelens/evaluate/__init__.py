"""Stage 3: evaluate dictionaries: reconstruction, and the model's loss with a dictionary spliced in."""

from featurelens.evaluate.live import Evaluation, evaluate_in_model, heldout_sequences
from featurelens.evaluate.reconstruction import ReconstructionMetrics, reconstruction_metrics
from featurelens.evaluate.spliced import SplicedLoss, spliced_loss

__all__ = [
    "Evaluation",
    "ReconstructionMetrics",
    "SplicedLoss",
    "evaluate_in_model",
    "heldout_sequences",
    "reconstruction_metrics",
    "spliced_loss",
]
