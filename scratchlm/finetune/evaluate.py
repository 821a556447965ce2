"""Predictions and metrics of a fine-tuned head on a task split, and a fine-tuning run in one call.

* :func:`predict` — the model's outputs for every example of a split, in the split's order
  (batched in length order for speed, then put back).
* :func:`evaluate_task` — the metrics the literature reports per kind of task: accuracy, F1 of the
  positive class and MCC (classification); Pearson, Spearman (×100, as GLUE and MTEB print them) and
  MSE (regression and pairs); word accuracy and per-tag accuracy (tagging), plus the share of
  predicted tag bigrams never seen in the training data (what a CRF is meant to prevent).
* :func:`finetune` — configure freezing, build the pure ``get_batch``, run
  :func:`scratchlm.training.train` for some epochs, evaluate: the loop of Chapter 09 in one call.

Introduced in Chapter 09.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import metrics as M
from ..constants import IGNORE_INDEX
from ..training import TrainConfig, TrainHistory, train
from .batching import collate_rows, make_task_get_batch, sorted_batches
from .data import TaskData
from .freezing import FinetunePlan, configure_finetuning


def model_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``loss_fn`` for :func:`scratchlm.training.train`: the head's own loss on a collated batch."""
    return model(**batch).loss


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict(model: nn.Module, task: TaskData, split: str, *, batch_size: int = 64) -> Any:
    """Outputs for every example of ``task.splits[split]``, in order.

    classification → logits (N, K) array; regression / pair → scores (N,) array; tagging → a list
    of predicted tag-id lists, one per sentence (the head's ``decode``: argmax or Viterbi).
    The model runs in eval mode; its mode is restored afterwards.
    """
    if split not in task.splits:
        raise ValueError(f"task {task.name!r} has no split {split!r}; it has {sorted(task.splits)}")
    ds = task.splits[split]
    device = _model_device(model)
    was_training = model.training
    model.eval()
    results: list[Any] = [None] * len(ds)
    try:
        for idx in sorted_batches([int(n) for n in ds["length"]], batch_size):
            batch = {k: v.to(device) for k, v in collate_rows(ds[idx], task.pad_id).items()}
            if task.kind == "tagging":
                labels = batch.pop("labels")
                out = model.decode(**batch, label_mask=labels != IGNORE_INDEX)  # list of lists
            else:
                batch.pop("labels", None)
                out = model(**batch).logits.float().cpu().numpy()  # (B, K) or (B,)
            for i, row in zip(idx, out, strict=True):
                results[i] = row
    finally:
        model.train(was_training)
    if task.kind == "tagging":
        return results
    return np.stack(results)


def gold(task: TaskData, split: str) -> Any:
    """Gold labels of a split: class ids / scores as an array, or tag-id lists (first sub-words)."""
    labels = task.splits[split]["labels"]
    if task.kind == "tagging":
        return [[int(t) for t in row if int(t) != IGNORE_INDEX] for row in labels]
    return np.asarray([float(v) if task.kind in ("regression", "pair") else int(v) for v in labels])


def tag_bigrams(sequences: Sequence[Sequence[int]]) -> set[tuple[int, int]]:
    """The set of adjacent (tag, next tag) pairs in ``sequences``."""
    return {(a, b) for seq in sequences for a, b in zip(seq[:-1], seq[1:], strict=True)}


def unseen_transition_share(predicted: Sequence[Sequence[int]], seen: set[tuple[int, int]]) -> float:
    """Fraction of predicted adjacent tag pairs that never occur in ``seen`` (e.g. the training gold)."""
    pairs = [(a, b) for seq in predicted for a, b in zip(seq[:-1], seq[1:], strict=True)]
    if not pairs:
        return 0.0
    return sum(p not in seen for p in pairs) / len(pairs)


