"""Stage 3: evaluate dictionaries, e.g. the model's loss with a dictionary spliced in."""

from featurelens.evaluate.spliced import SplicedLoss, spliced_loss

__all__ = ["SplicedLoss", "spliced_loss"]
