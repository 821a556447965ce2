"""Fast generation: a static KV cache and a compiled one-token decode step (introduced in Chapter 13).

Chapter 06's :func:`~scratchlm.decoding.generate` is the readable loop. Per new token it runs the
model eagerly (a Python call and a kernel launch for each of the ~20 operations of every layer),
grows the cache and the ids with ``torch.cat`` (a new allocation and a copy of everything seen so
far), and reads the stop check back to the host. For a small model the arithmetic of one step is a
few milliseconds; the rest is overhead. :class:`StaticGenerator` removes it in three moves:

1. **Static cache** (:class:`~scratchlm.layers.StaticKVCache`): one (B, H, T_max, d) buffer per
   layer, allocated once, written in place at a device-side position. Every decode step now has
   the same shapes: token (B, 1), mask (B, T_max), cache (B, H, T_max, d).
2. **Compiled decode step**: because the shapes never change, ``torch.compile(fullgraph=True,
   dynamic=False)`` captures the whole step — embedding, L blocks, output layer for the last
   position only, argmax, stop bookkeeping — as one graph, fuses its element-wise work, and on a
   GPU (``mode="reduce-overhead"``) records it as a CUDA graph replayed with one launch.
3. **Fewer host round trips**: positions are computed once from the mask, the next token and the
   ``finished`` flags stay on the device, and the host asks "has every row stopped?" only every
   ``stop_check_every`` steps (the extra steps are padded out, so the result is unchanged).

The prefill (the prompt, whose length varies) runs eagerly through the same cache. Greedy tokens
equal :func:`~scratchlm.decoding.generate`'s (tested); sampling draws from the same distribution
with the same ``torch.Generator`` calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from ..layers.kv_cache import StaticKVCache
from ..runtime.profiles import capped
from .sampling import _check_finite, next_token_distribution

__all__ = ["StaticGenerator", "sample_rows"]


def sample_rows(logits: Tensor, temperature: Tensor, top_k: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One token per row with per-row settings: ``temperature`` (B,) (0 = greedy) and ``top_k`` (B,)
    (k >= 1; V keeps every token). Used by the server, whose batch mixes requests.

        p_b = softmax(top_k_b(z_b) / τ_b)   for τ_b > 0,      w_b = argmax z_b   for τ_b = 0
    """
    B, V = logits.shape
    logits = logits.float()  # (B, V)
    k = top_k.clamp(1, V).long()  # (B,)
    kth = torch.sort(logits, dim=-1, descending=True).values.gather(1, (k - 1)[:, None])  # (B, 1) k-th largest
    filtered = logits.masked_fill(logits < kth, float("-inf"))  # (B, V)
    greedy = temperature <= 0  # (B,)
    tau = torch.where(greedy, torch.ones_like(temperature), temperature).float()  # (B,) avoid / 0
    probs = torch.softmax(filtered / tau[:, None], dim=-1)  # (B, V)
    _check_finite(probs, 0)
    drawn = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
    return torch.where(greedy, logits.argmax(dim=-1), drawn)  # (B,)


def _frozen_compile(fn, mode: str | None):
    """``torch.compile(fn, fullgraph=True, dynamic=False)`` with Inductor's *freezing*: the weights are
    folded in as constants, so on a CPU every Linear becomes a call on a pre-packed weight (the
    matmul library lays it out once for fast small-batch products). Compilation is lazy, so the
    setting is applied around every call (it costs microseconds)."""
    compiled = torch.compile(fn, fullgraph=True, dynamic=False, mode=mode)

    def call(*args: Tensor):
        with torch._inductor.config.patch(freezing=True):
            return compiled(*args)

    return call


