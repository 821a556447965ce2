"""Decoding for decoder-only language models: greedy, temperature, top-k, top-p, KV cache, batches.

Introduced in Chapter 06 (used again in Chapters 11 and 13). Each step turns the last position's
logits z into a distribution and picks a token:

    greedy        w = argmax_j z_j
    temperature   p_j = softmax(z / τ)_j       τ < 1 sharpens, τ > 1 flattens
    top-k         keep the k largest z_j, renormalise
    top-p         keep the smallest set S of most likely tokens with Σ_{j∈S} p_j ≥ p, renormalise

With a KV cache each step feeds only the newest token and reuses the keys and values of all
earlier positions, so a step costs O(T) attention instead of recomputing the whole O(T²) prefix.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Logits (..., V) with everything outside the k largest set to -inf (ties at the k-th kept)."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"top_k must be a positive int; got {k!r}")
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1): the k-th largest logit
    return logits.masked_fill(logits < kth, float("-inf"))  # (..., V)


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the smallest most-likely set whose probability mass reaches ``p``.

    A token is dropped when the mass of the tokens ranked above it already reaches p, so the most
    likely token always survives and the kept set is minimal.
    """
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be a float in (0, 1]; got {p!r}")
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (..., V)
    probs = torch.softmax(sorted_logits, dim=-1)  # (..., V)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # (..., V): mass ranked strictly above
    drop_sorted = mass_before >= p  # (..., V)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # (..., V) original order
    return logits.masked_fill(drop, float("-inf"))  # (..., V)


def next_token_distribution(logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                            top_p: float | None = None) -> Tensor:
    """Probabilities (B, V) after temperature, then top-k, then top-p (the order GPT-2 used)."""
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature <= 0:
        raise ValueError(f"temperature must be a number > 0 (use greedy=True for argmax); got {temperature!r}")
    logits = logits.float() / temperature  # (B, V)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)  # (B, V)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)  # (B, V)
    return torch.softmax(logits, dim=-1)  # (B, V)


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Batch prompts of different lengths: (ids (B, T), attention_mask (B, T)), padding on the LEFT.

    Why left: generation appends at the right end, so every row's newest token must sit in the
    last column; the mask tells attention to ignore the padding and positions to skip it.
    """
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("left_pad needs at least one prompt and no empty prompt")
    T = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), T), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(sequences), T), dtype=torch.long)  # (B, T)
    for row, seq in enumerate(sequences):
        ids[row, T - len(seq):] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, T - len(seq):] = 1
    return ids, mask


def _logits(model: nn.Module, idx: Tensor, mask: Tensor | None, past, use_cache: bool):
    """Last-position logits (B, V) and the new cache, from a GPT-like ``run`` or a plain forward."""
    if hasattr(model, "run"):
        out = model.run(idx, attention_mask=mask, past_key_values=past, use_cache=use_cache)
        return out.logits[:, -1, :], out.past_key_values  # (B, V)
    if mask is not None and not bool(mask.all()):
        raise ValueError("padded batches need a model with a run(..., attention_mask=...) method")
    out = model(idx)
    logits = out[0] if isinstance(out, tuple) else out  # (B, T, V)
    return logits[:, -1, :], None


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    stop_tokens: Iterable[int] | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    attention_mask: Tensor | None = None,
    pad_id: int = 0,
) -> Tensor:
    """Extend ``idx`` (B, T) by up to ``max_new_tokens`` tokens; returns (B, T + n_generated).

    Args:
        greedy: argmax instead of sampling (temperature, top_k, top_p are then ignored).
        stop_tokens: a row that emits one of these is finished (the stop token is kept); later
            columns of a finished row hold ``pad_id``; the loop ends when every row has finished.
        use_cache: reuse keys/values (needs the model's ``run``); identical tokens to use_cache=False.
        generator: a torch.Generator for reproducible sampling.
        attention_mask: (B, T) 1/0 for left-padded prompts (see :func:`left_pad`).
    The context is cropped to the model's ``config.block_size`` (the cache is then dropped, since
    learned absolute positions shift when the window slides). The model runs in eval mode.
    """
    if not isinstance(idx, Tensor) or idx.dim() != 2 or idx.dtype != torch.long:
        raise ValueError(f"idx must be an int64 tensor of shape (B, T); got "
                         f"{getattr(idx, 'dtype', type(idx).__name__)} {tuple(getattr(idx, 'shape', ()))}")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0; got {max_new_tokens!r}")
    if attention_mask is not None and attention_mask.shape != idx.shape:
        raise ValueError(f"attention_mask must have the shape of idx {tuple(idx.shape)}; "
                         f"got {tuple(attention_mask.shape)}")
    if not greedy:  # validate once, before any model call
        next_token_distribution(torch.zeros(1, 2), temperature=temperature, top_k=top_k, top_p=top_p)
    stops = torch.tensor(sorted(set(stop_tokens or ())), dtype=torch.long, device=idx.device)
    block_size = getattr(getattr(model, "config", None), "block_size", None)
    use_cache = use_cache and hasattr(model, "run")

    was_training = model.training
    model.eval()
    mask = attention_mask.long() if attention_mask is not None else None
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)  # (B,)
    past = None
    try:
        for _ in range(max_new_tokens):
            too_long = block_size is not None and idx.shape[1] > block_size
            if past is not None and not too_long:  # feed only the newest token
                logits, past = _logits(model, idx[:, -1:], mask, past, use_cache=True)
            else:
                ctx = idx[:, -block_size:] if too_long else idx  # (B, <= block_size)
                ctx_mask = None if mask is None else mask[:, -ctx.shape[1]:]
                logits, past = _logits(model, ctx, ctx_mask, None, use_cache=use_cache and not too_long)
            if greedy:
                nxt = logits.argmax(dim=-1)  # (B,)
            else:
                probs = next_token_distribution(logits, temperature=temperature, top_k=top_k, top_p=top_p)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
            nxt = torch.where(finished, torch.full_like(nxt, pad_id), nxt)  # (B,)
            idx = torch.cat([idx, nxt[:, None]], dim=1)  # (B, T + 1)
            if mask is not None:
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # (B, T + 1)
            if stops.numel():
                finished |= torch.isin(nxt, stops)
                if bool(finished.all()):
                    break
    finally:
        model.train(was_training)
    return idx
