"""Evaluation metrics from scratch (plain NumPy): classification and correlation.

Chapter 09 reports what the papers report: accuracy and F1 for classification, the Matthews
correlation for imbalanced data (SMS spam), Pearson and Spearman for STS-B. Each is a few lines
of counting, so we write them rather than import them; the tests check every one against
scikit-learn and SciPy.

Inputs may be lists, NumPy arrays or tensors (moved to the CPU), 1-D and non-empty; predictions
and targets must have the same length. Class labels may be ints, bools or strings (floats only if
they are whole numbers). Every function returns a Python float (the confusion matrix an array).
Introduced in Chapter 09.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

AVERAGES = ("binary", "macro", "micro")


def _to_array(x: Any, name: str) -> np.ndarray:
    """A 1-D, non-empty NumPy view of a list, array or tensor."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per example); got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: a metric needs at least one example")
    return arr


def _pair(y_true: Any, y_pred: Any, names: tuple[str, str] = ("y_true", "y_pred")):
    a, b = _to_array(y_true, names[0]), _to_array(y_pred, names[1])
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same length; got {a.size} and {b.size}")
    return a, b


def _labels(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """Class-label arrays; float labels must be whole numbers (continuous targets are not classes)."""
    a, b = _pair(y_true, y_pred)
    for name, arr in (("y_true", a), ("y_pred", b)):
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
            raise ValueError(f"{name} holds non-integer floats: classification metrics need class labels "
                             "(take the argmax of the logits first)")
    return a, b


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of exact matches: (1/N) Σ_i [ŷ_i = y_i]. Introduced in Chapter 09."""
    a, b = _labels(y_true, y_pred)
    return float(np.mean(a == b))


def confusion_matrix(y_true: Any, y_pred: Any, labels: Sequence | None = None) -> np.ndarray:
    """Counts C (K, K) with C[i, j] = #{examples of true class labels[i] predicted as labels[j]}.

    ``labels`` fixes the row/column order (default: the sorted union of both inputs); examples
    whose true or predicted label is not in ``labels`` are left out (as scikit-learn does).
    Introduced in Chapter 09.
    """
    a, b = _labels(y_true, y_pred)
    if labels is None:
        order = np.unique(np.concatenate([a, b]))
    else:
        order = _to_array(labels, "labels")
        if np.unique(order).size != order.size:
            raise ValueError(f"labels must be unique; got {order.tolist()}")
    index = {label: i for i, label in enumerate(order.tolist())}
    matrix = np.zeros((order.size, order.size), dtype=np.int64)
    for t, p in zip(a.tolist(), b.tolist(), strict=True):
        if t in index and p in index:
            matrix[index[t], index[p]] += 1
    return matrix


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den = 0 (scikit-learn's zero_division=0 without the warning)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def precision_recall_f1(y_true: Any, y_pred: Any, *, average: str = "binary", pos_label: Any = 1,
                        labels: Sequence | None = None) -> tuple[float, float, float]:
    """Precision, recall and F1 (zero where a denominator is zero).

    Per class k: P_k = TP_k / (TP_k + FP_k), R_k = TP_k / (TP_k + FN_k), F1_k = 2 P_k R_k / (P_k + R_k).

    - ``"binary"``: class ``pos_label`` only (at most two classes may occur).
    - ``"macro"``: the unweighted mean of P_k, R_k and F1_k over the classes — every class counts
      the same, so rare classes matter (macro F1 is the mean of the F1_k, not F1 of the means).
    - ``"micro"``: pool the counts, P = ΣTP / Σ(TP + FP) and so on; over all classes of a
      single-label task this equals accuracy.

    ``labels`` restricts macro/micro to those classes (default: every class in either input).
    Introduced in Chapter 09.
    """
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}; got {average!r}")
    a, b = _labels(y_true, y_pred)
    present = np.unique(np.concatenate([a, b]))
    if average == "binary":
        if present.size > 2:
            raise ValueError(f"average='binary' needs at most two classes; got {present.tolist()} "
                             "(use average='macro' or 'micro')")
        if present.size == 2 and pos_label not in present.tolist():
            raise ValueError(f"pos_label={pos_label!r} is not one of the classes {present.tolist()}")
        classes = np.asarray([pos_label])
    else:
        classes = present if labels is None else _to_array(labels, "labels")
    tp = np.array([np.sum((a == k) & (b == k)) for k in classes.tolist()])  # true positives per class
    predicted = np.array([np.sum(b == k) for k in classes.tolist()])  # TP + FP
    actual = np.array([np.sum(a == k) for k in classes.tolist()])  # TP + FN
    if average == "micro":
        tp, predicted, actual = tp.sum(keepdims=True), predicted.sum(keepdims=True), actual.sum(keepdims=True)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, actual)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return float(precision.mean()), float(recall.mean()), float(f1.mean())


def f1_score(y_true: Any, y_pred: Any, *, average: str = "binary", pos_label: Any = 1,
             labels: Sequence | None = None) -> float:
    """F1 = 2PR / (P + R), averaged as in :func:`precision_recall_f1`. Introduced in Chapter 09."""
    return precision_recall_f1(y_true, y_pred, average=average, pos_label=pos_label, labels=labels)[2]


def matthews_corrcoef(y_true: Any, y_pred: Any) -> float:
    """Matthews correlation for two or more classes, from the confusion matrix C (K, K):

        MCC = (c·s − Σ_k p_k t_k) / sqrt((s² − Σ_k p_k²) · (s² − Σ_k t_k²))

    with c = Σ_k C_kk (correct), s = Σ C (examples), t_k = Σ_j C_kj (true k), p_k = Σ_i C_ik
    (predicted k). For two classes this is (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)).
    It is 1 for perfect, 0 for chance-level and −1 for total disagreement (binary), and unlike
    accuracy it is not fooled by a majority-class predictor. Returns 0.0 when the denominator is
    0 (one of the inputs has a single class), as scikit-learn does. Introduced in Chapter 09.
    """
    C = confusion_matrix(y_true, y_pred).astype(np.float64)
    t, p = C.sum(axis=1), C.sum(axis=0)
    c, s = np.trace(C), C.sum()
    den = math.sqrt((s * s - p @ p) * (s * s - t @ t))
    return 0.0 if den == 0 else float((c * s - p @ t) / den)


def _real_pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _pair(x, y, ("x", "y"))
    out = []
    for name, arr in (("x", a), ("y", b)):
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold numbers; got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} holds NaN or inf; drop or fix those examples first")
        out.append(arr)
    if a.size < 2:
        raise ValueError(f"a correlation needs at least two examples; got {a.size}")
    return out[0], out[1]


def pearson(x: Any, y: Any) -> float:
    """Pearson correlation r = Σ(x−x̄)(y−ȳ) / sqrt(Σ(x−x̄)² Σ(y−ȳ)²), in [−1, 1].

    A constant input has no variance, so r is undefined: NaN is returned with a RuntimeWarning
    (as SciPy does) rather than an error, so an evaluation of a collapsed model still finishes.
    Raises ValueError for NaN/inf, length mismatch or fewer than two examples. Introduced in Chapter 09.
    """
    a, b = _real_pair(x, y)
    da, db = a - a.mean(), b - b.mean()
    den = math.sqrt(float(da @ da) * float(db @ db))
    if den == 0.0:
        warnings.warn("pearson: an input is constant, the correlation is undefined (NaN)",
                      RuntimeWarning, stacklevel=2)
        return float("nan")
    return float(np.clip((da @ db) / den, -1.0, 1.0))


def average_ranks(x: Any) -> np.ndarray:
    """Ranks 1..N with ties given the mean of the ranks they span ([10, 20, 20, 30] → [1, 2.5, 2.5, 4]).

    Introduced in Chapter 09.
    """
    arr = _to_array(x, "x")
    order = np.argsort(arr, kind="stable")
    sorted_values = arr[order]
    ranks = np.empty(arr.size, dtype=np.float64)
    start = 0
    for end in range(1, arr.size + 1):  # one run of equal values per [start, end)
        if end == arr.size or sorted_values[end] != sorted_values[start]:
            ranks[order[start:end]] = (start + 1 + end) / 2.0  # mean of ranks start+1 .. end
            start = end
    return ranks


def spearman(x: Any, y: Any) -> float:
    """Spearman's ρ: the Pearson correlation of the average ranks (ties share their mean rank).

    Unlike 1 − 6Σd²/(n(n²−1)), this form is exact with ties. Same NaN/constant-input behaviour
    as :func:`pearson`. Introduced in Chapter 09.
    """
    a, b = _real_pair(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rho = pearson(average_ranks(a), average_ranks(b))
    if math.isnan(rho):
        warnings.warn("spearman: an input is constant, the correlation is undefined (NaN)",
                      RuntimeWarning, stacklevel=2)
    return rho
