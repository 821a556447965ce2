"""Key/value caches for incremental decoding (introduced in Chapter 06, used again in 08 and 13).

A decoder that generates one token at a time would recompute the keys and values of the whole
prefix at every step. A cache keeps them: each attention layer projects only the new tokens and
appends their (k, v) heads, so a step costs O(T) attention instead of O(T²) recomputation.

* :class:`KVCache` grows by concatenation (the simple, readable one).
* ``cross`` holds the projected encoder keys/values of an encoder-decoder's cross-attention: they do
  not change while the decoder generates, so they are computed once per source and reused.

An attention layer calls ``cache.update(layer_idx, k, v)`` with the new heads and attends to what it
returns: the heads of every position seen so far.

* :class:`StaticKVCache` (Chapter 13) has the same interface but pre-allocates one (B, H, T_max, d)
  buffer per layer and writes the new heads in place at its current position. Nothing is
  reallocated and every decode step sees tensors of the same shapes, which is what lets
  ``torch.compile`` (and CUDA graphs) capture the step once and replay it. The price: attention
  runs over all T_max slots, with the slots not yet written masked out.
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Per-layer (k, v) heads, each (B, H, T_seen, d_head), grown by :meth:`update`."""

    def __init__(self) -> None:
        self.layers: dict[int, tuple[Tensor, Tensor]] = {}  # self-attention (k, v) per layer
        self.cross: dict[int, tuple[Tensor, Tensor]] = {}  # cross-attention (k, v) per layer

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append the new heads ``k``, ``v`` (B, H, T_new, d_head) of layer ``layer_idx``; return all of them."""
        past = self.layers.get(layer_idx)
        if past is not None:
            pk, pv = past
            if pk.shape[0] != k.shape[0] or pk.shape[1] != k.shape[1] or pk.shape[3] != k.shape[3]:
                raise ValueError(
                    f"KVCache layer {layer_idx} holds keys of shape (B, H, T, d) = {tuple(pk.shape)}; the new "
                    f"keys have shape {tuple(k.shape)} (a cache from another batch size or model?)"
                )
            k = torch.cat([pk, k], dim=2)  # (B, H, T_past + T_new, d_head)
            v = torch.cat([pv, v], dim=2)  # (B, H, T_past + T_new, d_head)
        self.layers[layer_idx] = (k, v)
        return k, v

    def seq_length(self, layer_idx: int = 0) -> int:
        """How many positions layer ``layer_idx`` has seen (0 for an empty cache)."""
        past = self.layers.get(layer_idx)
        return 0 if past is None else past[0].shape[2]

    @property
    def batch_size(self) -> int | None:
        """Rows of the cached batch, or None while the cache is empty."""
        for k, _ in self.layers.values():
            return k.shape[0]
        return None

    def check_batch(self, batch_size: int) -> None:
        """Raise unless the cache is empty or was built for ``batch_size`` rows."""
        cached = self.batch_size
        if cached is not None and cached != batch_size:
            raise ValueError(f"the KV cache was built for a batch of {cached} rows; got a batch of {batch_size}")

    def nbytes(self) -> int:
        """Memory held by the cached tensors, in bytes (self- and cross-attention)."""
        pairs = list(self.layers.values()) + list(self.cross.values())
        return sum(t.numel() * t.element_size() for pair in pairs for t in pair)

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        return f"KVCache(layers={len(self.layers)}, seen={self.seq_length()}, batch={self.batch_size})"


def _positive_int(who: str, name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{who}: {name} must be a positive int; got {value!r}")
    return value


class StaticKVCache:
    """Pre-allocated per-layer (k, v) buffers (B, H, T_max, d_head), written in place. Introduced in Chapter 13.

    ``position`` is a 0-d int64 *tensor* (on the cache's device): the slot the next token is written
    to. Keeping it on the device, not in a Python int, means a compiled decode step reads and
    advances it without a host sync and without recompiling at every step. Every layer of one
    forward pass writes its new heads at slots ``position .. position + T_new - 1``; the position
    advances by T_new when the last layer (``n_layers - 1``) has written.

    A model that uses it must build its attention mask over all T_max slots (slot j is visible to
    the query in slot i iff j <= i, and j is not padding): :class:`~scratchlm.models.GPT` does.
    """

    is_static = True  # models branch on this: the attention covers T_max slots, not T_seen

    def __init__(self, n_layers: int, batch_size: int, n_heads: int, max_length: int, head_dim: int, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        who = "StaticKVCache"
        for name, value in (("n_layers", n_layers), ("batch_size", batch_size), ("n_heads", n_heads),
                            ("max_length", max_length), ("head_dim", head_dim)):
            _positive_int(who, name, value)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"{who}: dtype must be a floating-point torch.dtype; got {dtype!r}")
        self.n_layers, self.max_length = n_layers, max_length
        shape = (batch_size, n_heads, max_length, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]  # L x (B, H, T_max, d)
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]  # L x (B, H, T_max, d)
        self.position = torch.zeros((), dtype=torch.long, device=device)  # () next slot to write
        # (B, H) per layer: True once a NaN key or value was written there (attention's NaN rule,
        # kept up to date at O(T_new) per step instead of rescanning all T_max slots)
        self.nan_flags = [torch.zeros(batch_size, n_heads, dtype=torch.bool, device=device) for _ in range(n_layers)]
        self.cross: dict[int, tuple[Tensor, Tensor]] = {}  # same attribute as KVCache (unused by GPT)

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch_size: int, max_length: int | None = None) -> StaticKVCache:
        """A cache shaped for a GPT-like ``model`` (config with n_layers, n_heads, d_model, block_size),
        on the model's device and in its dtype; ``max_length`` defaults to ``block_size``."""
        config = getattr(model, "config", None)
        missing = [f for f in ("n_layers", "n_heads", "d_model", "block_size") if not hasattr(config, f)]
        if missing:
            raise TypeError(f"StaticKVCache.for_model needs a GPT-like model whose config has {missing}; "
                            f"got {type(model).__name__}")
        max_length = config.block_size if max_length is None else _positive_int("StaticKVCache", "max_length",
                                                                                  max_length)
        if max_length > config.block_size:
            raise ValueError(f"StaticKVCache: max_length={max_length} exceeds the model's block_size="
                             f"{config.block_size}")
        weight = next(model.parameters())
        return cls(config.n_layers, batch_size, config.n_heads, max_length, config.d_model // config.n_heads,
                   dtype=weight.dtype, device=weight.device)

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write the new heads ``k``, ``v`` (B, H, T_new, d_head) of layer ``layer_idx`` at the current
        position; return the whole buffers (B, H, T_max, d_head), slots not yet written included."""
        if not 0 <= layer_idx < self.n_layers:
            raise ValueError(f"StaticKVCache has {self.n_layers} layers; got layer_idx={layer_idx}")
        buf_k, buf_v = self.keys[layer_idx], self.values[layer_idx]
        expected = (buf_k.shape[0], buf_k.shape[1], k.shape[2], buf_k.shape[3])
        if tuple(k.shape) != expected or tuple(v.shape) != expected:
            raise ValueError(f"StaticKVCache layer {layer_idx} holds (B, H, T_max, d) = {tuple(buf_k.shape)}; the "
                             f"new keys/values have shapes {tuple(k.shape)} / {tuple(v.shape)} (expected "
                             f"{expected}: another batch size or model?)")
        T_new = k.shape[2]
        # Device-side check, no host sync: raises on CPU at once, asserts on the GPU.
        torch._assert_async(self.position + T_new <= self.max_length,
                            "StaticKVCache is full: position + new tokens exceeds max_length")
        slots = self.position + torch.arange(T_new, device=k.device)  # (T_new,) where the new heads go
        buf_k.index_copy_(2, slots, k.to(buf_k.dtype))  # (B, H, T_max, d_head), in place
        buf_v.index_copy_(2, slots, v.to(buf_v.dtype))  # (B, H, T_max, d_head), in place
        new_nan = torch.isnan(k).flatten(2).any(dim=-1) | torch.isnan(v).flatten(2).any(dim=-1)  # (B, H)
        self.nan_flags[layer_idx].logical_or_(new_nan)  # (B, H), in place
        if layer_idx == self.n_layers - 1:  # every layer has written this step: move on
            self.position.add_(T_new)
        return buf_k, buf_v

    def kv_nan(self, layer_idx: int) -> Tensor:
        """(B, H) bool: True where layer ``layer_idx`` holds a NaN key or value (see attention's NaN rule)."""
        return self.nan_flags[layer_idx]

    def reset(self) -> None:
        """Empty the cache for a new batch: position 0, buffers zeroed, NaN flags cleared."""
        self.position.zero_()
        for t in (*self.keys, *self.values, *self.nan_flags):
            t.zero_()
        self.cross.clear()

    def seq_length(self, layer_idx: int = 0) -> int:
        """How many slots have been written (a host read of ``position``; models never call it in forward)."""
        return int(self.position)

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def check_batch(self, batch_size: int) -> None:
        """Raise unless the cache was built for ``batch_size`` rows (its buffers never change size)."""
        if batch_size != self.batch_size:
            raise ValueError(f"the static KV cache was built for a batch of {self.batch_size} rows; "
                             f"got a batch of {batch_size}")

    def nbytes(self) -> int:
        """Memory held by the pre-allocated buffers, in bytes (allocated once, whatever is written)."""
        pairs = list(zip(self.keys, self.values, strict=True)) + list(self.cross.values())
        return sum(t.numel() * t.element_size() for pair in pairs for t in pair)

    def mark_static_addresses(self) -> None:
        """Tell torch.compile the buffers never move (CUDA graphs may then replay writes into them)."""
        for t in (*self.keys, *self.values, *self.nan_flags, self.position):
            torch._dynamo.mark_static_address(t)

    def __len__(self) -> int:
        return self.n_layers

    def __repr__(self) -> str:
        B, H, T, d = self.keys[0].shape
        return f"StaticKVCache(layers={self.n_layers}, batch={B}, heads={H}, max_length={T}, head_dim={d})"


def cache_for(past_key_values: KVCache | StaticKVCache | None, use_cache: bool, *,
              allow_static: bool = False) -> KVCache | StaticKVCache | None:
    """The cache a forward pass extends: the one passed in, a new one if ``use_cache``, else None.
    ``allow_static``: the model also accepts a :class:`StaticKVCache` (GPT does; Chapter 13)."""
    if past_key_values is not None:
        if allow_static and isinstance(past_key_values, StaticKVCache):
            return past_key_values
        if not isinstance(past_key_values, KVCache):
            hint = " (a StaticKVCache serves GPT only)" if isinstance(past_key_values, StaticKVCache) else ""
            raise TypeError(f"past_key_values must be a KVCache (from a previous call with use_cache=True); "
                            f"got {type(past_key_values).__name__}{hint}")
        return past_key_values
    return KVCache() if use_cache else None
