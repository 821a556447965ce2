"""T5's relative position bias: bucketed offsets, one learned scalar per head (introduced in Chapter 08).

Every attention logit gets a learned scalar per head that depends only on the bucketed offset
``key - query``: ``scores = q·k/√d + b[head, bucket(j - i)]``. The buckets are exact for small offsets
and logarithmic up to ``max_distance``, so a model also runs on inputs longer than any it saw.
(Raffel et al., 2020.)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def relative_position_bucket(relative_position: Tensor, *, bidirectional: bool = True, num_buckets: int = 32,
                             max_distance: int = 128) -> Tensor:
    """Map offsets ``key - query`` to bucket ids in [0, num_buckets). Introduced in Chapter 08.

    Bidirectional: half the buckets for positive offsets, half for the rest. Within a direction,
    offsets 0 .. n/2-1 get one bucket each (n = buckets per direction); larger offsets share
    buckets whose width grows logarithmically up to ``max_distance``:
    ``bucket = n/2 + floor(log(|r| / (n/2)) / log(max_distance / (n/2)) · (n - n/2))``, capped at n-1.
    Causal (bidirectional=False): future offsets (r > 0) all fall into bucket 0.
    """
    buckets = torch.zeros_like(relative_position)  # (Tq, Tk)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets  # (Tq, Tk) upper half: keys ahead
        distance = relative_position.abs()  # (Tq, Tk)
    else:
        distance = (-relative_position).clamp(min=0)  # (Tq, Tk) only the past counts
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    log_ratio = torch.log(distance.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (log_ratio * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)  # (Tq, Tk)
    return buckets + torch.where(is_small, distance, large)  # (Tq, Tk)


class RelativePositionBias(nn.Module):
    """b[h, bucket(j - i)]: one learned scalar per head and bucket, added to attention logits."""

    def __init__(self, n_heads: int, num_buckets: int, max_distance: int, bidirectional: bool) -> None:
        super().__init__()
        self.relative_attention_bias = nn.Embedding(num_buckets, n_heads)  # (buckets, H) — HF's name
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional

    def forward(self, Tq: int, Tk: int, device: torch.device | None = None, offset: int = 0) -> Tensor:
        """Bias (1, H, Tq, Tk) for queries at positions offset..offset+Tq-1 and keys at 0..Tk-1
        (``offset`` = positions already in a decoder's KV cache)."""
        query = torch.arange(offset, offset + Tq, device=device)[:, None]  # (Tq, 1)
        key = torch.arange(Tk, device=device)[None, :]  # (1, Tk)
        buckets = relative_position_bucket(key - query, bidirectional=self.bidirectional,
                                           num_buckets=self.num_buckets, max_distance=self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)[None]  # (1, H, Tq, Tk)
