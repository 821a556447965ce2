"""Decoding for every model of the book: greedy, temperature, top-k, top-p, KV cache, batches, constraints.

Introduced in Chapter 06 (used again in Chapters 05, 08, 11 and 13). Each step turns the last
position's logits z into a distribution and picks a token:

    greedy        w = argmax_j z_j
    temperature   p_j = softmax(z / τ)_j       τ < 1 sharpens, τ > 1 flattens
    top-k         keep the k largest z_j, renormalise
    top-p         keep the smallest set S of most likely tokens with Σ_{j∈S} p_j ≥ p, renormalise

With a KV cache each step feeds only the newest token and reuses the keys and values of all
earlier positions, so a step costs O(T) attention instead of recomputing the whole O(T²) prefix.

One :func:`generate` serves decoder-only models (GPT: the prompt is continued, the result is prompt +
continuation) and encoder-decoders (T5, the Chapter 05 Transformer: the source is encoded once and
the decoder writes a target from its start token; the result is the target without the start token),
the same convention as Hugging Face's ``generate``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from ..data.collate import left_pad
from ..runtime.profiles import capped

__all__ = ["generate", "left_pad", "next_token_distribution", "top_k_filter", "top_p_filter"]


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


def _check_finite(probs: Tensor, step: int) -> None:
    """Sampling from NaN/inf probabilities is undefined: say so instead of sampling garbage."""
    bad = ~torch.isfinite(probs).all(dim=-1)  # (B,)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()[:5].tolist()
        raise ValueError(f"step {step}: the next-token probabilities of rows {rows} contain NaN or inf "
                         "(NaN logits from the model, or every token filtered out)")


class _DecoderOnly:
    """Generation state of a GPT-like model: feed the prompt once, then one token per step."""

    def __init__(self, model: nn.Module, input_ids: Tensor, mask: Tensor | None, use_cache: bool) -> None:
        self.model, self.use_cache, self.mask = model, use_cache, mask
        self.block_size = getattr(model.config, "block_size", None)
        self.ids, self.cache = input_ids, None

    def logits(self) -> Tensor:
        too_long = self.block_size is not None and self.ids.shape[1] > self.block_size
        if self.cache is not None and not too_long:  # feed only the newest token
            out = self.model(self.ids[:, -1:], attention_mask=self.mask, past_key_values=self.cache, use_cache=True)
        else:  # the whole (cropped) context; learned positions shift when the window slides: no cache
            ctx = self.ids[:, -self.block_size:] if too_long else self.ids  # (B, <= block_size)
            mask = None if self.mask is None else self.mask[:, -ctx.shape[1]:]
            out = self.model(ctx, attention_mask=mask, use_cache=self.use_cache and not too_long)
        self.cache = out.past_key_values if self.use_cache and not too_long else None
        return out.logits[:, -1, :]  # (B, V)

    def append(self, token: Tensor) -> None:
        self.ids = torch.cat([self.ids, token[:, None]], dim=1)  # (B, T + 1)
        if self.mask is not None:
            self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)  # (B, T + 1)


class _EncoderDecoder:
    """Generation state of a T5-like model: encode the source once, then decode from the start token."""

    def __init__(self, model: nn.Module, input_ids: Tensor, mask: Tensor | None, use_cache: bool,
                 start_id: int) -> None:
        self.model, self.use_cache, self.mask = model, use_cache, mask
        self.memory = model.encode(input_ids, mask)  # (B, S, C): the source is read once
        self.ids = torch.full((input_ids.shape[0], 1), start_id, dtype=torch.long, device=input_ids.device)
        self.cache = None

    def logits(self) -> Tensor:
        new = self.ids[:, -1:] if self.cache is not None else self.ids  # (B, 1) or the whole prefix
        out = self.model(attention_mask=self.mask, decoder_input_ids=new, encoder_outputs=self.memory,
                         past_key_values=self.cache, use_cache=self.use_cache)
        self.cache = out.past_key_values if self.use_cache else None
        return out.logits[:, -1, :]  # (B, V)

    def append(self, token: Tensor) -> None:
        self.ids = torch.cat([self.ids, token[:, None]], dim=1)  # (B, t + 1)


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: Tensor,
    max_new_tokens: int,
    *,
    attention_mask: Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    stop_tokens: Iterable[int] | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    pad_id: int | None = None,
    allowed_tokens: Callable[[Tensor], Tensor] | None = None,
    decoder_start_id: int | None = None,
) -> Tensor:
    """Generate up to ``max_new_tokens`` tokens for each row of ``input_ids`` (B, T).

    Returns (B, T + max_new_tokens) — prompt + continuation — for a decoder-only model, and
    (B, max_new_tokens) — the target without its start token — for an encoder-decoder
    (``model.config.is_encoder_decoder``). Rows that emitted a stop token are finished: their later
    columns hold ``pad_id``; when every row has finished the loop stops and the rest is padding.

    Args:
        attention_mask: (B, T) 1/0 for padded inputs (left padding for decoder-only prompts, see
            :func:`left_pad`).
        greedy: argmax instead of sampling (temperature, top_k, top_p are then ignored).
        stop_tokens: ids that finish a row (kept in the output); encoder-decoders default to
            ``config.eos_id``.
        use_cache: reuse keys/values; gives tokens identical to ``use_cache=False``.
        generator: a torch.Generator for reproducible sampling.
        pad_id: filler after a finished row (default: ``config.pad_id`` or 0).
        allowed_tokens: constrained decoding (Chapter 08): maps the tokens generated so far (B, t)
            to a (B, V) bool mask of the tokens each row may write next.
        decoder_start_id: first decoder token of an encoder-decoder (default: the config's).
    The context of a decoder-only model is cropped to ``config.block_size``. The model runs in eval mode.
    Under a step cap (``SCRATCHLM_MAX_STEPS``, a dry run) at most that many tokens are generated, and the
    result is that much narrower.
    """
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise ValueError(f"input_ids must be an int64 tensor of shape (B, T); got "
                         f"{getattr(input_ids, 'dtype', type(input_ids).__name__)} "
                         f"{tuple(getattr(input_ids, 'shape', ()))}")
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids is an empty prompt (shape (B, 0)): give at least one token per row")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0; got {max_new_tokens!r}")
    max_new_tokens = capped(max_new_tokens)  # a dry run generates at most SCRATCHLM_MAX_STEPS tokens
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}; "
                         f"got {tuple(attention_mask.shape)}")
    if not greedy:  # validate once, before any model call
        next_token_distribution(torch.zeros(1, 2), temperature=temperature, top_k=top_k, top_p=top_p)
    config = getattr(model, "config", None)
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    vocab = getattr(config, "vocab_size", None) or getattr(config, "tgt_vocab_size", None)
    if stop_tokens is None and encoder_decoder and getattr(config, "eos_id", None) is not None:
        stop_tokens = [config.eos_id]
    stops = sorted({int(t) for t in (stop_tokens or ())})
    if vocab is not None and any(not 0 <= t < vocab for t in stops):
        raise ValueError(f"stop_tokens must be token ids in [0, {vocab}); got {stops}")
    pad = pad_id if pad_id is not None else getattr(config, "pad_id", 0) or 0
    stop_t = torch.tensor(stops, dtype=torch.long, device=input_ids.device)

    was_training = model.training
    model.eval()
    mask = attention_mask.long() if attention_mask is not None else None
    if encoder_decoder:
        start = decoder_start_id if decoder_start_id is not None else getattr(config, "decoder_start_id", None)
        if start is None:
            raise ValueError("this encoder-decoder needs decoder_start_id (the first decoder token)")
        state = _EncoderDecoder(model, input_ids, mask, use_cache, start)
    else:
        state = _DecoderOnly(model, input_ids, mask, use_cache)
    B = input_ids.shape[0]
    finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)  # (B,)
    new_tokens: list[Tensor] = []
    try:
        for step in range(max_new_tokens):
            logits = state.logits()  # (B, V)
            if allowed_tokens is not None:
                generated = torch.stack(new_tokens, 1) if new_tokens else input_ids.new_zeros((B, 0))  # (B, t)
                allowed = allowed_tokens(generated)  # (B, V) bool
                if allowed.shape != logits.shape or allowed.dtype != torch.bool:
                    raise ValueError(f"allowed_tokens must return a bool mask of shape {tuple(logits.shape)}; "
                                     f"got {allowed.dtype} {tuple(allowed.shape)}")
                empty = ~allowed.any(dim=-1) & ~finished  # (B,)
                if bool(empty.any()):
                    raise ValueError(f"step {step}: the constraint allows no token for rows "
                                     f"{empty.nonzero().flatten()[:5].tolist()}")
                logits = logits.masked_fill(~allowed, float("-inf"))  # (B, V)
            if greedy:
                nan_rows = torch.isnan(logits).any(dim=-1)  # (B,)
                if bool(nan_rows.any()):
                    raise ValueError(f"step {step}: the logits of rows {nan_rows.nonzero().flatten()[:5].tolist()} "
                                     "contain NaN")
                nxt = logits.argmax(dim=-1)  # (B,)
            else:
                probs = next_token_distribution(logits, temperature=temperature, top_k=top_k, top_p=top_p)
                _check_finite(probs, step)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
            nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)  # (B,)
            new_tokens.append(nxt)
            state.append(nxt)
            if stop_t.numel():
                finished |= torch.isin(nxt, stop_t)
                if bool(finished.all()):
                    break
    finally:
        model.train(was_training)
    out = torch.stack(new_tokens, dim=1) if new_tokens else input_ids.new_zeros((B, 0))  # (B, n)
    if out.shape[1] < max_new_tokens:  # everyone finished early: pad to the promised width
        out = torch.cat([out, out.new_full((B, max_new_tokens - out.shape[1]), pad)], dim=1)
    return out if encoder_decoder else torch.cat([input_ids, out], dim=1)  # (B, n) or (B, T + n)