def evaluate_task(model: nn.Module, task: TaskData, split: str = "test", *, batch_size: int = 64,
                  return_predictions: bool = False) -> dict[str, Any]:
    """Metrics of ``model`` on a split (see the module docstring); optionally the predictions too."""
    pred = predict(model, task, split, batch_size=batch_size)
    y = gold(task, split)
    out: dict[str, Any] = {}
    if task.kind == "classification":
        labels = pred.argmax(axis=-1)
        out["accuracy"] = M.accuracy(y, labels)
        if task.num_labels == 2:
            out["f1"] = M.f1_score(y, labels, average="binary", pos_label=1)
        else:
            out["f1_macro"] = M.f1_score(y, labels, average="macro")
        out["mcc"] = M.matthews_corrcoef(y, labels)
        out["errors"] = int((labels != y).sum())
        pred_out = labels
    elif task.kind in ("regression", "pair"):
        out["pearson"] = 100.0 * M.pearson(pred, y)
        out["spearman"] = 100.0 * M.spearman(pred, y)
        out["mse"] = float(np.mean((pred - y) ** 2))
        pred_out = pred
    else:
        if any(len(p) != len(g) for p, g in zip(pred, y, strict=True)):
            raise RuntimeError("a sentence got a different number of predicted and gold tags")
        flat_p = np.concatenate([np.asarray(p) for p in pred])
        flat_y = np.concatenate([np.asarray(g) for g in y])
        out["accuracy"] = M.accuracy(flat_y, flat_p)
        out["per_tag_accuracy"] = {name: float((flat_p[flat_y == k] == k).mean())
                                   for k, name in enumerate(task.label_names) if (flat_y == k).any()}
        seen = tag_bigrams(gold(task, "train")) if "train" in task.splits else tag_bigrams(y)
        out["unseen_transitions"] = unseen_transition_share(pred, seen)
        out["words"] = int(flat_y.size)
        pred_out = pred
    if return_predictions:
        out["predictions"] = pred_out
        out["gold"] = y
    return out


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns."""

    history: TrainHistory
    metrics: dict[str, dict[str, Any]]  # split -> evaluate_task(...)
    plan: FinetunePlan
    steps: int
    examples_seen: int  # training examples processed (steps × batch, the last batch of an epoch smaller)
    train_seconds: float  # wall time of train() (its evaluations included)
    trainable_parameters: int  # at the end of training
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def examples_per_second(self) -> float:
        return self.examples_seen / self.train_seconds if self.train_seconds > 0 else math.nan


def finetune(model: nn.Module, task: TaskData, *, epochs: float = 1.0, batch_size: int = 16,
             learning_rate: float = 5e-5, warmup_fraction: float = 0.1, weight_decay: float = 0.01,
             strategy: str = "full", seed: int = 1337, bucket: bool = True, eval_splits: Sequence[str] = ("test",),
             eval_every: int = 0, eval_batches: int = 4, progress: bool = True, validate_inputs: bool = True,
             **strategy_kwargs: Any) -> FinetuneResult:
    """Fine-tune ``model`` (a head) on ``task.splits["train"]`` and evaluate it on ``eval_splits``.

    Steps = ⌈epochs × batches per epoch⌉; learning rate: linear warm-up over ``warmup_fraction``
    of the steps, cosine decay to 0; AdamW (β = 0.9, 0.999) with ``weight_decay`` on matrices;
    gradient clipping at 1.0 — the usual BERT fine-tuning recipe. ``strategy`` and
    ``strategy_kwargs`` go to :func:`configure_finetuning`. The batch order depends on ``seed``
    only (the caller seeds the model's initialisation and dropout).
    """
    if not isinstance(epochs, (int, float)) or isinstance(epochs, bool) or not epochs > 0:
        raise ValueError(f"epochs must be a positive number; got {epochs!r}")
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must lie in [0, 1); got {warmup_fraction!r}")
    get_batch = make_task_get_batch(task, batch_size, seed=seed, bucket=bucket, device=_model_device(model))
    per_epoch = get_batch.batches_per_epoch
    steps = max(1, math.ceil(epochs * per_epoch))
    plan = configure_finetuning(model, strategy, **strategy_kwargs)
    cfg = TrainConfig(max_steps=steps, learning_rate=learning_rate, min_lr=0.0,
                      warmup_steps=int(warmup_fraction * steps), weight_decay=weight_decay, beta1=0.9, beta2=0.999,
                      eps=1e-8, grad_clip=1.0, eval_every=eval_every, eval_batches=eval_batches,
                      eval_at_start=False, progress=progress, log_every=10, validate_inputs=validate_inputs)
    n_train = len(task.splits["train"])
    examples = (steps // per_epoch) * n_train + sum(
        len(b) for b in (get_batch("train", i)["labels"] for i in range((steps // per_epoch) * per_epoch, steps)))
    t0 = time.perf_counter()
    history = train(model, get_batch, model_loss, cfg, **plan.train_kwargs())
    seconds = time.perf_counter() - t0
    metrics = {split: evaluate_task(model, task, split) for split in eval_splits}
    return FinetuneResult(history, metrics, plan, steps, examples, seconds, plan.trainable_parameters())
