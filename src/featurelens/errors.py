"""The one error family of featurelens.

Every message names the bad value and what would be accepted; the CLI prints it on one line and exits 2.
"""


class FeatureLensError(Exception):
    """Base class: a problem with the user's input or environment, reported without a traceback."""


class ModelLoadError(FeatureLensError):
    """A model spec that cannot be resolved or loaded."""


class HookError(FeatureLensError):
    """An unknown hook point, or a hook that did not fire."""


class CorpusError(FeatureLensError):
    """A corpus that cannot be read or yields no text."""


class StoreError(FeatureLensError):
    """An activation store that is missing, incomplete, mismatched or unwritable."""


class AtlasError(FeatureLensError):
    """An atlas that cannot be built or read, or a feature it does not hold."""


class NeuronError(FeatureLensError):
    """Neuron-report input that cannot be used: a hook, threshold or source the report cannot take."""


class ProbeError(FeatureLensError):
    """Probe input that cannot be used: labels of the wrong length or type, one class, k beyond the width."""


class CompareError(FeatureLensError):
    """Representations that cannot be compared: different row counts, NaN rows, too few rows, bad options."""


class EncodeError(FeatureLensError):
    """Encoding-model input that cannot be used: mismatched or NaN rows, too few rows or repeats, options."""
