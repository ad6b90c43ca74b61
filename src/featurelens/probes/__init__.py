"""Stage 7, probes: what a layer knows. Dense and k-sparse probes with scikit-learn-style estimators,
labels from token predicates, files or continuous targets, cross-validation grouped by document, and
baselines beside every score.

>>> from featurelens.probes import LogisticProbe, SparseProbe
>>> LogisticProbe(C=1.0).fit(x_train, y_train).score(x_test, y_test)
>>> SparseProbe(k=8, ranking="f_stat").fit(x_train, y_train).units_
"""

from featurelens.probes.estimators import (
    LogisticProbe,
    RidgeProbe,
    SparseProbe,
    balanced_accuracy,
    fit_logistic,
    r_squared,
)
from featurelens.probes.experiment import ProbeResult, ProbeSettings, cross_validate
from featurelens.probes.folds import grouped_folds
from featurelens.probes.labels import Labels, file_labels, predicate, predicate_labels, target_labels
from featurelens.probes.ranking import RANKINGS, rank_units, unit_scores

__all__ = [
    "RANKINGS",
    "Labels",
    "LogisticProbe",
    "ProbeResult",
    "ProbeSettings",
    "RidgeProbe",
    "SparseProbe",
    "balanced_accuracy",
    "cross_validate",
    "file_labels",
    "fit_logistic",
    "grouped_folds",
    "predicate",
    "predicate_labels",
    "r_squared",
    "rank_units",
    "target_labels",
    "unit_scores",
]
