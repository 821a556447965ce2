"""The training loop's configuration and the history it returns (introduced in Chapter 06)."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

_INT_FIELDS = {"max_steps": 1, "warmup_steps": 0, "grad_accum_steps": 1, "eval_every": 0, "eval_batches": 1,
               "checkpoint_every": 0, "log_every": 1}  # name -> smallest allowed value
_FLOAT_FIELDS = ("learning_rate", "min_lr", "weight_decay", "beta1", "beta2", "eps", "grad_clip")
_BOOL_FIELDS = ("eval_train", "eval_at_start", "compile", "resume", "progress", "validate_inputs")
_MUON_FLOAT_FIELDS = ("muon_lr", "muon_momentum", "cooldown_fraction")
OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")


@dataclass
class TrainConfig:
    """Everything the loop needs; defaults are nanoGPT's Shakespeare-char CPU recipe."""

    max_steps: int = 2000  # optimizer steps in total (a resumed run continues up to this)
    learning_rate: float = 1e-3  # peak learning rate, reached at the end of warm-up
    min_lr: float = 1e-4  # floor the cosine decays to (nanoGPT: learning_rate / 10)
    warmup_steps: int = 100  # linear warm-up from ~0 to learning_rate
    lr_decay_steps: int | None = None  # step where the decay reaches min_lr (None: max_steps)
    schedule: Literal["cosine", "wsd"] = "cosine"  # after warm-up: cosine decay, or warmup-stable-decay
    cooldown_fraction: float = 0.2  # wsd only: the linear decay to min_lr takes this fraction of lr_decay_steps
    weight_decay: float = 0.1  # AdamW decoupled weight decay, matrices only (see param groups)
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.99  # AdamW second-moment decay (0.99 for small-batch char models)
    eps: float = 1e-8  # AdamW denominator epsilon
    optimizer: Literal["adamw", "muon"] = "adamw"  # muon: Muon for hidden matrices, AdamW for the rest
    muon_lr: float = 0.02  # muon only: Muon's peak rate (scheduled like learning_rate, times muon_lr / learning_rate)
    muon_momentum: float = 0.95  # muon only: Muon's momentum (Nesterov)
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 disables clipping
    grad_accum_steps: int = 1  # micro-batches per optimizer step (effective batch = A * batch)
    eval_every: int = 250  # evaluate after every this many steps (and after the last); 0: never
    eval_batches: int = 20  # validation batches averaged per evaluation
    eval_train: bool = False  # also measure train loss on eval_batches held-out train batches
    eval_at_start: bool = True  # evaluate once before the first step (the untrained model)
    autocast: Literal["auto", "bf16", "off"] = "auto"  # auto: bf16 on CUDA, off on CPU/MPS
    compile: bool = False  # torch.compile the model (pays off for long runs)
    fused: bool | None = None  # fused AdamW kernel; None: use it when the device supports it
    checkpoint_path: str | None = None  # where to save; None: no checkpoints
    checkpoint_every: int = 0  # save after every this many steps (and after the last); 0: last only
    resume: bool = False  # continue from checkpoint_path if the file exists
    progress: bool = True  # tqdm progress bar (rank 0 only in a distributed run)
    log_every: int = 10  # copy per-step loss and grad norm to the host every this many steps
    nonfinite: Literal["raise", "skip", "off"] = "raise"  # a NaN/inf loss or grad norm: stop, skip the step, or ignore
    validate_inputs: bool = True  # call model.validate_inputs(batch) on every batch when the model has it
    extra: dict[str, Any] = field(default_factory=dict)  # free-form JSON-able notes stored in checkpoints

    def __post_init__(self) -> None:
        if isinstance(self.checkpoint_path, os.PathLike):  # a Path: store it as the str JSON can hold
            self.checkpoint_path = os.fspath(self.checkpoint_path)
        self.check()

    def check(self) -> None:
        """Raise ``ValueError``/``TypeError`` naming the first field that is out of range or of the wrong type.

        Called on construction and again by :func:`scratchlm.training.train` before step 1: a
        dataclass field can be reassigned after construction without any check.
        """
        for name, low in _INT_FIELDS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"TrainConfig.{name} must be an int >= {low}; got {value!r}")
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise TypeError(f"TrainConfig.{name} must be a finite number (int or float); got {value!r}")
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"TrainConfig.{name} must be True or False; got {getattr(self, name)!r}")
        for name in _MUON_FLOAT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise TypeError(f"TrainConfig.{name} must be a finite number (int or float); got {value!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer must be one of {OPTIMIZERS}; got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule must be one of {SCHEDULES}; got {self.schedule!r}")
        if not 0 < self.cooldown_fraction <= 1:
            raise ValueError(f"TrainConfig.cooldown_fraction must be in (0, 1]; got {self.cooldown_fraction}")
        if not self.muon_lr > 0:
            raise ValueError(f"TrainConfig.muon_lr must be > 0; got {self.muon_lr}")
        if not 0 <= self.muon_momentum < 1:
            raise ValueError(f"TrainConfig.muon_momentum must lie in [0, 1); got {self.muon_momentum}")
        if self.fused not in (None, True, False):
            raise TypeError(f"TrainConfig.fused must be None, True or False; got {self.fused!r}")
        if self.lr_decay_steps is not None:
            if not isinstance(self.lr_decay_steps, int) or isinstance(self.lr_decay_steps, bool):
                raise ValueError(f"TrainConfig.lr_decay_steps must be None or an int; got {self.lr_decay_steps!r}")
            if self.lr_decay_steps <= self.warmup_steps:
                raise ValueError(f"TrainConfig.lr_decay_steps must exceed warmup_steps={self.warmup_steps}; "
                                 f"got {self.lr_decay_steps}")
        if not (self.learning_rate > 0 and 0 <= self.min_lr <= self.learning_rate):
            raise ValueError(f"TrainConfig needs learning_rate > 0 and 0 <= min_lr <= learning_rate; "
                             f"got learning_rate={self.learning_rate}, min_lr={self.min_lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"TrainConfig betas must lie in [0, 1); got {self.beta1}, {self.beta2}")
        if self.eps <= 0:
            raise ValueError(f"TrainConfig.eps must be > 0; got {self.eps}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError(f"TrainConfig.grad_clip and weight_decay must be >= 0; "
                             f"got {self.grad_clip}, {self.weight_decay}")
        if self.autocast not in ("auto", "bf16", "off"):
            raise ValueError(f"TrainConfig.autocast must be 'auto', 'bf16' or 'off'; got {self.autocast!r}")
        if self.nonfinite not in ("raise", "skip", "off"):
            raise ValueError(f"TrainConfig.nonfinite must be 'raise', 'skip' or 'off'; got {self.nonfinite!r}")
        if self.checkpoint_path is not None and (not isinstance(self.checkpoint_path, str) or not self.checkpoint_path):
            raise TypeError(f"TrainConfig.checkpoint_path must be None or a non-empty str (or path); "
                            f"got {self.checkpoint_path!r}")
        if self.resume and self.checkpoint_path is None:
            raise ValueError("TrainConfig.resume=True needs a checkpoint_path")
        if not isinstance(self.extra, dict):
            raise TypeError(f"TrainConfig.extra must be a dict; got {type(self.extra).__name__}")


@dataclass
class TrainHistory:
    """What happened during training; ``scratchlm.plot_loss_curves(history.curves())`` draws it."""

    steps: list[int] = field(default_factory=list)  # 1-based count of optimizer steps done
    train_loss: list[float] = field(default_factory=list)  # mean micro-batch loss of that step
    lr: list[float] = field(default_factory=list)  # learning rate used by that step
    grad_norm: list[float] = field(default_factory=list)  # global grad norm before clipping
    eval_steps: list[int] = field(default_factory=list)  # steps done when an evaluation ran
    val_loss: list[float] = field(default_factory=list)  # mean loss over eval_batches val batches
    eval_train_loss: list[float] = field(default_factory=list)  # same on held-out train batches
    skipped_steps: list[int] = field(default_factory=list)  # steps not applied: non-finite loss/norm ("skip")
    train_time_s: float = 0.0  # wall seconds spent in training steps (not evaluation)
    eval_time_s: float = 0.0  # wall seconds spent evaluating

    def curves(self) -> dict[str, tuple[list[int], list[float]]]:
        """Named (steps, losses) pairs for :func:`scratchlm.plot_loss_curves`."""
        out = {"train (per step)": (self.steps, self.train_loss)}
        if self.eval_train_loss:
            out["train (eval batches)"] = (self.eval_steps, self.eval_train_loss)
        if self.val_loss:
            out["validation"] = (self.eval_steps, self.val_loss)
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainHistory:
        return cls(**data)
