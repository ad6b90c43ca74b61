"""Training sparse dictionaries from activation batches."""

from featurelens.training.config import TrainConfig
from featurelens.training.metrics import dead_fraction, fraction_variance_unexplained, l0
from featurelens.training.trainer import Checkpointing, TrainResult, train_dictionaries, train_dictionary

__all__ = [
    "Checkpointing",
    "TrainConfig",
    "TrainResult",
    "dead_fraction",
    "fraction_variance_unexplained",
    "l0",
    "train_dictionaries",
    "train_dictionary",
]
