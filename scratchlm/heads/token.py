"""Token classification (POS tagging, NER): a tag per word, by softmax or by a CRF.

The encoder gives a vector per sub-word token; a linear layer turns it into emission scores
e (B, T, K). With sub-word tokenisation a word like "unbelievable" becomes several tokens, and
only the *first* sub-word of each word carries the word's tag; the others (and [CLS], [SEP],
padding) carry −100.

- Softmax: each labelled position on its own, cross-entropy
  L = −(1/N) Σ_{(b,t): y_bt ≠ −100} log softmax(e_bt)[y_bt].
- CRF: the tag sequence as a whole, L = log Z(x) − score(x, y) (see :mod:`scratchlm.heads.crf`).
  The chain must run over the *labelled positions only*: its transitions model "tag of word t−1
  → tag of word t". Run over all sub-words, a transition would sit between "un" and "##believ"
  (pieces of one word, with no tag) and the word-to-word transition would be split across
  unlabelled positions. So each row's labelled positions are gathered into a compact,
  left-aligned sequence (in order) and the CRF runs on that — see :func:`gather_labelled`.

Introduced in Chapter 09.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..constants import IGNORE_INDEX
from ..models.outputs import ModelOutput
from .base import (
    EncoderHead,
    check_class_labels,
    check_keys,
    check_positive_int,
    validate_class_labels,
    validate_ids,
)
from .crf import CRF

CRF_REDUCTIONS = ("mean", "sum", "token_mean")


def gather_labelled(values: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Move each row's kept positions to the front, in order: (compact (B, T, ...), mask (B, T)).

    A stable sort of the key ``not keep`` puts the kept positions first without changing their
    order; the compact mask is position < (number kept). The width stays T (no host sync to
    find the longest row); positions past a row's count hold whatever was dropped — masked.
    Introduced in Chapter 09.
    """
    if not isinstance(keep, Tensor) or keep.dtype != torch.bool or keep.shape != values.shape[:2]:
        raise ValueError(f"keep must be a bool tensor of shape {tuple(values.shape[:2])}")
    order = torch.sort((~keep).to(torch.int32), dim=1, stable=True).indices  # (B, T)
    index = order.reshape(order.shape + (1,) * (values.dim() - 2)).expand_as(values)  # (B, T, ...)
    compact = values.gather(1, index)  # (B, T, ...)
    T = keep.shape[1]
    mask = torch.arange(T, device=keep.device) < keep.sum(dim=1, keepdim=True)  # (B, T)
    return compact, mask


