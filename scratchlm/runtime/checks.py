"""Asserted results that a robustness check can read back (introduced in Chapter 01, used by every chapter).

A chapter asserts what its run must show — "the validation loss fell below the unigram entropy",
"the model without positions sits at chance". Written as a bare ``assert``, the value and its margin
vanish with the cell. :func:`check_metric` asserts the same thing and also *glues* (myst-nb) the
value, the comparison and the threshold under fixed names, so that

* the prose can quote them (``{glue:text}`check_val_loss_value:.3f```), and
* ``python -m book.check_profiles`` can execute the chapter for several seeds and thread counts and
  print every asserted metric with its margin.

Glue names (the convention ``book/check_profiles.py`` reads; documented in book/AUTHORING.md)::

    check_<name>_value       the measured value (float)
    check_<name>_threshold   the bound it is compared with (float)
    check_<name>_op          one of "<", "<=", ">", ">="
    check_<name>_skipped     True, glued only when a dry run skipped the assertion

margin = threshold − value for ``<``/``<=`` and value − threshold for ``>``/``>=``: positive when the
check passes, and the distance to failing when it does.

:func:`report_training` glues what a training run costs (``train_<name>_params``,
``train_<name>_tokens``) so that the gpu dry run can estimate GPU time from 6·N·tokens.

Under a step cap (``SCRATCHLM_MAX_STEPS``, a dry run) trained results cannot hold: checks made with
``needs_training=True`` (the default) are printed as skipped instead of asserted.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from .profiles import dry_run

CHECK_PREFIX = "check_"
TRAIN_PREFIX = "train_"
OPS: dict[str, Callable[[float, float], bool]] = {"<": operator.lt, "<=": operator.le, ">": operator.gt,
                                                  ">=": operator.ge}
NAME = re.compile(r"[a-z][a-z0-9_]*")

__all__ = ["CHECK_PREFIX", "OPS", "TRAIN_PREFIX", "CheckResult", "check_metric", "margin", "report_training"]


def margin(value: float, op: str, threshold: float) -> float:
    """Signed distance from failing: threshold − value for ``<``/``<=``, value − threshold for ``>``/``>=``."""
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}; got {op!r}")
    return threshold - value if op.startswith("<") else value - threshold


@dataclass(frozen=True)
class CheckResult:
    """One asserted metric: what was measured, against what, and whether it held."""

    name: str
    value: float
    op: str
    threshold: float
    passed: bool  # value op threshold (False for NaN)
    skipped: bool  # not asserted: a dry run, and the check needs real training

    @property
    def margin(self) -> float:
        return margin(self.value, self.op, self.threshold)


def _glue(name: str, value: object) -> None:
    """myst-nb glue (hidden) when running inside a Jupyter kernel; nothing in plain Python."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with every Jupyter install
        return
    if get_ipython() is None:
        return
    from myst_nb import glue

    glue(name, value, display=False)


def _number(what: str, x: object) -> float:
    if isinstance(x, bool) or not hasattr(x, "__float__"):
        raise TypeError(f"check_metric {what} must be a real number (int, float, NumPy or 0-dim tensor); got {x!r}")
    return float(x)


def check_metric(name: str, value: float, op: str, threshold: float, *, needs_training: bool = True,
                 quiet: bool = False) -> CheckResult:
    """Assert ``value op threshold``, glue both numbers under ``check_<name>_*`` and print one line.

    ``needs_training``: the result holds only after the profile's full training (the default); under
    a step cap (:func:`scratchlm.runtime.profiles.dry_run`) such a check is reported as skipped
    instead of asserted. Pass ``False`` for results that any run must show (a seeded statistic, a
    memory ratio). Raises ``AssertionError`` naming the metric, the value, the bound and the margin
    when the check fails (NaN always fails).
    """
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"check_metric name must be lower-case letters, digits and '_' (a glue-name part, "
                         f"starting with a letter); got {name!r}")
    if op not in OPS:
        raise ValueError(f"check_metric op must be one of {', '.join(map(repr, OPS))}; got {op!r}")
    value_f, threshold_f = _number("value", value), _number("threshold", threshold)
    if not math.isfinite(threshold_f):
        raise ValueError(f"check_metric threshold must be finite; got {threshold_f}")
    passed = OPS[op](value_f, threshold_f)  # False for NaN
    result = CheckResult(name, value_f, op, threshold_f, passed=passed, skipped=needs_training and dry_run())
    _glue(f"{CHECK_PREFIX}{name}_value", value_f)
    _glue(f"{CHECK_PREFIX}{name}_threshold", threshold_f)
    _glue(f"{CHECK_PREFIX}{name}_op", op)
    if result.skipped:
        _glue(f"{CHECK_PREFIX}{name}_skipped", True)
    verdict = "skipped (dry run)" if result.skipped else ("ok" if passed else "FAILED")
    if not quiet:
        print(f"check {name}: {value_f:.6g} {op} {threshold_f:.6g} (margin {result.margin:+.4g}) {verdict}")
    if not passed and not result.skipped:
        raise AssertionError(f"check {name} failed: {value_f!r} is not {op} {threshold_f!r} "
                             f"(margin {result.margin:+.4g})")
    return result


def report_training(name: str, *, params: int, tokens: int, quiet: bool = False) -> float:
    """Glue the cost of one training run of this profile: ``train_<name>_params`` and ``train_<name>_tokens``.

    ``params`` is the number of trained parameters N, ``tokens`` the tokens the *uncapped* profile
    trains on (steps × batch × sequence length, summed over runs). Returns the training FLOPs
    estimate 6·N·tokens (forward + backward; Kaplan et al., 2020), which the gpu dry run turns
    into a time on one GPU.
    """
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"report_training name must be lower-case letters, digits and '_'; got {name!r}")
    for what, x in (("params", params), ("tokens", tokens)):
        if not isinstance(x, int) or isinstance(x, bool) or x < 0:
            raise ValueError(f"report_training {what} must be an int >= 0; got {x!r}")
    _glue(f"{TRAIN_PREFIX}{name}_params", params)
    _glue(f"{TRAIN_PREFIX}{name}_tokens", tokens)
    flops = 6.0 * params * tokens
    if not quiet:
        print(f"training {name}: {params:,} parameters x {tokens:,} tokens -> 6ND = {flops:.3g} FLOPs")
    return flops
