"""Probes proven by known answers: scikit-learn as the reference, a label planted in k units, a rotation
that keeps dense accuracy and breaks sparse accuracy, shuffled labels at chance, folds that never share a
document, and one clear line for every bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.feature_selection import f_classif
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from featurelens.errors import ProbeError
from featurelens.probes import (
    Labels,
    LogisticProbe,
    ProbeSettings,
    RidgeProbe,
    SparseProbe,
    cross_validate,
    file_labels,
    grouped_folds,
    predicate_labels,
    unit_scores,
)
from featurelens.probes.labels import contexts
from tests.cli.test_cli import assert_one_line_error, featurelens
from tests.neurons.test_report import planted_rows, write_store

PLANTED = (3, 11, 17, 29)


def planted_label(n: int = 3000, width: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [n, width] noise; the label is the sign of the sum of the PLANTED units; 60 documents."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, width))
    y = x[:, list(PLANTED)].sum(1) > 0
    return x, y, np.repeat(np.arange(60), n // 60)


def reference_logistic(C: float, **options: object) -> object:
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, tol=1e-10, max_iter=10_000, **options))


@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_logistic_probe_equals_scikit_learn(C: float) -> None:
    x, y, _ = planted_label()
    ours = LogisticProbe(C=C, tol=1e-9, max_iter=1000).fit(x, y)
    reference = reference_logistic(C).fit(x, y)
    np.testing.assert_allclose(ours.predict_proba(x), reference.predict_proba(x), atol=1e-5)
    assert ours.score(x, y) == pytest.approx(reference.score(x, y), abs=1e-3)


def test_balanced_and_multiclass_logistic_equal_scikit_learn() -> None:
    x, _, _ = planted_label()
    rare = x[:, 3] > 1.5  # about 7% positive
    ours = LogisticProbe(C=0.5, tol=1e-9, max_iter=1000, class_weight="balanced").fit(x, rare)
    reference = reference_logistic(0.5, class_weight="balanced").fit(x, rare)
    np.testing.assert_allclose(ours.predict_proba(x), reference.predict_proba(x), atol=1e-5)
    three = np.digitize(x[:, 5] + x[:, 9], [-0.5, 0.5])
    ours_multi = LogisticProbe(C=1.0, tol=1e-9, max_iter=1000).fit(x, three)
    np.testing.assert_allclose(
        ours_multi.predict_proba(x), reference_logistic(1.0).fit(x, three).predict_proba(x), atol=1e-5
    )


@pytest.mark.parametrize("rows", [40, 2000])  # fewer rows than units (dual solve) and more
def test_ridge_probe_equals_scikit_learn(rows: int) -> None:
    x, _, _ = planted_label()
    target = x[:, 7] * 0.5 + np.random.default_rng(1).normal(size=len(x))
    ours = RidgeProbe(alpha=3.0).fit(x[:rows], target[:rows])
    reference = make_pipeline(StandardScaler(), Ridge(alpha=3.0)).fit(x[:rows], target[:rows])
    np.testing.assert_allclose(ours.predict(x), reference.predict(x), atol=1e-9)


def test_rankings_find_the_planted_units_and_f_equals_f_classif() -> None:
    x, y, _ = planted_label()
    for ranking in ("mean_diff", "f_stat"):
        assert set(SparseProbe(len(PLANTED), ranking).fit(x, y).units_) == set(PLANTED)
    np.testing.assert_allclose(unit_scores(x, y, "f_stat"), f_classif(x, y)[0], rtol=1e-9)
    negated = x.copy()
    negated[:, list(PLANTED)] *= -1  # a unit lower on the class separates as well (absolute difference)
    assert set(SparseProbe(len(PLANTED)).fit(negated, y).units_) == set(PLANTED)


def test_k_sparse_recovers_the_label_at_k_and_not_below() -> None:
    x, y, groups = planted_label()
    settings = ProbeSettings(ks=(1, 2, 4, 8), folds=5)
    result = cross_validate(
        x, Labels("planted", y, np.ones(len(y), bool), "classification"), groups, settings
    )
    assert result.mean("k=4") > 0.95 and result.mean("dense") > 0.95
    assert result.mean("k=1") < 0.8 and result.mean("k=2") < result.mean("k=4") - 0.05
    assert {unit for unit, _ in result.units[:4]} == set(PLANTED)
    assert all(result.picked[4].get(unit) == 5 for unit in PLANTED)  # every fold picked them
    assert abs(result.mean("shuffled") - 0.5) < 0.05 and result.mean("majority") == 0.5


def test_a_rotation_keeps_dense_accuracy_and_breaks_sparse_accuracy() -> None:
    x, y, groups = planted_label()
    rotation = np.linalg.qr(np.random.default_rng(3).normal(size=(x.shape[1], x.shape[1])))[0]
    labels = Labels("planted", y, np.ones(len(y), bool), "classification")
    settings = ProbeSettings(ks=(4,), folds=5)
    plain = cross_validate(x, labels, groups, settings)
    rotated = cross_validate(x @ rotation, labels, groups, settings)
    assert rotated.mean("dense") == pytest.approx(plain.mean("dense"), abs=0.02)
    assert rotated.mean("k=4") < plain.mean("k=4") - 0.15


def test_regression_target_and_its_baselines() -> None:
    x, _, groups = planted_label()
    target = 2 * x[:, 11] + 0.1 * np.random.default_rng(4).normal(size=len(x))
    result = cross_validate(
        x, Labels("t", target, np.ones(len(x), bool), "regression"), groups, ProbeSettings(ks=(1,))
    )
    assert result.metric == "R²" and result.mean("k=1") > 0.99 and result.units[0][0] == 11
    assert result.mean("majority") < 0.01 and result.mean("shuffled") < 0.05


def test_grouped_folds_never_share_a_document() -> None:
    groups = np.random.default_rng(5).integers(0, 37, size=5000)
    folds = grouped_folds(groups, 5, seed=1)
    assert sorted(np.concatenate(folds).tolist()) == list(range(5000))
    seen = [set(groups[fold]) for fold in folds]
    for i in range(5):
        for j in range(i + 1, 5):
            assert not seen[i] & seen[j]
    assert max(map(len, folds)) < 1.5 * min(map(len, folds))
    with pytest.raises(ProbeError, match="cannot fill 5 folds"):
        grouped_folds(np.zeros(10), 5)


def test_predicates_on_tokens_and_context() -> None:
    texts = [">>>", " x", " =", " (", "1", " +", " 2", ")", "\n", "The", " end"]
    positions = np.arange(len(texts))
    context = contexts(texts, positions)
    assert predicate_labels("digit", texts, context).values.tolist() == [t in ("1", " 2") for t in texts]
    in_code = predicate_labels("in-code", texts, context).values
    assert in_code[:8].all() and not in_code[9:].any()
    assert predicate_labels("in-parentheses", texts, context).values.tolist() == [
        False, False, False, True, True, True, True, False, False, False, False
    ]  # fmt: skip
    assert predicate_labels("starts-word", texts, context).values[[1, 10]].all()
    assert predicate_labels("context:x =", texts, context).values.tolist() == [i == 2 for i in range(11)]
    with pytest.raises(ProbeError, match="matches no one"):
        predicate_labels("token:zzz", texts, context)
    with pytest.raises(ProbeError, match="unknown predicate"):
        predicate_labels("is-a-verb", texts, context)
    with pytest.raises(ProbeError, match="does not compile"):
        predicate_labels("token:(", texts, context)


def test_label_files_and_their_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "ints.npy", np.array([0, 1, 1, 0]))
    assert file_labels(tmp_path / "ints.npy", 4).kind == "classification"
    (tmp_path / "years.txt").write_text("1850.5\n\n1999.25\n2001\n")
    years = file_labels(tmp_path / "years.txt", 4)
    assert years.kind == "regression" and years.keep.tolist() == [True, False, True, True]
    with pytest.raises(ProbeError, match="holds 4 labels but there are 5 rows"):
        file_labels(tmp_path / "ints.npy", 5)
    np.save(tmp_path / "one.npy", np.ones(4))
    with pytest.raises(ProbeError, match="fewer than two classes"):
        file_labels(tmp_path / "one.npy", 4)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
    with pytest.raises(ProbeError, match="without pickle"):
        file_labels(tmp_path / "objects.npy", 4)
    with pytest.raises(ProbeError, match="up to 48"):
        x, y, groups = planted_label()
        cross_validate(
            x, Labels("y", y, np.ones(len(y), bool), "classification"), groups, ProbeSettings(ks=(64,))
        )


def test_cli_probes_a_store_and_refuses_bad_input(tmp_path: Path, tiny_model_dir: Path) -> None:
    store = write_store(tmp_path / "acts", planted_rows(), str(tiny_model_dir))
    rows = len(planted_rows()["tokens"])
    labels = (planted_rows()["x"][:, 2] > 1).astype(np.int64)  # unit 2 fires exactly on token 7
    np.save(tmp_path / "labels.npy", labels)
    out = tmp_path / "probe"
    common = ("probe", "--acts", str(store), "--hook", "layers.1.mlp_neurons", "--tokens", str(rows))
    done = featurelens(*common, "--labels", str(tmp_path / "labels.npy"), "--k", "1,2", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "labels.npy: best units 2 " in done.stdout
    assert (out / "accuracy_vs_k.png").stat().st_size > 0 and (out / "scores.parquet").is_file()
    assert_one_line_error(
        featurelens(*common, "--labels", str(tmp_path / "labels.npy"), "--out", str(out)), "--overwrite"
    )
    np.save(tmp_path / "short.npy", labels[:10])
    short = featurelens(*common, "--labels", str(tmp_path / "short.npy"), "--out", str(tmp_path / "a"))
    assert_one_line_error(short, "holds 10 labels", f"{rows:,} rows")
    too_wide = featurelens(
        *common, "--labels", str(tmp_path / "labels.npy"), "--k", "1,99", "--out", str(tmp_path / "b")
    )
    assert_one_line_error(too_wide, "k = 99", "24 units")
    assert_one_line_error(
        featurelens(
            "probe", "--acts", str(store), "--hook", "layers.0.resid_post", "--out", str(tmp_path / "c")
        ),
        "no hook 'layers.0.resid_post'",
    )
