"""Stage 4: map every feature of a dictionary (or every neuron) into one SQLite atlas."""

from featurelens.atlas.accumulate import AtlasSettings
from featurelens.atlas.build import AtlasJob, AtlasSummary, build_atlas
from featurelens.atlas.reader import Atlas, Context, Feature, FeatureSummary, Histogram, Neighbour, TokenScore

__all__ = [
    "Atlas",
    "AtlasJob",
    "AtlasSettings",
    "AtlasSummary",
    "Context",
    "Feature",
    "FeatureSummary",
    "Histogram",
    "Neighbour",
    "TokenScore",
    "build_atlas",
]
