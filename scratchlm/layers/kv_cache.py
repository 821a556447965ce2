"""Key/value caches for incremental decoding (introduced in Chapter 06, used again in 08 and 13).

A decoder that generates one token at a time would recompute the keys and values of the whole
prefix at every step. A cache keeps them: each attention layer projects only the new tokens and
appends their (k, v) heads, so a step costs O(T) attention instead of O(T²) recomputation.

* :class:`KVCache` grows by concatenation (the simple, readable one).
* ``cross`` holds the projected encoder keys/values of an encoder-decoder's cross-attention: they do
  not change while the decoder generates, so they are computed once per source and reused.

An attention layer calls ``cache.update(layer_idx, k, v)`` with the new heads and attends to what it
returns: the heads of every position seen so far. Chapter 13 adds a pre-allocated static cache with
the same interface.
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


def cache_for(past_key_values: KVCache | None, use_cache: bool) -> KVCache | None:
    """The cache a forward pass extends: the one passed in, a new one if ``use_cache``, else None."""
    if past_key_values is not None:
        if not isinstance(past_key_values, KVCache):
            raise TypeError(f"past_key_values must be a KVCache (from a previous call with use_cache=True); "
                            f"got {type(past_key_values).__name__}")
        return past_key_values
    return KVCache() if use_cache else None
