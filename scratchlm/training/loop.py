"""The one training loop every chapter uses (introduced in Chapter 06).

``train(model, get_batch, loss_fn, cfg)`` runs AdamW (decay / no-decay parameter groups) or, with
``optimizer="muon"``, Muon for the hidden matrices and AdamW for the rest; a linear warm-up followed by
cosine decay of the learning rate (or warmup-stable-decay, ``schedule="wsd"``), gradient clipping, gradient accumulation,
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

What the loop guards against (each raises before the harm is done):

* before step 1 (:mod:`scratchlm.training.preflight`): an out-of-range or non-JSON config, a
  checkpoint location that cannot be written, a first batch the model's ``validate_inputs``
  rejects, and a resume whose batch shape, schedule, optimizer settings or model differ from the
  run that wrote the checkpoint;
* every step: a batch the model rejects (``model.validate_inputs(batch)``, outside ``forward`` so
  that ``forward`` compiles without graph breaks), and a NaN/inf loss or gradient norm, which stops
  the run (or skips the step) *before* ``optimizer.step()`` writes NaN into the weights.

Host syncs: the per-step loss and gradient norm stay on the device and are copied to the history in
one transfer every ``log_every`` steps (and before evaluations, saves and the end), so the GPU is
not stalled waiting for the CPU each step. The non-finite check is the one per-step sync left
(``nonfinite="off"`` removes it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..models.base import token_cross_entropy
from ..runtime.profiles import capped, step_cap
from .checkpoint import load_checkpoint, read_checkpoint_metadata, save_checkpoint
from .config import TrainConfig, TrainHistory
from .distributed import all_ranks_ok, grad_sync_context, is_main_process, unwrap_model
from .optim import build_optimizer, lr_at
from .preflight import (
    check_checkpoint_writable,
    check_config_json,
    fingerprint_differences,
    training_fingerprint,
)

__all__ = ["TrainConfig", "TrainHistory", "autocast_context", "causal_lm_loss", "evaluate", "train"]


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


def _input_validator(model: nn.Module, enabled: bool) -> Callable[[Any], Any] | None:
    """The (unwrapped) model's ``validate_inputs`` method, if it has one and checks are enabled."""
    if not enabled:
        return None
    check = getattr(unwrap_model(model), "validate_inputs", None)
    return check if callable(check) else None


@torch.no_grad()
def evaluate(model: nn.Module, get_batch: Callable, loss_fn: Callable, split: str, indices: Iterable[int],
             *, autocast: str = "auto", validate_inputs: bool = True) -> float:
    """Mean of ``loss_fn(model, get_batch(split, i))`` over ``indices``, in eval mode, no gradients.

    Each batch first goes through ``model.validate_inputs`` when the model has one (and
    ``validate_inputs`` is true). The model's train/eval mode is restored even if a batch or the
    loss raises, so a failed evaluation does not leave dropout switched off for the training after.
    """
    was_training = model.training
    device = _model_device(model)
    check = _input_validator(model, validate_inputs)
    losses = []
    model.eval()
    try:
        for i in indices:
            batch = get_batch(split, i)
            if check is not None:
                check(batch)
            with autocast_context(device, autocast):
                losses.append(loss_fn(model, batch).float())  # ()
    finally:
        model.train(was_training)
    if not losses:
        raise ValueError("evaluate() got no indices to evaluate")
    return torch.stack(losses).mean().item()  # (n,) -> float


def _grad_norm(params: list[nn.Parameter], grad_clip: float, device: torch.device) -> torch.Tensor:
    """Global L2 norm of the gradients before clipping (clipping them to ``grad_clip`` when > 0)."""
    if grad_clip > 0:
        return torch.nn.utils.clip_grad_norm_(params, grad_clip)  # ()
    # Still report the norm without clipping: it is the best early warning of a diverging run.
    norms = [p.grad.norm() for p in params if p.grad is not None]
    if not norms:
        return torch.zeros((), device=device)
    return torch.linalg.vector_norm(torch.stack(norms))  # (n,) -> ()


def _resume(cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, fingerprint: dict[str, Any],
            history: TrainHistory) -> int:
    """Load ``cfg.checkpoint_path`` after checking it belongs to this run; return its step."""
    path = cfg.checkpoint_path
    doc = read_checkpoint_metadata(path)  # header only: refuse before any tensor is read
    for key in ("history", "fingerprint"):
        if key not in doc:
            raise CheckpointError(path, f"metadata field {key!r} missing: train(resume=True) needs a checkpoint "
                                        f"that train() wrote, not one from save_checkpoint() alone")
    differences = fingerprint_differences(doc["fingerprint"], fingerprint)
    if differences:
        raise ValueError(f"refusing to resume from {path}: this run differs from the one that wrote it\n  "
                         + "\n  ".join(differences)
                         + "\nRestore these settings, or start a new run (another checkpoint_path, or resume=False).")
    if doc["step"] > cfg.max_steps:
        raise ValueError(f"refusing to resume from {path}: it is at step {doc['step']}, past "
                         f"TrainConfig.max_steps={cfg.max_steps}")
    try:
        restored = TrainHistory.from_dict(doc["history"])
    except TypeError as exc:
        raise CheckpointError(path, f"metadata field 'history' is malformed: {exc}") from exc
    doc = load_checkpoint(path, model, optimizer)
    for name, value in restored.to_dict().items():
        setattr(history, name, value)
    return doc["step"]


