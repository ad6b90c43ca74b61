"""Encoding models: predict recordings of any kind (brain voxels, electrodes, behaviour, another network's
units) from activations, with cross-validated ridge (a per-target alpha from one SVD per fold), blocked or
grouped folds for time series, FIR delays, banded ridge, noise ceilings from repeats and permutation nulls.

>>> from featurelens.encode import RidgeEncoder, delay, explainable_variance
>>> model = RidgeEncoder(alphas=np.logspace(-2, 5, 15), cv=5).fit(x_train, y_train)
>>> model.score(x_test, y_test), model.best_alphas_            # per-target R² [t] and alphas [t]
>>> cross_validate_encoding(delay(x, (1, 2, 3)), y_repeats, EncodeSettings(permutations=100))
"""

from featurelens.encode.banded import BandedRidgeEncoder, band_scalings
from featurelens.encode.ceiling import (
    explainable_variance,
    noise_ceiling,
    normalised_scores,
    split_half_reliability,
)
from featurelens.encode.delays import delay, delayed_bands, delayed_weights
from featurelens.encode.experiment import EncodeSettings, EncodingResult, cross_validate_encoding
from featurelens.encode.folds import blocked_folds, grouped_folds, make_folds
from featurelens.encode.inputs import EncodeInputs, read_numeric
from featurelens.encode.permutation import block_permutations, permutation_pvalues
from featurelens.encode.ridge import (
    DEFAULT_ALPHAS,
    FixedAlphaRidge,
    RidgeEncoder,
    cv_path_scores,
    loo_path_scores,
    r2_per_target,
)
from featurelens.encode.run import EncodeJob, run_encode, save_encode

__all__ = [
    "DEFAULT_ALPHAS",
    "BandedRidgeEncoder",
    "EncodeInputs",
    "EncodeJob",
    "EncodeSettings",
    "EncodingResult",
    "FixedAlphaRidge",
    "RidgeEncoder",
    "band_scalings",
    "block_permutations",
    "blocked_folds",
    "cross_validate_encoding",
    "cv_path_scores",
    "delay",
    "delayed_bands",
    "delayed_weights",
    "explainable_variance",
    "grouped_folds",
    "loo_path_scores",
    "make_folds",
    "noise_ceiling",
    "normalised_scores",
    "permutation_pvalues",
    "r2_per_target",
    "read_numeric",
    "run_encode",
    "save_encode",
    "split_half_reliability",
]
