"""Text in, text out: batched greedy answers of a causal LM to text prompts (introduced in Chapter 11).

An instruction-tuned model is evaluated by what it *writes*: every prompt is encoded, the batch is
left-padded (so every row's last prompt token sits in the last column, see
:func:`~scratchlm.data.collate.left_pad`), :func:`~scratchlm.decoding.sampling.generate` continues
all rows at once with a KV cache, and each row's continuation is cut at its first end token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from ..data.collate import left_pad
from .sampling import generate


def respond(model: nn.Module, prompts: Sequence[str], encode: Callable[[str], list[int]],
            decode: Callable[[list[int]], str], end_id: int, *, max_new_tokens: int = 32,
            batch_size: int = 32, **generate_kwargs) -> list[str]:
    """The model's answer to each prompt: greedy by default, stopped at ``end_id`` (not included).

    Prompts longer than the model's context are cropped from the left by ``generate``. Extra keyword
    arguments go to :func:`generate` (``greedy=False, temperature=...`` to sample).
    """
    if isinstance(prompts, str):
        raise TypeError("respond expects a list of prompts, not one string")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    generate_kwargs.setdefault("greedy", True)
    device = next(model.parameters()).device
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = left_pad([encode(p) for p in prompts[start : start + batch_size]], end_id)  # (B, T)
        out = generate(model, ids.to(device), max_new_tokens, attention_mask=mask.to(device),
                       stop_tokens=[end_id], pad_id=end_id, **generate_kwargs)  # (B, T + n)
        for row in out[:, ids.shape[1]:].tolist():
            answers.append(decode(row[: row.index(end_id)] if end_id in row else row))
    return answers