def _nonfinite_message(done: int, loss: float, norm: float) -> str:
    what = "loss" if not math.isfinite(loss) else "gradient norm"
    return (f"non-finite {what} at step {done} (mean loss {loss}, grad norm {norm}); the update was not applied, "
            f"so the parameters are those after step {done - 1}. Lower learning_rate, lengthen warm-up or check "
            f"the batch; TrainConfig.nonfinite='skip' skips such steps instead of stopping")


def train(
    model: nn.Module,
    get_batch: Callable[[str, int], Any],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    cfg: TrainConfig,
    *,
    history: TrainHistory | None = None,
    param_groups: Sequence[Mapping[str, Any]] | None = None,
    on_step: Callable[[int], None] | None = None,
    after_step: Callable[[int, nn.Module, TrainHistory], bool | None] | None = None,
) -> TrainHistory:
    """Train ``model`` for ``cfg.max_steps`` optimizer steps; return the loss history.

    Each step s: lr ← lr_at(s); for a < A: loss_a = loss_fn(model, get_batch("train", s·A + a));
    backward(loss_a / A) (so gradients are the mean over micro-batches); clip ‖g‖₂ ≤ grad_clip;
    optimizer step (``cfg.optimizer``, see :func:`scratchlm.training.build_optimizer`). With ``cfg.resume`` and an existing checkpoint the model, optimizer, RNG states,
    step and history are restored first and the loop continues where it stopped.

    ``model`` may be wrapped for data parallelism (DDP, FSDP2): micro-batches before the last of a
    step run without gradient sync, and only rank 0 shows progress and writes checkpoints (see
    :mod:`scratchlm.training.distributed`). A ``history`` passed in holds every completed step even
    when training stops with an error.

    ``param_groups`` (Chapter 09): optimise these groups instead of all trainable parameters, each
    at lr(step) · its ``lr_scale`` (:class:`~scratchlm.training.optim.ScaledAdamW` applies the scale,
    as ``MuonAdamW`` does; :func:`scratchlm.finetune.configure_finetuning` makes the groups). ``on_step(step)`` is called before
    each step (0-based, also the first step after a resume) and may switch ``requires_grad`` on
    (gradual unfreezing); it must depend on ``step`` alone, like ``get_batch``.

    Under a step cap (``SCRATCHLM_MAX_STEPS``, a dry run) the run stops after at most that many steps
    and evaluates on at most that many batches (``max_steps`` and ``eval_batches`` are capped).

    ``after_step(done, model, history)``, when given, is called after every optimizer step (after that
    step's evaluation and checkpoint) with the number of steps done, the ``model`` passed in and the
    history so far (its per-step losses reach it every ``log_every`` steps). A true return ends training there (early
    stopping, e.g. once a target loss is reached): the history ends at that step, and with a
    ``checkpoint_path`` a checkpoint of that step is written unless one was just saved. In a
    distributed run one rank asking to stop stops them all.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"train() expects an nn.Module; got {type(model).__name__}")
    if not callable(get_batch) or not callable(loss_fn):
        raise TypeError("train() expects callables get_batch(split, index) and loss_fn(model, batch)")
    if on_step is not None and not callable(on_step):
        raise TypeError(f"on_step must be a callable on_step(step) or None; got {type(on_step).__name__}")
    if after_step is not None and not callable(after_step):
        raise TypeError(f"train() expects after_step to be None or a callable (done, model, history) -> bool; "
                        f"got {type(after_step).__name__}")
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"train() expects a TrainConfig; got {type(cfg).__name__}")
    from tqdm.auto import tqdm

    # ---- pre-flight: everything that can be checked before step 1 --------------------------------
    cfg.check()  # fields may have been reassigned since construction
    if step_cap() is not None:  # a dry run: the caller's cfg is left untouched
        cfg = dataclasses.replace(cfg, max_steps=capped(cfg.max_steps), eval_batches=capped(cfg.eval_batches))
    check_config_json(cfg)
    main = is_main_process()
    if cfg.checkpoint_path and main:
        check_checkpoint_writable(cfg.checkpoint_path)
    core = unwrap_model(model)  # the module whose parameters, config and checkpoints we use
    device = _model_device(core)
    check_inputs = _input_validator(core, cfg.validate_inputs)
    first = get_batch("train", 0)  # step 1's first micro-batch (pure: the same batch on every resume)
    if check_inputs is not None:
        check_inputs(first)
    fingerprint = training_fingerprint(cfg, first, core, param_groups)
    history = history if history is not None else TrainHistory()
    optimizer = build_optimizer(core, cfg, param_groups)
    start = 0
    if cfg.resume and Path(cfg.checkpoint_path).is_file():
        start = _resume(cfg, core, optimizer, fingerprint, history)  # restores the RNGs: after get_batch
    runner = torch.compile(model) if cfg.compile else model  # checkpoints always use `core`
    A = cfg.grad_accum_steps
    # clipped together, in the model's parameter order (the norm's float sum does not depend on how
    # the optimizer happens to group them)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    params = [p for p in core.parameters() if id(p) in in_optimizer]
    pending: list[tuple[int, float, torch.Tensor, torch.Tensor]] = []  # (step, lr, loss sum, norm) not yet logged

    def flush() -> None:
        """Copy the pending steps' losses and norms to the history in one device-to-host transfer."""
        if not pending:
            return
        values = torch.stack([torch.stack([loss, norm.float()]) for _, _, loss, norm in pending]).tolist()  # (k, 2)
        for (done, lr, _, _), (loss_sum, norm) in zip(pending, values, strict=True):
            history.steps.append(done)
            history.train_loss.append(loss_sum / A)  # divided on the host: the same float as .item() / A
            history.lr.append(lr)
            history.grad_norm.append(norm)
        pending.clear()

    def run_eval(done: int) -> None:
        t0 = time.perf_counter()
        history.eval_steps.append(done)
        history.val_loss.append(evaluate(runner, get_batch, loss_fn, "val", range(cfg.eval_batches),
                                         autocast=cfg.autocast, validate_inputs=cfg.validate_inputs))
        if cfg.eval_train:  # indices past the last training micro-batch: batches never trained on
            first_unused = cfg.max_steps * A
            history.eval_train_loss.append(evaluate(runner, get_batch, loss_fn, "train",
                                                    range(first_unused, first_unused + cfg.eval_batches),
                                                    autocast=cfg.autocast, validate_inputs=cfg.validate_inputs))
        history.eval_time_s += time.perf_counter() - t0

    def save(done: int) -> None:
        save_checkpoint(cfg.checkpoint_path, core, optimizer, step=done,
                        metadata={"history": history.to_dict(), "config": asdict(cfg), "fingerprint": fingerprint})

    if start == 0 and cfg.eval_at_start and cfg.eval_every:
        run_eval(0)
    model.train()
    bar = tqdm(range(start, cfg.max_steps), initial=start, total=cfg.max_steps,
               disable=not (cfg.progress and main), desc="train", mininterval=0.5)
    try:
        for step in bar:
            t0 = time.perf_counter()
            if on_step is not None:
                on_step(step)
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr  # an optimizer with per-group lr_scale applies it in its step
            loss_sum = torch.zeros((), device=device)  # ()
            for micro in range(A):
                index = step * A + micro
                if index == 0:
                    batch, first = first, None  # fetched and validated in the pre-flight
                else:
                    batch = get_batch("train", index)
                    if check_inputs is not None:
                        check_inputs(batch)
                # DDP/FSDP: no gradient all-reduce until the last micro-batch of the step.
                with grad_sync_context(model, sync=micro == A - 1):
                    with autocast_context(device, cfg.autocast):
                        loss = loss_fn(runner, batch)  # ()
                    (loss / A).backward()
                loss_sum += loss.detach().float()
            norm = _grad_norm(params, cfg.grad_clip, device)  # ()
            done = step + 1
            apply = True
            if cfg.nonfinite != "off":
                # The one host sync per step: whether to apply the update must be known before
                # optimizer.step() writes it into the weights. AND-ed over ranks so all decide alike.
                if not bool(all_ranks_ok(torch.isfinite(loss_sum) & torch.isfinite(norm))):
                    if cfg.nonfinite == "raise":
                        optimizer.zero_grad(set_to_none=True)
                        raise FloatingPointError(_nonfinite_message(done, loss_sum.item() / A, float(norm)))
                    apply = False
                    history.skipped_steps.append(done)
            if apply:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            pending.append((done, lr, loss_sum, norm))
            last = done == cfg.max_steps
            evaluating = bool(cfg.eval_every) and (done % cfg.eval_every == 0 or last)
            saving = bool(cfg.checkpoint_path) and main and (
                (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or last)
            if done % cfg.log_every == 0 or evaluating or saving or last:
                flush()
                if main and cfg.progress:
                    bar.set_postfix(loss=f"{history.train_loss[-1]:.4f}", lr=f"{lr:.2e}", refresh=False)
            history.train_time_s += time.perf_counter() - t0
            if evaluating:
                run_eval(done)
                if main and cfg.progress:
                    bar.set_postfix(loss=f"{history.train_loss[-1]:.4f}", val=f"{history.val_loss[-1]:.4f}")
            if saving:
                save(done)
            if after_step is not None and _stop_requested(after_step(done, model, history), device) and not last:
                flush()
                if cfg.checkpoint_path and main and not saving:
                    save(done)
                break
    finally:
        bar.close()
        if pending:  # stopped by an error: keep the completed steps, but never hide that error
            with contextlib.suppress(Exception):
                flush()
    return history


def _stop_requested(answer: bool | None, device: torch.device) -> bool:
    """``after_step``'s answer, OR-ed over ranks in a distributed run (one rank stopping alone would hang)."""
    return not bool(all_ranks_ok(torch.tensor(not answer, device=device)))


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
