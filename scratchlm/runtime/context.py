"""Device selection, seeding and the chapter set-up banner (introduced in Chapter 01)."""

from __future__ import annotations

import logging
import os
import platform
import random
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .env import env_int
from .profiles import MAX_STEPS_ENV, Profile, current_profile, step_cap

SEED_ENV = "SCRATCHLM_SEED"
THREADS_ENV = "SCRATCHLM_THREADS"


def get_device(prefer: str | None = None) -> torch.device:
    """The best available device: CUDA, then Apple MPS, then CPU.

    ``prefer`` (or the environment variable ``SCRATCHLM_DEVICE``) forces a device, e.g. ``"cpu"``.
    """
    wanted = prefer or os.environ.get("SCRATCHLM_DEVICE")
    if wanted:
        device = torch.device(wanted)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {wanted!r} was requested but CUDA is not available")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {wanted!r} was requested but MPS is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 1337, *, deterministic: bool = True) -> int:
    """Seed Python, NumPy and PyTorch (all devices) so a rerun prints the same numbers.

    With ``deterministic=True`` PyTorch is asked for deterministic kernels where they exist
    (``warn_only`` so that an op without one does not crash a chapter on GPU).
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return seed


@dataclass(frozen=True)
class ChapterContext:
    """What the set-up cell of a chapter hands to the rest of the notebook."""

    chapter: str  # e.g. "01"
    profile: Profile  # smoke / cpu / gpu
    device: torch.device  # where tensors and models go
    seed: int  # the seed every random generator got


# Loggers of libraries whose import-time warnings are noise for a reader: torchao (imported by
# transformers when installed) reports its optional CUDA kernels missing on a CPU build, and registers
# Enum types the way torch 2.13's pytree warns about. Harmless, but the website build treats any
# stderr output of a cell as an error.
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")


# Deprecation notices that transformers raises from its own internals when peft or our comparisons
# call it (e.g. "`past_key_values` is deprecated ... for BertModel.forward"): about the library's next
# version, not about the chapter's code, and stderr output fails the website build.
QUIET_WARNING_MODULES = r"transformers(\..*)?$"


def quiet_library_warnings() -> None:
    """Raise the level of :data:`QUIET_LOGGERS` to ERROR and ignore transformers' FutureWarnings."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module=QUIET_WARNING_MODULES)


def plain_numpy_scalars() -> None:
    """Show NumPy scalars as plain numbers in notebook outputs (``0.25``, not ``np.float64(0.25)``).

    NumPy 2's repr names the type; myst-nb's ``glue`` formats a glued value from that text, so
    ``{glue:text}`acc:.1%``` of a NumPy float fails the website build. A no-op outside IPython.
    """
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with every notebook environment
        return
    shell = get_ipython()
    if shell is None:
        return
    formatter = shell.display_formatter.formatters["text/plain"]
    # Registered per concrete type: np.float64 is also a Python float, whose own printer IPython
    # would find first through the abstract np.floating.
    kinds = [(t, float) for t in (np.float16, np.float32, np.float64)]
    kinds += [(t, int) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)]
    kinds += [(np.bool_, bool)]
    for kind, convert in kinds:
        formatter.for_type(kind, lambda obj, printer, cycle, convert=convert: printer.text(repr(convert(obj))))


def threads_override() -> int | None:
    """``$SCRATCHLM_THREADS`` as a positive int (the CPU thread count a run was asked for), else ``None``.

    :func:`setup_chapter` applies it; a chapter that picks its own thread count for a section (e.g. one
    thread for a tiny model) uses ``threads_override() or its_choice`` so that the request wins.
    """
    return env_int(THREADS_ENV, minimum=1)


def setup_chapter(chapter: str, *, seed: int = 1337, quiet: bool = False) -> ChapterContext:
    """Seed everything, pick the device and profile, and print them with the library versions.

    Two environment variables let a robustness check (``python -m book.check_profiles``) rerun a chapter
    unchanged under other conditions: ``SCRATCHLM_SEED`` replaces ``seed``, and ``SCRATCHLM_THREADS``
    sets the number of CPU threads (otherwise PyTorch's default, or one thread for the smoke profile
    on CPU). With ``SCRATCHLM_MAX_STEPS`` set (a dry run, see :func:`scratchlm.runtime.profiles.capped`)
    the banner says so.
    """
    from .plotting import use_book_style  # matplotlib is heavy; only chapters need it

    profile = current_profile()
    device = get_device()
    seed = env_int(SEED_ENV, default=seed, minimum=0)
    threads = threads_override()
    cap = step_cap()
    seed_everything(seed)
    use_book_style()
    quiet_library_warnings()
    plain_numpy_scalars()
    if threads is not None:
        torch.set_num_threads(threads)
    elif profile == "smoke" and device.type == "cpu":
        # Smoke models are tiny: a second thread buys nothing, and on a busy machine (CI, a shared
        # laptop) OpenMP threads waiting for each other run many times slower than one thread.
        torch.set_num_threads(1)
    if not quiet:
        print(f"scratchlm chapter {chapter} | profile={profile} | device={device} | seed={seed}")
        print(
            f"python {platform.python_version()} | torch {torch.__version__} | "
            f"numpy {np.__version__} | threads {torch.get_num_threads()}"
        )
        if cap is not None:
            print(f"DRY RUN: {MAX_STEPS_ENV}={cap} caps every training loop; checks of trained results are skipped")
    return ChapterContext(chapter=chapter, profile=profile, device=device, seed=seed)
