"""Training sparse dictionaries from activation batches."""

from featurelens.training.config import TrainConfig
from featurelens.training.metrics import dead_fraction, fraction_variance_unexplained, l0
from featurelens.training.trainer import TrainResult, train_dictionary

__all__ = [
    "TrainConfig",
    "TrainResult",
    "dead_fraction",
    "fraction_variance_unexplained",
    "l0",
    "train_dictionary",
]
