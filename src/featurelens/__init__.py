"""featurelens: look inside neural networks.

>>> import featurelens as fl
>>> lm = fl.load_model("smollm2")
>>> store = fl.ActivationStore.open("runs/demo/acts")
"""

from featurelens.capture import ActivationStore, CaptureConfig, run_capture
from featurelens.corpus import CorpusConfig
from featurelens.errors import FeatureLensError
from featurelens.models import HookPoint, LanguageModel, load_model

__version__ = "0.1.0"

__all__ = [
    "ActivationStore",
    "CaptureConfig",
    "CorpusConfig",
    "FeatureLensError",
    "HookPoint",
    "LanguageModel",
    "__version__",
    "load_model",
    "run_capture",
]
