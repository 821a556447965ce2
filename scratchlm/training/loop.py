"""The one training loop every chapter uses (introduced in Chapter 06).

``train(model, get_batch, loss_fn, cfg)`` runs AdamW (decay / no-decay parameter groups), a linear
warm-up followed by cosine decay of the learning rate, gradient clipping, gradient accumulation,
autocast (bf16 on CUDA), optional ``torch.compile``, evaluation every ``eval_every`` steps and
checkpoint / resume in safetensors (see :mod:`scratchlm.training.checkpoint`).

The data contract: ``get_batch(split, index)`` must be a *pure function* of ``(split, index)``
(seed a generator from the index, as :func:`make_lm_get_batch` does). Training step ``s`` with
``grad_accum_steps = A`` asks for the micro-batches ``get_batch("train", s * A + a)``, ``a < A``;
evaluation asks for ``get_batch("val", i)``, ``i < eval_batches`` (the same fixed validation
batches at every evaluation, so the val curve is not noisier than it must be).
Why pure: after a resume the loop simply asks for the batches of the remaining steps. A stateful
iterator (a shuffled DataLoader, or sampling from the global RNG) would have to be checkpointed
too, or the resumed run would train on different data than the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..models.base import token_cross_entropy
from .checkpoint import load_checkpoint, save_checkpoint
from .optim import build_optimizer, lr_at


@dataclass
class TrainConfig:
    """Everything the loop needs; defaults are nanoGPT's Shakespeare-char CPU recipe."""

    max_steps: int = 2000  # optimizer steps in total (a resumed run continues up to this)
    learning_rate: float = 1e-3  # peak learning rate, reached at the end of warm-up
    min_lr: float = 1e-4  # floor the cosine decays to (nanoGPT: learning_rate / 10)
    warmup_steps: int = 100  # linear warm-up from ~0 to learning_rate
    lr_decay_steps: int | None = None  # step where the cosine reaches min_lr (None: max_steps)
    weight_decay: float = 0.1  # AdamW decoupled weight decay, matrices only (see param groups)
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.99  # AdamW second-moment decay (0.99 for small-batch char models)
    eps: float = 1e-8  # AdamW denominator epsilon
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
    progress: bool = True  # tqdm progress bar
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes stored in checkpoints

    def __post_init__(self) -> None:
        ints = {"max_steps": 1, "warmup_steps": 0, "grad_accum_steps": 1, "eval_every": 0,
                "eval_batches": 1, "checkpoint_every": 0}
        for name, low in ints.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"TrainConfig.{name} must be an int >= {low}; got {value!r}")
        if self.lr_decay_steps is not None and self.lr_decay_steps <= self.warmup_steps:
            raise ValueError(f"TrainConfig.lr_decay_steps must exceed warmup_steps={self.warmup_steps}; "
                             f"got {self.lr_decay_steps}")
        if not (self.learning_rate > 0 and 0 <= self.min_lr <= self.learning_rate):
            raise ValueError(f"TrainConfig needs learning_rate > 0 and 0 <= min_lr <= learning_rate; "
                             f"got learning_rate={self.learning_rate}, min_lr={self.min_lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"TrainConfig betas must lie in [0, 1); got {self.beta1}, {self.beta2}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError(f"TrainConfig.grad_clip and weight_decay must be >= 0; "
                             f"got {self.grad_clip}, {self.weight_decay}")
        if self.autocast not in ("auto", "bf16", "off"):
            raise ValueError(f"TrainConfig.autocast must be 'auto', 'bf16' or 'off'; got {self.autocast!r}")
        if self.resume and self.checkpoint_path is None:
            raise ValueError("TrainConfig.resume=True needs a checkpoint_path")


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



def autocast_context(device: torch.device, mode: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA for ``auto``; on any device for ``bf16``; nothing for ``off``.

    Why off on CPU by default: CPU bf16 matmuls are only faster on chips with AMX/AVX512-BF16 and
    the rounding changes the numbers a chapter prints; it stays available as ``autocast="bf16"``.
    """
    use = mode == "bf16" or (mode == "auto" and device.type == "cuda")
    if not use:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        raise ValueError("train() needs a model with parameters") from None


@torch.no_grad()
def evaluate(model: nn.Module, get_batch: Callable, loss_fn: Callable, split: str, indices: Iterable[int],
             *, autocast: str = "auto") -> float:
    """Mean of ``loss_fn(model, get_batch(split, i))`` over ``indices``, in eval mode, no gradients."""
    was_training = model.training
    model.eval()
    device = _model_device(model)
    losses = []
    for i in indices:
        with autocast_context(device, autocast):
            losses.append(loss_fn(model, get_batch(split, i)).float())
    model.train(was_training)
    return torch.stack(losses).mean().item()


def train(
    model: nn.Module,
    get_batch: Callable[[str, int], Any],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    cfg: TrainConfig,
    *,
    history: TrainHistory | None = None,
) -> TrainHistory:
    """Train ``model`` for ``cfg.max_steps`` optimizer steps; return the loss history.

    Each step s: lr ← lr_at(s); for a < A: loss_a = loss_fn(model, get_batch("train", s·A + a));
    backward(loss_a / A) (so gradients are the mean over micro-batches); clip ‖g‖₂ ≤ grad_clip;
    AdamW step. With ``cfg.resume`` and an existing checkpoint the model, optimizer, RNG states,
    step and history are restored first and the loop continues where it stopped.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"train() expects an nn.Module; got {type(model).__name__}")
    if not callable(get_batch) or not callable(loss_fn):
        raise TypeError("train() expects callables get_batch(split, index) and loss_fn(model, batch)")
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"train() expects a TrainConfig; got {type(cfg).__name__}")
    from tqdm.auto import tqdm

    device = _model_device(model)
    history = history if history is not None else TrainHistory()
    optimizer = build_optimizer(model, cfg)
    start = 0
    if cfg.resume and Path(cfg.checkpoint_path).is_file():
        doc = load_checkpoint(cfg.checkpoint_path, model, optimizer)
        start = doc["step"]
        restored = TrainHistory.from_dict(doc["history"])
        for name, value in restored.to_dict().items():
            setattr(history, name, value)
    runner = torch.compile(model) if cfg.compile else model  # checkpoints always use `model`
    A = cfg.grad_accum_steps
    params = [p for p in model.parameters() if p.requires_grad]

    def run_eval(done: int) -> None:
        t0 = time.perf_counter()
        history.eval_steps.append(done)
        history.val_loss.append(evaluate(runner, get_batch, loss_fn, "val", range(cfg.eval_batches),
                                         autocast=cfg.autocast))
        if cfg.eval_train:  # indices past the last training micro-batch: batches never trained on
            first = cfg.max_steps * A
            history.eval_train_loss.append(evaluate(runner, get_batch, loss_fn, "train",
                                                    range(first, first + cfg.eval_batches),
                                                    autocast=cfg.autocast))
        history.eval_time_s += time.perf_counter() - t0

    def save(done: int) -> None:
        save_checkpoint(cfg.checkpoint_path, model, optimizer, step=done,
                        metadata={"history": history.to_dict(), "config": asdict(cfg)})

    if start == 0 and cfg.eval_at_start and cfg.eval_every:
        run_eval(0)
    model.train()
    bar = tqdm(range(start, cfg.max_steps), initial=start, total=cfg.max_steps,
               disable=not cfg.progress, desc="train", mininterval=0.5)
    for step in bar:
        t0 = time.perf_counter()
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        for micro in range(A):
            batch = get_batch("train", step * A + micro)
            with autocast_context(device, cfg.autocast):
                loss = loss_fn(runner, batch)
            (loss / A).backward()
            loss_sum += loss.detach().float()
        if cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        else:  # still report the norm: it is the best early warning of a diverging run
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        history.steps.append(done)
        history.train_loss.append(loss_sum.item() / A)
        history.lr.append(lr)
        history.grad_norm.append(float(norm))
        history.train_time_s += time.perf_counter() - t0
        if cfg.progress and (done % 10 == 0 or done == cfg.max_steps):
            bar.set_postfix(loss=f"{history.train_loss[-1]:.4f}", lr=f"{lr:.2e}", refresh=False)
        if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.max_steps):
            run_eval(done)
            if cfg.progress:
                bar.set_postfix(loss=f"{history.train_loss[-1]:.4f}", val=f"{history.val_loss[-1]:.4f}")
        if cfg.checkpoint_path and ((cfg.checkpoint_every and done % cfg.checkpoint_every == 0)
                                    or done == cfg.max_steps):
            save(done)
    bar.close()
    return history



def causal_lm_loss(model: nn.Module, batch) -> torch.Tensor:
    """``loss_fn`` for a causal LM under the model contract, for both batch layouts of the book.

    * a dict from a collator (``input_ids``, ``attention_mask``, unshifted ``labels``): the model
      shifts the labels itself and returns the loss;
    * an ``(x, y)`` pair of language-model windows (nanoGPT's layout, :func:`make_lm_get_batch`),
      where ``y`` is already ``x`` shifted by one: every position of x has a target, so the loss
      is the cross-entropy of the model's logits against y (no position is lost to the shift).
    """
    if isinstance(batch, dict):
        return model(**batch).loss
    x, y = batch  # (B, T), (B, T)
    logits = model(x).logits  # (B, T, V)
    return token_cross_entropy(logits, y)
