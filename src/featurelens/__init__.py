"""featurelens: look inside neural networks.

>>> import featurelens as fl
>>> lm = fl.load_model("smollm2")
>>> store = fl.ActivationStore.open("runs/demo/acts")
>>> d = fl.Dictionary.load("runs/demo/sae"); codes = d.encode(x); x_hat = d.decode(codes)
>>> atlas = fl.Atlas.open("runs/demo/atlas.sqlite"); f = atlas.feature(123); atlas.search("dates")
"""

from featurelens.atlas import Atlas
from featurelens.capture import ActivationStore, CaptureConfig, run_capture
from featurelens.corpus import CorpusConfig
from featurelens.dictionaries import Dictionary
from featurelens.errors import FeatureLensError
from featurelens.models import HookPoint, LanguageModel, load_model
from featurelens.training import TrainConfig, train_dictionaries, train_dictionary

__version__ = "0.1.0"

__all__ = [
    "ActivationStore",
    "Atlas",
    "CaptureConfig",
    "CorpusConfig",
    "Dictionary",
    "FeatureLensError",
    "HookPoint",
    "LanguageModel",
    "TrainConfig",
    "__version__",
    "load_model",
    "run_capture",
    "train_dictionaries",
    "train_dictionary",
]
