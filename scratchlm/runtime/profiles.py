"""Run profiles: one book, three budgets (introduced in the Introduction, used by every chapter).

``smoke`` is for tests and CI (every notebook well under a minute on 2 CPU cores), ``cpu`` is for a
laptop (a few minutes per chapter, results that mean something) and ``gpu`` is anchor scale
(configurations comparable to published reference results).

The profile comes from the environment variable ``SCRATCHLM_PROFILE``; without it, ``gpu`` is chosen
when CUDA is available and ``cpu`` otherwise. A chapter keeps all its sizes in one place::

    CFG = by_profile(smoke=dict(steps=20), cpu=dict(steps=2000), gpu=dict(steps=5000))

The step cap (``SCRATCHLM_MAX_STEPS``) lets the gpu profile be *dry-run* on a CPU: every training
loop runs at most that many steps (:func:`capped`; ``scratchlm.training.train`` and
``scratchlm.decoding.generate`` apply it themselves), so gpu-scale configurations are built, stepped
and carried to the end of the chapter in minutes. Results that need real training cannot hold after
two steps; a chapter's checks consult :func:`dry_run` (``scratchlm.check_metric`` does it for them).
"""

from __future__ import annotations

import os
from typing import Literal, TypeVar, get_args

import torch

from .env import env_int

Profile = Literal["smoke", "cpu", "gpu"]
PROFILES: tuple[str, ...] = get_args(Profile)
PROFILE_ENV = "SCRATCHLM_PROFILE"
MAX_STEPS_ENV = "SCRATCHLM_MAX_STEPS"

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


def step_cap() -> int | None:
    """The step cap: ``$SCRATCHLM_MAX_STEPS`` as a positive int, or ``None`` when it is unset or empty.

    The one place the variable is read. A value that is not a positive integer is an error.
    """
    return env_int(MAX_STEPS_ENV, minimum=1)


def capped(n: int) -> int:
    """``min(n, step_cap())``: the length of a chapter-local loop under the step cap (``n`` without one).

    Wrap every loop whose length is a budget: ``for step in range(capped(CFG["steps"])): ...``.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"capped() expects a loop length (an int >= 0); got {n!r}")
    cap = step_cap()
    return n if cap is None else min(n, cap)


def dry_run() -> bool:
    """True when a step cap is active: the run proves the code runs end to end, not what training gives."""
    return step_cap() is not None
