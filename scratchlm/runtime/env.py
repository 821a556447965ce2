"""Reading settings from environment variables (used by the data registry and the training loop).

Why a helper: ``os.environ.get(name) in ("1", "true")`` silently treats a typo (``SCRATCHLM_OFFLINE=ture``)
or an unexpected spelling (``=on``) as "off", and the learner finds out only when a download starts on
a train with no network. ``env_flag`` accepts the usual spellings and rejects everything else loudly.
"""

from __future__ import annotations

import os

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def env_flag(name: str, default: bool = False) -> bool:
    """The boolean value of environment variable ``name``.

    Accepted (case-insensitive, surrounding spaces ignored): 1/0, true/false, yes/no, on/off. Unset or
    empty (after stripping) gives ``default``. Anything else raises ``ValueError`` naming the variable,
    its value and the accepted spellings.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"env_flag expects a non-empty variable name (str); got {name!r}")
    if not isinstance(default, bool):
        raise TypeError(f"env_flag default must be a bool; got {default!r}")
    raw = os.environ.get(name)
    if raw is None:
        return default
    word = raw.strip().lower()
    if not word:
        return default
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(
        f"environment variable {name}={raw!r} is not a boolean; use one of "
        f"{'/'.join(TRUE_WORDS)} (true) or {'/'.join(FALSE_WORDS)} (false), case-insensitive, or leave it "
        f"empty/unset for the default ({default})"
    )


def env_int(name: str, default: int | None = None, *, minimum: int | None = None) -> int | None:
    """The integer value of environment variable ``name`` (used for seeds, thread counts, step caps).

    Accepted: a plain decimal integer, surrounding spaces ignored (``"2"``, ``" 1337 "``). Unset or empty
    (after stripping) gives ``default``. Anything else — ``"2.0"``, ``"two"``, ``"1e3"`` — or a value below
    ``minimum`` raises ``ValueError`` naming the variable, its value and what is expected, for the same
    reason as :func:`env_flag`: a typo must not silently run the default.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"env_int expects a non-empty variable name (str); got {name!r}")
    if default is not None and (not isinstance(default, int) or isinstance(default, bool)):
        raise TypeError(f"env_int default must be an int or None; got {default!r}")
    if minimum is not None and (not isinstance(minimum, int) or isinstance(minimum, bool)):
        raise TypeError(f"env_int minimum must be an int or None; got {minimum!r}")
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    word = raw.strip()
    expected = "an integer" + (f" >= {minimum}" if minimum is not None else "")
    if not (word.isascii() and word.lstrip("+-").isdigit() and word.count("+") + word.count("-") <= 1):
        raise ValueError(f"environment variable {name}={raw!r} is not {expected}; write digits only "
                         f"(e.g. {name}=2), or leave it empty/unset for the default ({default})")
    value = int(word)
    if minimum is not None and value < minimum:
        raise ValueError(f"environment variable {name}={raw!r} must be {expected}, or empty/unset for the "
                         f"default ({default})")
    return value
