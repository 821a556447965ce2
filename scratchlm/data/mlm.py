"""BERT pretraining data: the 80/10/10 masked-LM rule and next-sentence pairs (introduced in Chapter 07).

Masked language modelling (Devlin et al., 2019) selects a fraction ``p`` (15 %) of the non-special
tokens of every sequence. Of the selected positions, 80 % are replaced by ``[MASK]``, 10 % by a
token drawn uniformly from the vocabulary and 10 % are left unchanged; the label is the original
token at selected positions and ``-100`` (ignored by ``F.cross_entropy``) everywhere else, so that

    L_MLM = - (1 / |M|) * sum_{i in M} log p(x_i | x_tilde)

runs over the selected set ``M`` only. Next-sentence prediction pairs a sentence A with its true
successor B (label 0, "IsNext", the Hugging Face convention) or a random sentence from another
document (label 1, "NotNext"), 50 % each.

The T5 span-corruption collator lives in :mod:`scratchlm.data.span_corruption` (Chapter 08).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from ..constants import IGNORE_INDEX
from .collate import pad_sequences


def _check_fraction(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1]; got {value!r}")


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: Iterable[int] = (),
    attention_mask: torch.Tensor | None = None,
    mlm_probability: float = 0.15,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the 80/10/10 rule; return ``(masked_input_ids, labels)``, both (B, T) int64.

    Each non-special, non-padding position is selected independently with probability
    ``mlm_probability``; a selected position becomes ``[MASK]`` with probability ``mask_fraction``,
    a uniformly random token with probability ``random_fraction``, and stays unchanged otherwise.
    ``labels`` holds the original token at selected positions and ``-100`` elsewhere.
    Random replacement tokens are drawn from the non-special ids so that a random token is never
    ``[CLS]``/``[SEP]``/``[PAD]``.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input_ids must be an int64/int32 tensor; got {type(input_ids).__name__} "
                        f"{getattr(input_ids, 'dtype', '')}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (B, T); got {tuple(input_ids.shape)}")
    if not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an int >= 2; got {vocab_size!r}")
    if not isinstance(mask_id, int) or not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id must be an int in [0, vocab_size={vocab_size}); got {mask_id!r}")
    _check_fraction("mlm_probability", mlm_probability)
    _check_fraction("mask_fraction", mask_fraction)
    _check_fraction("random_fraction", random_fraction)
    if mask_fraction + random_fraction > 1.0 + 1e-9:
        raise ValueError(f"mask_fraction + random_fraction must be <= 1; got {mask_fraction} + {random_fraction}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must have shape {tuple(input_ids.shape)}; got {tuple(attention_mask.shape)}")

    ids = input_ids.long()  # (B, T)
    special = sorted(set(int(s) for s in special_ids) | {mask_id})
    special_t = torch.tensor(special, dtype=torch.long, device=ids.device)
    is_special = torch.isin(ids, special_t)  # (B, T) True where the token is never a target
    if attention_mask is not None:
        is_special |= attention_mask == 0  # padding is never a target either

    u = torch.rand(ids.shape, generator=generator, device=ids.device)  # (B, T) selection draw
    selected = (u < mlm_probability) & ~is_special  # (B, T) the set M
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))  # (B, T)

    # One uniform draw per position decides the action for a selected position.
    action = torch.rand(ids.shape, generator=generator, device=ids.device)  # (B, T)
    to_mask = selected & (action < mask_fraction)  # (B, T) 80 %: [MASK]
    to_random = selected & (action >= mask_fraction) & (action < mask_fraction + random_fraction)  # 10 %

    allowed = torch.ones(vocab_size, dtype=torch.bool, device=ids.device)  # (V,)
    allowed[special_t[special_t < vocab_size]] = False
    allowed_ids = allowed.nonzero().squeeze(1)  # (V',) ordinary tokens a random replacement may take
    pick = torch.randint(len(allowed_ids), ids.shape, generator=generator, device=ids.device)  # (B, T)
    random_tokens = allowed_ids[pick]  # (B, T)

    masked = ids.clone()  # (B, T)
    masked[to_mask] = mask_id
    masked[to_random] = random_tokens[to_random]
    return masked, labels


def encode_pair(
    a_ids: Sequence[int],
    b_ids: Sequence[int] | None,
    *,
    cls_id: int,
    sep_id: int,
    max_len: int,
) -> tuple[list[int], list[int]]:
    """``[CLS] A [SEP] B [SEP]`` and its token-type ids (0 for A, 1 for B), truncated to ``max_len``.

    Truncation removes tokens from the end of the longer of A and B, one at a time (BERT's
    ``truncate_seq_pair``), so both segments keep their beginning.
    """
    n_special = 3 if b_ids is not None else 2
    if not isinstance(max_len, int) or max_len <= n_special:
        raise ValueError(f"max_len must be an int > {n_special} (room for the special tokens); got {max_len!r}")
    a, b = list(a_ids), list(b_ids) if b_ids is not None else []
    while len(a) + len(b) > max_len - n_special:
        if len(a) >= len(b):
            a.pop()
        else:
            b.pop()
    ids = [cls_id, *a, sep_id]
    types = [0] * len(ids)
    if b_ids is not None:
        ids += [*b, sep_id]
        types += [1] * (len(b) + 1)
    return ids, types


@dataclass
class NSPExample:
    """One next-sentence-prediction example (Chapter 07)."""

    a: list[int]  # token ids of sentence A
    b: list[int]  # token ids of sentence B
    is_random_next: int  # 0: B really follows A ("IsNext"); 1: B comes from another document


def build_nsp_pairs(
    documents: Sequence[Sequence[Sequence[int]]],
    *,
    rng: random.Random,
    random_next_probability: float = 0.5,
) -> list[NSPExample]:
    """Pair every sentence with its successor (label 0) or with a random sentence of another document (1).

    ``documents`` is a list of documents, each a list of tokenised sentences in reading order.
    Documents with fewer than two sentences give no pairs (a true successor is needed half the
    time) but still serve as a source of random sentences.
    """
    _check_fraction("random_next_probability", random_next_probability)
    if not isinstance(rng, random.Random):
        raise TypeError(f"rng must be a random.Random; got {type(rng).__name__}")
    docs = [list(d) for d in documents if len(d) > 0]
    if len(docs) < 2:
        raise ValueError(f"build_nsp_pairs needs at least 2 non-empty documents; got {len(docs)}")
    pairs: list[NSPExample] = []
    for d, doc in enumerate(docs):
        for i in range(len(doc) - 1):
            if rng.random() < random_next_probability:
                other = rng.randrange(len(docs) - 1)
                other += other >= d  # any document but this one
                b = rng.choice(docs[other])
                pairs.append(NSPExample(list(doc[i]), list(b), 1))
            else:
                pairs.append(NSPExample(list(doc[i]), list(doc[i + 1]), 0))
    return pairs


@dataclass
class MLMCollator:
    """Pad a batch of sequences (or NSP pairs) and apply :func:`mask_tokens` (Chapter 07).

    Call it with a list of token-id lists (MLM only) or a list of :class:`NSPExample` (MLM + NSP).
    Returns a dict of (B, T) tensors ``input_ids, token_type_ids, attention_mask, labels`` and, for
    NSP examples, ``next_sentence_label`` (B,).
    """

    vocab_size: int  # size of the vocabulary random replacements are drawn from
    pad_id: int  # id used for padding (attention_mask 0 there)
    cls_id: int  # [CLS], prepended to every sequence
    sep_id: int  # [SEP], closes every segment
    mask_id: int  # [MASK]
    max_len: int = 128  # longest sequence after adding special tokens
    mlm_probability: float = 0.15  # fraction of non-special tokens selected for prediction
    mask_fraction: float = 0.8  # of the selected: replaced by [MASK]
    random_fraction: float = 0.1  # of the selected: replaced by a random token
    extra_special_ids: tuple[int, ...] = field(default_factory=tuple)  # more ids never to mask ([UNK]…)

    def __post_init__(self) -> None:
        for name in ("pad_id", "cls_id", "sep_id", "mask_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ValueError(f"{name} must be an int in [0, vocab_size={self.vocab_size}); got {value!r}")

    @property
    def special_ids(self) -> tuple[int, ...]:
        return (self.pad_id, self.cls_id, self.sep_id, self.mask_id, *self.extra_special_ids)

    def __call__(self, batch: Sequence, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        if len(batch) == 0:
            raise ValueError("MLMCollator got an empty batch")
        nsp = isinstance(batch[0], NSPExample)
        rows, types = [], []
        for ex in batch:
            if nsp:
                ids, tt = encode_pair(ex.a, ex.b, cls_id=self.cls_id, sep_id=self.sep_id, max_len=self.max_len)
            elif isinstance(ex, (list, tuple)):
                ids, tt = encode_pair(ex, None, cls_id=self.cls_id, sep_id=self.sep_id, max_len=self.max_len)
            else:
                raise TypeError(f"MLMCollator expects lists of token ids or NSPExample; got {type(ex).__name__}")
            rows.append(ids)
            types.append(tt)
        input_ids, attention_mask = pad_sequences(rows, self.pad_id)  # (B, T) each
        token_type_ids, _ = pad_sequences(types, 0)  # (B, T)
        masked, labels = mask_tokens(
            input_ids, mask_id=self.mask_id, vocab_size=self.vocab_size, special_ids=self.special_ids,
            attention_mask=attention_mask, mlm_probability=self.mlm_probability,
            mask_fraction=self.mask_fraction, random_fraction=self.random_fraction, generator=generator,
        )
        out = {"input_ids": masked, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
               "labels": labels}
        if nsp:
            out["next_sentence_label"] = torch.tensor([ex.is_random_next for ex in batch], dtype=torch.long)
        return out
