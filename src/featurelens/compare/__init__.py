"""Compare representations across layers, models and brains; every score with its permutation null.

Pure functions on [n items, d units] arrays (numpy or torch; computed in float64):

>>> from featurelens import compare as flc
>>> flc.linear_cka(x, y)                                   # debiased linear CKA (the default measure)
>>> flc.compare(x, y, flc.measure_from_spec("shape:alpha=0.5"), permutations=1000, seed=0)
Comparison(measure='shape', value=..., kind='distance', metric=True, p_value=..., ...)

Each :class:`Measure` says whether it is a similarity or a distance and whether it is a metric;
:func:`compare` adds a permutation p-value (rows of y shuffled, reproducible by seed). Layer x layer maps
over stores or live models: :class:`MapJob` and :func:`run_maps` (``featurelens compare``); linear CKA over
streams of any length: :class:`CkaSums`.
"""

from featurelens.compare.cca import canonical_correlations, cca_similarity, pwcca, svcca
from featurelens.compare.cka import kernel_cka, linear_cka
from featurelens.compare.maps import MapJob, run_maps
from featurelens.compare.measure import Comparison, Measure, compare
from featurelens.compare.neighbors import cknna, mutual_knn
from featurelens.compare.registry import MEASURES, measure_from_spec
from featurelens.compare.relative import relative_representation, relative_similarity
from featurelens.compare.rsa import compare_rdms, rdm, rsa
from featurelens.compare.shape import angular_shape_distance, orthogonal_procrustes, procrustes_distance
from featurelens.compare.sums import CkaSums

__all__ = [
    "MEASURES",
    "CkaSums",
    "Comparison",
    "MapJob",
    "Measure",
    "angular_shape_distance",
    "canonical_correlations",
    "cca_similarity",
    "cknna",
    "compare",
    "compare_rdms",
    "kernel_cka",
    "linear_cka",
    "measure_from_spec",
    "mutual_knn",
    "orthogonal_procrustes",
    "procrustes_distance",
    "pwcca",
    "rdm",
    "relative_representation",
    "relative_similarity",
    "rsa",
    "run_maps",
    "svcca",
]
