"""Run profiles: one book, three budgets (introduced in the Introduction, used by every chapter).

``smoke`` is for tests and CI (every notebook well under a minute on 2 CPU cores), ``cpu`` is for a
laptop (a few minutes per chapter, results that mean something) and ``gpu`` is anchor scale
(configurations comparable to published reference results).

The profile comes from the environment variable ``SCRATCHLM_PROFILE``; without it, ``gpu`` is chosen
when CUDA is available and ``cpu`` otherwise. A chapter keeps all its sizes in one place::

    CFG = by_profile(smoke=dict(steps=20), cpu=dict(steps=2000), gpu=dict(steps=5000))
"""

from __future__ import annotations

import os
from typing import Literal, TypeVar, get_args

import torch

Profile = Literal["smoke", "cpu", "gpu"]
PROFILES: tuple[str, ...] = get_args(Profile)
PROFILE_ENV = "SCRATCHLM_PROFILE"

T = TypeVar("T")


def default_profile() -> Profile:
    """The profile picked from the hardware: ``gpu`` if CUDA is available, else ``cpu``."""
    return "gpu" if torch.cuda.is_available() else "cpu"


def current_profile() -> Profile:
    """The active profile: ``$SCRATCHLM_PROFILE`` if set, else :func:`default_profile`."""
    value = os.environ.get(PROFILE_ENV, "").strip().lower()
    if not value:
        return default_profile()
    if value not in PROFILES:
        raise ValueError(
            f"{PROFILE_ENV} must be one of {', '.join(PROFILES)}; got {value!r}"
        )
    return value  # type: ignore[return-value]


def by_profile(*, smoke: T, cpu: T, gpu: T, profile: Profile | None = None) -> T:
    """Return the value for the active profile (or for ``profile`` when given).

    All three values are required so that a chapter cannot forget a budget.
    """
    chosen = current_profile() if profile is None else profile
    if chosen not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}; got {chosen!r}")
    return {"smoke": smoke, "cpu": cpu, "gpu": gpu}[chosen]