class TokenClassifier(EncoderHead):
    """Encoder + dropout + linear layer → emissions (B, T, num_tags); softmax or CRF on top.

    ``crf=True`` adds a fresh :class:`CRF`; pass a :class:`CRF` instance to use constraints (BIO).
    ``crf_reduction`` is how the CRF's per-sentence NLLs are averaged ("mean" over sentences with
    at least one label, "sum", or "token_mean" over labelled words). Labels are (B, T), −100 at
    positions without a tag. ``logits`` are the emissions in both modes. Introduced in Chapter 09.
    """

    def __init__(self, encoder: nn.Module, hidden_size: int, num_tags: int, crf: bool | CRF = False,
                 dropout: float = 0.1, crf_reduction: str = "mean") -> None:
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("num_tags", num_tags)
        if crf_reduction not in CRF_REDUCTIONS:
            raise ValueError(f"crf_reduction must be one of {CRF_REDUCTIONS}; got {crf_reduction!r}")
        if isinstance(crf, CRF) and crf.num_tags != num_tags:
            raise ValueError(f"the CRF has {crf.num_tags} tags but num_tags={num_tags}")
        if not isinstance(crf, (bool, CRF)):
            raise TypeError(f"crf must be a bool or a CRF; got {type(crf).__name__}")
        super().__init__(encoder, hidden_size, dropout)
        self.num_tags = num_tags
        self.classifier = nn.Linear(hidden_size, num_tags)
        self.crf = crf if isinstance(crf, CRF) else (CRF(num_tags) if crf else None)
        self.crf_reduction = crf_reduction

    def emissions(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                  token_type_ids: Tensor | None = None) -> Tensor:
        """Per-token tag scores (B, T, num_tags)."""
        out = self.encode_tokens(input_ids, attention_mask, token_type_ids)
        return self.classifier(self.dropout(out.last_hidden_state))  # (B, T, K)

    def crf_nll(self, emissions: Tensor, labels: Tensor) -> Tensor:
        """CRF loss over the labelled positions of each row, reduced by ``crf_reduction``.

        Rows without any label add nothing (their compact sequence would be empty, which a CRF
        cannot score: a dummy first position is switched on and its NLL discarded).
        """
        keep = labels != IGNORE_INDEX  # (B, T)
        em, mask = gather_labelled(emissions, keep)  # (B, T, K), (B, T)
        tags, _ = gather_labelled(labels, keep)  # (B, T)
        has_labels = mask[:, 0]  # (B,)
        run_mask = mask.clone()  # (B, T)
        run_mask[:, 0] = True
        tags = tags.clamp(min=0)  # (B, T): the dummy position's −100 made a valid index
        per_row = self.crf.nll(em, tags, run_mask, reduction="none")  # (B,)
        per_row = torch.where(has_labels, per_row, torch.zeros_like(per_row))  # (B,)
        if self.crf_reduction == "sum":
            return per_row.sum()  # ()
        denominator = has_labels.sum() if self.crf_reduction == "mean" else mask.sum()  # ()
        return per_row.sum() / denominator.clamp(min=1).to(per_row.dtype)  # ()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, labels: Tensor | None = None) -> ModelOutput:
        emissions = self.emissions(input_ids, attention_mask, token_type_ids)  # (B, T, K)
        loss = None
        if labels is not None:
            check_class_labels(labels, self.num_tags, tuple(input_ids.shape))
            if self.crf is None:
                loss = F.cross_entropy(emissions.flatten(0, 1).float(), labels.flatten().long(),
                                       ignore_index=IGNORE_INDEX)  # () mean over labelled tokens
            else:
                loss = self.crf_nll(emissions, labels.long())  # ()
        return ModelOutput(logits=emissions, loss=loss)

    @torch.no_grad()
    def decode(self, input_ids: Tensor, attention_mask: Tensor | None = None,
               token_type_ids: Tensor | None = None, label_mask: Tensor | None = None,
               labels: Tensor | None = None) -> list[list[int]]:
        """Predicted tags, one list per row, for the positions to tag, in order.

        Positions to tag: ``label_mask`` (B, T) bool (e.g. first sub-words), else ``labels != −100``,
        else ``attention_mask``, else every position. Softmax: argmax per position; CRF: Viterbi
        over the compact sequence of those positions (as in training).
        """
        emissions = self.emissions(input_ids, attention_mask, token_type_ids)  # (B, T, K)
        if label_mask is None:
            label_mask = labels != IGNORE_INDEX if labels is not None else attention_mask
        if label_mask is None:
            label_mask = torch.ones(input_ids.shape, dtype=torch.bool, device=input_ids.device)  # (B, T)
        if not isinstance(label_mask, Tensor) or label_mask.shape != input_ids.shape \
                or label_mask.is_floating_point():
            raise ValueError(f"label_mask must be a bool or 0/1 tensor of shape {tuple(input_ids.shape)}")
        keep = label_mask.bool()  # (B, T)
        counts = keep.sum(dim=1).tolist()
        if self.crf is None:
            tags = emissions.argmax(dim=-1)  # (B, T)
            return [row[k].tolist() for row, k in zip(tags, keep, strict=True)]
        em, mask = gather_labelled(emissions, keep)  # (B, T, K), (B, T)
        run_mask = mask.clone()  # (B, T)
        run_mask[:, 0] = True  # rows with nothing to tag decode a dummy position, dropped below
        paths, _ = self.crf.viterbi(em, run_mask)  # (B, T)
        return [row[:n] for row, n in zip(paths.tolist(), counts, strict=True)]

    predict = decode

    def validate_inputs(self, batch: Mapping[str, Tensor]) -> None:
        """Value checks of a batch (host sync): ids, mask, integer labels (B, T) in [0, num_tags) or
        −100, −100 at every padded position, and at least one labelled position in the batch."""
        check_keys(batch, ("input_ids", "attention_mask", "token_type_ids", "labels"))
        validate_ids(batch)
        labels = batch.get("labels")
        if labels is None:
            return
        validate_class_labels(labels, self.num_tags, tuple(batch["input_ids"].shape))
        mask = batch.get("attention_mask")
        if mask is not None and bool(((labels != IGNORE_INDEX) & ~mask.bool()).any()):
            raise ValueError(f"labels at padded positions (attention_mask 0) must be {IGNORE_INDEX}")