class StaticGenerator:
    """Batched decoder-only generation with a :class:`~scratchlm.layers.StaticKVCache` and an
    optionally compiled decode step. Introduced in Chapter 13.

    Args:
        model: a GPT-like model whose forward accepts a static cache and ``logits_to_keep``.
        batch_size: rows of the cache. Smaller batches are padded with finished dummy rows, so one
            compiled step serves every batch up to this size.
        max_length: slots of the cache (prompt + new tokens); default the model's ``block_size``.
            Attention runs over all of them at every step, so size it to the job.
        compile: False (eager), True (``torch.compile`` with frozen weights, and
            ``mode="reduce-overhead"`` — CUDA graphs — on a GPU) or an explicit mode string. The
            weights are compiled in: build a new generator after changing them.
        stop_check_every: read the stop flags back to the host every this many steps.
    """

    def __init__(self, model: nn.Module, *, batch_size: int, max_length: int | None = None,
                 compile: bool | str = False, stop_check_every: int = 8) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"StaticGenerator expects an nn.Module; got {type(model).__name__}")
        if getattr(model.config, "is_encoder_decoder", False):
            raise ValueError("StaticGenerator serves decoder-only models; use decoding.generate for encoder-decoders")
        if not isinstance(stop_check_every, int) or isinstance(stop_check_every, bool) or stop_check_every < 1:
            raise ValueError(f"stop_check_every must be a positive int; got {stop_check_every!r}")
        if not isinstance(compile, (bool, str)):
            raise TypeError(f"compile must be a bool or a torch.compile mode string; got {type(compile).__name__}")
        self.model = model
        self.cache = StaticKVCache.for_model(model, batch_size, max_length)
        self.batch_size, self.max_length = batch_size, self.cache.max_length
        self.stop_check_every = stop_check_every
        self.device = self.cache.position.device
        self.compiled = bool(compile)
        if compile:
            self.cache.mark_static_addresses()
            mode = compile if isinstance(compile, str) else ("reduce-overhead" if self.device.type == "cuda" else None)
            self._greedy_step = _frozen_compile(self._greedy_step_eager, mode)
            self._logits_step = _frozen_compile(self._logits_step_eager, mode)
        else:
            self._greedy_step, self._logits_step = self._greedy_step_eager, self._logits_step_eager

    # ---- the decode step: static shapes, no host sync ---------------------------------------------
    def _logits_step_eager(self, token: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        """Logits (B, V) of the next token after ``token`` (B, 1), written at the cache's position."""
        pos = positions.index_select(1, self.cache.position.view(1))  # (B, 1) position id of this token
        out = self.model(token, attention_mask=mask, position_ids=pos, past_key_values=self.cache, logits_to_keep=1)
        return out.logits[:, -1, :]  # (B, V)

    def _greedy_step_eager(self, token: Tensor, mask: Tensor, positions: Tensor, finished: Tensor,
                           bad: Tensor, stop_ids: Tensor, pad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Next greedy token (B,), the updated finished flags (B,) and NaN flags (B,), all on the device."""
        logits = self._logits_step_eager(token, mask, positions)  # (B, V)
        bad = bad | torch.isnan(logits).any(dim=-1)  # (B,) reported at the next host check
        nxt = torch.where(finished, pad, logits.argmax(dim=-1))  # (B,) finished rows write padding
        finished = finished | (nxt[:, None] == stop_ids[None, :]).any(dim=-1)  # (B,)
        return nxt, finished, bad

    # ---- set-up shared by generate and stream ------------------------------------------------------
    def _prepare(self, input_ids: Tensor, max_new_tokens: int, attention_mask: Tensor | None,
                 stop_tokens: Iterable[int] | None, pad_id: int | None):
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
            raise ValueError(f"input_ids must be an int64 tensor of shape (B, T); got "
                             f"{getattr(input_ids, 'dtype', type(input_ids).__name__)} "
                             f"{tuple(getattr(input_ids, 'shape', ()))}")
        B, T = input_ids.shape
        if B == 0 or T == 0:
            raise ValueError(f"input_ids must hold at least one row and one token; got shape {(B, T)}")
        if B > self.batch_size:
            raise ValueError(f"this StaticGenerator was built for batches of up to {self.batch_size} rows; got {B}")
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0; got {max_new_tokens!r}")
        if T + max_new_tokens > self.max_length:
            raise ValueError(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds the cache's "
                             f"max_length={self.max_length}")
        if attention_mask is not None and tuple(attention_mask.shape) != (B, T):
            raise ValueError(f"attention_mask must have the shape of input_ids {(B, T)}; got "
                             f"{tuple(attention_mask.shape)}")
        vocab = self.model.config.vocab_size
        stops = sorted({int(t) for t in (stop_tokens or ())})
        if any(not 0 <= t < vocab for t in stops):
            raise ValueError(f"stop_tokens must be token ids in [0, {vocab}); got {stops}")
        pad = pad_id if pad_id is not None else getattr(self.model.config, "pad_id", 0) or 0
        dev, R = self.device, self.batch_size
        ids = torch.empty(R, T, dtype=torch.long, device=dev)  # (R, T) real rows, then dummy copies of row 0
        ids[:B] = input_ids
        ids[B:] = input_ids[:1]
        prompt_mask = attention_mask.long() if attention_mask is not None else torch.ones_like(input_ids)
        mask = torch.ones(R, self.max_length, dtype=torch.long, device=dev)  # (R, T_max) later slots: real
        mask[:B, :T] = prompt_mask
        mask[B:, :T] = prompt_mask[:1]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (R, T_max) position id of every slot, computed once
        finished = torch.zeros(R, dtype=torch.bool, device=dev)  # (R,)
        finished[B:] = True  # dummy rows never hold up the stop check
        stop_ids = torch.tensor(stops if stops else [-1], dtype=torch.long, device=dev)  # (S,) -1 never matches
        return ids, mask, positions, finished, stop_ids, torch.tensor(pad, device=dev), bool(stops)

    def _prefill(self, ids: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        """Run the prompt (eager: its length varies) through the reset cache; logits (R, V) of its last slot."""
        self.cache.reset()
        T = ids.shape[1]
        out = self.model(ids, attention_mask=mask, position_ids=positions[:, :T], past_key_values=self.cache,
                         logits_to_keep=1)
        return out.logits[:, -1, :]  # (R, V)

    # ---- public API -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: Tensor, max_new_tokens: int, *, attention_mask: Tensor | None = None,
                 greedy: bool = True, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, stop_tokens: Iterable[int] | None = None, pad_id: int | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Prompt + continuation (B, T + max_new_tokens), the contract of
        :func:`~scratchlm.decoding.generate` (left-padded prompts, stop tokens, padding after a stop).
        Greedy steps run entirely on the device; sampling uses the compiled step for the logits.
        Under a step cap (``SCRATCHLM_MAX_STEPS``, a dry run) at most that many tokens are decoded, as in
        :func:`~scratchlm.decoding.generate`."""
        if not greedy:
            next_token_distribution(torch.zeros(1, 2), temperature=temperature, top_k=top_k, top_p=top_p)
        ids, mask, positions, finished, stop_ids, pad, has_stops = self._prepare(
            input_ids, max_new_tokens, attention_mask, stop_tokens, pad_id)
        max_new_tokens = capped(max_new_tokens)  # a dry run decodes at most SCRATCHLM_MAX_STEPS tokens
        B, T = input_ids.shape
        out = torch.full((self.batch_size, max_new_tokens), int(pad), dtype=torch.long, device=self.device)  # (R, n)
        if max_new_tokens == 0:
            return input_ids.clone()
        was_training = self.model.training
        self.model.eval()
        try:
            logits = self._prefill(ids, mask, positions)  # (R, V)
            bad = torch.isnan(logits).any(dim=-1)  # (R,)
            nxt = self._choose(logits, greedy, temperature, top_k, top_p, generator, finished, pad)  # (R,)
            finished = finished | (nxt[:, None] == stop_ids[None, :]).any(dim=-1)  # (R,)
            out[:, 0] = nxt
            for step in range(1, max_new_tokens):
                if step % self.stop_check_every == 0 and self._all_done(finished, bad, greedy, step, has_stops):
                    break
                if self.compiled and self.device.type == "cuda":
                    torch.compiler.cudagraph_mark_step_begin()
                if greedy:
                    nxt, finished, bad = self._greedy_step(nxt[:, None], mask, positions, finished, bad, stop_ids, pad)
                else:
                    logits = self._logits_step(nxt[:, None], mask, positions)  # (R, V)
                    nxt = self._choose(logits, greedy, temperature, top_k, top_p, generator, finished, pad)
                    finished = finished | (nxt[:, None] == stop_ids[None, :]).any(dim=-1)  # (R,)
                out[:, step] = nxt
            self._all_done(finished, bad, greedy, max_new_tokens, has_stops)  # raises on NaN logits
        finally:
            self.model.train(was_training)
        return torch.cat([input_ids, out[:B]], dim=1)  # (B, T + n)

    @torch.no_grad()
    def stream(self, input_ids: Tensor, max_new_tokens: int, *, attention_mask: Tensor | None = None,
               temperature: Tensor | float = 0.0, top_k: Tensor | int | None = None,
               stop_tokens: Iterable[int] | None = None, pad_id: int | None = None,
               generator: torch.Generator | None = None) -> Iterator[list[int]]:
        """Yield the B new tokens of each step (host ints) as they are produced; stops when every row
        has met a stop token or after ``max_new_tokens`` steps. Per-row ``temperature`` (0 = greedy)
        and ``top_k`` (see :func:`sample_rows`), so one batch can mix requests. Closing the iterator
        (a client went away) stops the work. A step cap (``SCRATCHLM_MAX_STEPS``) limits the steps."""
        ids, mask, positions, finished, stop_ids, pad, _ = self._prepare(
            input_ids, max_new_tokens, attention_mask, stop_tokens, pad_id)
        max_new_tokens = capped(max_new_tokens)  # a dry run streams at most SCRATCHLM_MAX_STEPS steps
        B = input_ids.shape[0]
        R, V = self.batch_size, self.model.config.vocab_size
        temp = torch.zeros(R, device=self.device)  # (R,)
        temp[:B] = torch.as_tensor(temperature, dtype=torch.float, device=self.device).expand(B)
        k = torch.full((R,), V, dtype=torch.long, device=self.device)  # (R,) V = no top-k filter
        if top_k is not None:
            k[:B] = torch.as_tensor(top_k, dtype=torch.long, device=self.device).expand(B)
        was_training = self.model.training
        self.model.eval()
        try:
            logits = self._prefill(ids, mask, positions)  # (R, V)
            nxt = finished.long()  # (R,) placeholder: replaced at step 0
            for step in range(max_new_tokens):
                if step:
                    if self.compiled and self.device.type == "cuda":
                        torch.compiler.cudagraph_mark_step_begin()
                    logits = self._logits_step(nxt[:, None], mask, positions)  # (R, V)
                nxt = torch.where(finished, pad, sample_rows(logits, temp, k, generator))  # (R,)
                finished = finished | (nxt[:, None] == stop_ids[None, :]).any(dim=-1)  # (R,)
                yield nxt[:B].tolist()
                if bool(finished.all()):
                    return
        finally:
            self.model.train(was_training)

    # ---- helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _choose(logits: Tensor, greedy: bool, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None, finished: Tensor, pad: Tensor) -> Tensor:
        if greedy:
            nxt = logits.argmax(dim=-1)  # (R,)
        else:  # the same calls as decoding.generate, so a seeded generator draws the same tokens
            probs = next_token_distribution(logits, temperature=temperature, top_k=top_k, top_p=top_p)  # (R, V)
            _check_finite(probs, 0)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (R,)
        return torch.where(finished, pad, nxt)  # (R,)

    @staticmethod
    def _all_done(finished: Tensor, bad: Tensor, greedy: bool, step: int, has_stops: bool) -> bool:
        """The host check: raise on NaN logits seen so far; True when every row has stopped."""
        if greedy and bool(bad.any()):
            rows = bad.nonzero().flatten()[:5].tolist()
            raise ValueError(f"by step {step}: the logits of rows {rows} contain NaN")
        return has_stops and bool(finished.all())

    def __repr__(self) -> str:
        return (f"StaticGenerator(batch_size={self.batch_size}, max_length={self.max_length}, "
                f"compiled={self.compiled}, stop_check_every={self.stop_check_every})")
