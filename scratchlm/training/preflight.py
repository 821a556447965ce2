"""Checks the training loop runs before step 1, and the fingerprint that guards resumes (Chapter 06).

Why before step 1: a checkpoint directory that cannot be written, or a config that JSON cannot hold,
otherwise surfaces at the first save, after an hour of training whose result is then lost.

Why a fingerprint: resuming with a different batch size, accumulation, schedule, optimizer setting
or model shape silently trains a run that is neither the old one nor a clean new one, and its loss
curve looks plausible. The fingerprint records what changes the result; a resume that differs is
refused with every difference listed.

What the fingerprint holds, and what it leaves out on purpose:

* the nested shapes of ``get_batch("train", 0)`` (batch size, block length; index 0 because
  ``get_batch`` is pure, so the same data pipeline gives the same shapes even with dynamic padding);
* ``grad_accum_steps``, ``learning_rate``, ``min_lr``, ``warmup_steps``, ``weight_decay``, ``beta1``,
  ``beta2``, ``eps``, ``grad_clip``; and ``optimizer``, ``muon_lr``, ``muon_momentum``, ``schedule``,
  ``cooldown_fraction`` when set away from their defaults (they came later: a checkpoint written
  before them has none, and its run used the defaults);
* the *effective* end of the cosine, ``lr_decay_steps`` or, when that is None, ``max_steps``. So
  ``max_steps`` may grow on resume only when ``lr_decay_steps`` is set (and unchanged): otherwise a
  longer run stretches the cosine, and the steps already taken followed another schedule;
* the model: its class and ``asdict(model.config)`` when it has a dataclass ``config``, otherwise the
  name and shape of every state-dict entry;
* NOT ``autocast``, ``fused``, ``compile``, evaluation, logging or checkpoint settings: they change
  how a step is computed (rounding, speed) or reported, not which training run it belongs to, and
  moving a run from CPU to GPU on resume is legitimate.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import TrainConfig
from .distributed import unwrap_model

_SCHEDULE_FIELDS = ("grad_accum_steps", "learning_rate", "min_lr", "warmup_steps", "weight_decay", "beta1",
                    "beta2", "eps", "grad_clip")
# Added after checkpoints already existed: fingerprinted only when set away from the default, so a
# checkpoint written before these options still resumes (its run used the defaults).
_LATER_FIELDS = {"optimizer": "adamw", "muon_lr": 0.02, "muon_momentum": 0.95, "schedule": "cosine",
                 "cooldown_fraction": 0.2}
_ABSENT = "(absent)"


def check_config_json(cfg: TrainConfig) -> None:
    """Raise ``TypeError`` unless the whole config (``extra`` included) can be written as JSON."""
    for key, value in cfg.extra.items():
        if not isinstance(key, str):
            raise TypeError(f"TrainConfig.extra keys must be str (JSON object keys); got {key!r}")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"TrainConfig.extra[{key!r}] is a {type(value).__name__}, which JSON cannot hold "
                            f"({exc}); checkpoints store the config as JSON: convert it (a set to a sorted list, "
                            f"a tensor with .tolist())") from None
    try:
        json.dumps(dataclasses.asdict(cfg), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"TrainConfig is not JSON-serialisable ({exc}); every field must be a number, str, "
                        f"bool, None, list or str-keyed dict") from None


def check_checkpoint_writable(path: str | os.PathLike) -> None:
    """Raise ``ValueError`` unless a file can be created beside ``path`` (creating its directory).

    It really creates and deletes a temp file there (named like :func:`save_checkpoint`'s, so a
    crash between the two leaves nothing the next save does not clean up): permission bits, a
    read-only mount, a full quota and a parent that is a regular file all show up only on a try.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"TrainConfig.checkpoint_path={str(path)!r} is a directory; give a file name such as "
                         f"{str(path / 'checkpoint.safetensors')!r}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"TrainConfig.checkpoint_path={str(path)!r}: cannot write in {str(path.parent)!r} "
                         f"({exc.strerror or exc}); fix this before training, or the first save would fail") from exc


def batch_signature(batch: Any) -> Any:
    """JSON-able nested shapes of a batch: a tensor -> its shape, dicts/tuples/lists -> the same structure."""
    if isinstance(batch, torch.Tensor):
        return list(batch.shape)
    if isinstance(batch, Mapping):
        return {str(k): batch_signature(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        if len(batch) > 32:  # e.g. a list of strings: the length is what matters
            return f"{type(batch).__name__} of {len(batch)}"
        return [batch_signature(v) for v in batch]
    return type(batch).__name__


def _jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, odd objects their str)."""
    return json.loads(json.dumps(value, default=str))


def model_signature(model: nn.Module) -> dict[str, Any]:
    """The model's class and config (a dataclass ``config``), else its state-dict names and shapes."""
    core = unwrap_model(model)
    config = getattr(core, "config", None)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        fields = dataclasses.asdict(config)
    else:
        fields = {name: list(t.shape) for name, t in core.state_dict().items()}
    return _jsonable({"class": type(core).__name__, **fields})


def training_fingerprint(cfg: TrainConfig, first_batch: Any, model: nn.Module,
                         param_groups: Any = None) -> dict[str, Any]:
    """What a resumed run must share with the run that wrote its checkpoint (see the module docstring);
    with ``param_groups`` (Chapter 09) also each group's name, lr_scale and parameter count."""
    decay_end = cfg.lr_decay_steps if cfg.lr_decay_steps is not None else cfg.max_steps
    out = {
        "batch": batch_signature(first_batch),
        **{name: getattr(cfg, name) for name in _SCHEDULE_FIELDS},
        "lr_decay_steps (effective; None means max_steps)": decay_end,
        **{name: getattr(cfg, name) for name, default in _LATER_FIELDS.items() if getattr(cfg, name) != default},
        "model": model_signature(model),
    }
    if param_groups is not None:
        out["param_groups"] = {str(g.get("name", i)): {"lr_scale": g.get("lr_scale", 1.0),
                                                        "parameters": sum(p.numel() for p in g["params"])}
                               for i, g in enumerate(param_groups)}
    return _jsonable(out)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def fingerprint_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """One line ``name: checkpoint X, now Y`` per field that differs (nested fields dotted)."""
    old, new = _flatten(_jsonable(saved)), _flatten(_jsonable(now))
    lines = []
    for name in list(old) + [n for n in new if n not in old]:
        a, b = old.get(name, _ABSENT), new.get(name, _ABSENT)
        if a != b:
            lines.append(f"{name}: checkpoint {a!r}, now {b!r}")
    return lines
