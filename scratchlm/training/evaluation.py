"""Held-out metrics of a pretrained BERT: masked-LM loss and accuracy, NSP accuracy (Chapter 07).

The training loop's :func:`~scratchlm.training.evaluate` averages the *loss* per batch. To compare
with baselines a chapter needs more: the MLM cross-entropy per masked token over all batches
together (batches hold different numbers of masked tokens, so a mean of batch means would weight
tokens unequally), the top-1 accuracy at the masked positions, and the NSP accuracy,

    L_MLM = −(1/|M|) Σ_{i∈M} log p(x_i | x̃),   acc_MLM = (1/|M|) Σ_{i∈M} [argmax p(· | x̃)_i = x_i],
    acc_NSP = (1/N) Σ_n [argmax p(· | pool_n) = y_n],

with M all selected positions of all evaluated batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import IGNORE_INDEX

__all__ = ["BertEvaluation", "evaluate_bert"]


@dataclass
class BertEvaluation:
    """Held-out MLM and NSP metrics (see the module docstring)."""

    mlm_loss: float  # nats per masked token
    mlm_acc: float  # top-1 accuracy at the masked positions
    nsp_acc: float  # next-sentence prediction accuracy
    n_masked: int  # |M|: masked positions evaluated
    n_pairs: int  # sentence pairs evaluated
    labels: list[int] = field(default_factory=list)  # the hidden tokens, in order (for baselines)


@torch.no_grad()
def evaluate_bert(model: nn.Module, get_batch: Callable[[str, int], dict[str, Any]], indices: Iterable[int] | int,
                  *, split: str = "val") -> BertEvaluation:
    """MLM loss/accuracy and NSP accuracy of a :class:`~scratchlm.models.BertForPreTraining`.

    ``get_batch(split, i)`` returns a collated dict (``input_ids``, ``token_type_ids``,
    ``attention_mask``, ``labels`` with −100 outside the masked set, ``next_sentence_label``), as
    :class:`~scratchlm.data.mlm.MLMCollator` builds it. ``indices`` is an iterable of batch indices or
    a count ``n`` (batches 0 … n−1). The model's train/eval mode is restored afterwards.
    """
    if isinstance(indices, int) and not isinstance(indices, bool):
        if indices < 1:
            raise ValueError(f"evaluate_bert needs at least one batch; got {indices}")
        indices = range(indices)
    was_training = model.training
    model.eval()
    nll = torch.zeros((), dtype=torch.float64)
    correct = total = nsp_correct = nsp_total = 0
    labels_seen: list[int] = []
    try:
        for i in indices:
            batch = get_batch(split, i)
            for key in ("labels", "next_sentence_label"):
                if key not in batch:
                    raise ValueError(f"evaluate_bert: batch {i} of split {split!r} has no {key!r}; "
                                     f"got keys {sorted(batch)}")
            out = model(**batch, logits_only_at_labels=False)
            selected = batch["labels"] != IGNORE_INDEX  # (B, T)
            logits = out.logits[selected].float()  # (m, V): the masked positions only
            targets = batch["labels"][selected]  # (m,)
            nll += F.cross_entropy(logits, targets, reduction="sum").double().cpu()
            correct += int((logits.argmax(-1) == targets).sum())
            total += int(selected.sum())
            labels_seen += targets.tolist()
            nsp_correct += int((out.nsp_logits.argmax(-1) == batch["next_sentence_label"]).sum())
            nsp_total += len(batch["next_sentence_label"])
    finally:
        model.train(was_training)
    if total == 0 or nsp_total == 0:
        raise ValueError("evaluate_bert found no masked positions or no sentence pairs to evaluate")
    return BertEvaluation(mlm_loss=float(nll) / total, mlm_acc=correct / total, nsp_acc=nsp_correct / nsp_total,
                          n_masked=total, n_pairs=nsp_total, labels=labels_seen)
