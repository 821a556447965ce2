"""The from-scratch metrics against scikit-learn and SciPy on random data (many seeds)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm import metrics

sk = pytest.importorskip("sklearn.metrics")
stats = pytest.importorskip("scipy.stats")

SEEDS = range(25)


def _labels(seed: int, n_classes: int, n: int | None = None):
    rng = np.random.default_rng(seed)
    n = n or int(rng.integers(1, 60))
    y = rng.integers(0, n_classes, n)
    # predictions that agree with y more often than chance, so the metrics are not all near 0
    pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, n_classes, n))
    return y, pred


@pytest.mark.parametrize("seed", SEEDS)
def test_classification_against_sklearn(seed):
    for n_classes in (2, 3, 5):
        y, p = _labels(seed, n_classes)
        assert metrics.accuracy(y, p) == pytest.approx(sk.accuracy_score(y, p))
        labels = np.unique(np.concatenate([y, p]))
        np.testing.assert_array_equal(metrics.confusion_matrix(y, p), sk.confusion_matrix(y, p, labels=labels))
        assert metrics.matthews_corrcoef(y, p) == pytest.approx(sk.matthews_corrcoef(y, p), abs=1e-12)
        for average in ("macro", "micro"):
            ref = sk.precision_recall_fscore_support(y, p, average=average, zero_division=0)[:3]
            assert metrics.precision_recall_f1(y, p, average=average) == pytest.approx(ref, abs=1e-12)
            assert metrics.f1_score(y, p, average=average) == pytest.approx(ref[2], abs=1e-12)
        if len(labels) <= 2:
            for pos in labels.tolist():
                ref = sk.precision_recall_fscore_support(y, p, average="binary", pos_label=pos,
                                                         zero_division=0)[:3]
                assert metrics.precision_recall_f1(y, p, pos_label=pos) == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_label_order_and_subsets(seed):
    y, p = _labels(seed, 4, 40)
    order = [3, 1, 0, 2]
    np.testing.assert_array_equal(metrics.confusion_matrix(y, p, labels=order),
                                  sk.confusion_matrix(y, p, labels=order))
    subset = [2, 0]  # examples outside the listed labels are left out
    np.testing.assert_array_equal(metrics.confusion_matrix(y, p, labels=subset),
                                  sk.confusion_matrix(y, p, labels=subset))
    for average in ("macro", "micro"):
        ref = sk.precision_recall_fscore_support(y, p, average=average, labels=subset, zero_division=0)[:3]
        assert metrics.precision_recall_f1(y, p, average=average, labels=subset) == pytest.approx(ref)


def test_string_labels_tensors_and_lists():
    y = ["spam", "ham", "ham", "spam", "ham"]
    p = ["spam", "spam", "ham", "ham", "ham"]
    assert metrics.precision_recall_f1(y, p, pos_label="spam") == pytest.approx(
        sk.precision_recall_fscore_support(y, p, average="binary", pos_label="spam")[:3])
    np.testing.assert_array_equal(metrics.confusion_matrix(y, p, labels=["ham", "spam"]), [[2, 1], [1, 1]])
    yt, pt = torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 0])
    assert metrics.accuracy(yt, pt) == metrics.accuracy([0, 1, 1, 0], np.array([0, 1, 0, 0])) == 0.75
    assert metrics.matthews_corrcoef(yt, pt) == pytest.approx(sk.matthews_corrcoef(yt.numpy(), pt.numpy()))
    assert metrics.pearson(torch.tensor([1.0, 2.0, 4.0]), [1, 3, 2]) == pytest.approx(
        stats.pearsonr([1.0, 2.0, 4.0], [1, 3, 2])[0])


def test_mcc_edge_cases():
    assert metrics.matthews_corrcoef([0, 1, 2, 0], [0, 1, 2, 0]) == pytest.approx(1.0)
    assert metrics.matthews_corrcoef([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)
    # a majority-class predictor: high accuracy, MCC 0 (denominator 0 → 0.0, like scikit-learn)
    y, p = [0] * 9 + [1], [0] * 10
    assert metrics.accuracy(y, p) == 0.9
    assert metrics.matthews_corrcoef(y, p) == sk.matthews_corrcoef(y, p) == 0.0


@pytest.mark.filterwarnings("ignore:A single label was found")  # scikit-learn, on one-class draws
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=40))
def test_multiclass_mcc_property(pairs):
    y, p = zip(*pairs, strict=True)
    assert metrics.matthews_corrcoef(y, p) == pytest.approx(sk.matthews_corrcoef(y, p), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_correlations_against_scipy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 80))
    x = rng.normal(size=n)
    y = 0.5 * x + rng.normal(size=n)
    assert metrics.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    # many ties: scores on a 0-5 grid (like STS-B) and coarse predictions
    xt = rng.integers(0, 6, n).astype(float)
    yt = np.round(xt + rng.normal(size=n))
    if np.ptp(xt) > 0 and np.ptp(yt) > 0:
        assert metrics.spearman(xt, yt) == pytest.approx(stats.spearmanr(xt, yt)[0], abs=1e-12)
        assert metrics.pearson(xt, yt) == pytest.approx(stats.pearsonr(xt, yt)[0], abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=1, max_size=30))
def test_average_ranks_property(values):
    np.testing.assert_allclose(metrics.average_ranks(values), stats.rankdata(values, method="average"))


def test_constant_inputs_give_nan_with_a_warning():
    for fn in (metrics.pearson, metrics.spearman):
        with pytest.warns(RuntimeWarning, match="constant"):
            assert np.isnan(fn([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert np.isnan(stats.pearsonr([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])[0])  # SciPy agrees


def test_bad_inputs():
    with pytest.raises(ValueError, match="empty"):
        metrics.accuracy([], [])
    with pytest.raises(ValueError, match="same length; got 3 and 2"):
        metrics.f1_score([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="1-D"):
        metrics.accuracy([[0, 1]], [[0, 1]])
    with pytest.raises(ValueError, match="non-integer floats"):
        metrics.accuracy([0.2, 0.7], [0, 1])
    with pytest.raises(ValueError, match="at most two classes"):
        metrics.f1_score([0, 1, 2], [0, 1, 2])
    with pytest.raises(ValueError, match="pos_label=2 is not one of"):
        metrics.f1_score([0, 1], [0, 1], pos_label=2)
    with pytest.raises(ValueError, match="average must be one of"):
        metrics.f1_score([0, 1], [0, 1], average="weighted")
    with pytest.raises(ValueError, match="labels must be unique"):
        metrics.confusion_matrix([0, 1], [0, 1], labels=[0, 0])
    for fn in (metrics.pearson, metrics.spearman):
        with pytest.raises(ValueError, match="NaN or inf"):
            fn([1.0, float("nan"), 2.0], [1.0, 2.0, 3.0])
        with pytest.raises(ValueError, match="at least two examples"):
            fn([1.0], [2.0])
        with pytest.raises(ValueError, match="same length"):
            fn([1.0, 2.0], [1.0, 2.0, 3.0])
        with pytest.raises(TypeError, match="must hold numbers"):
            fn(["a", "b"], [1.0, 2.0])
