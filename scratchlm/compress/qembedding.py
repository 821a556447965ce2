"""Weight-only quantized embedding tables (Chapter 12).

In a small encoder the token embedding is often the largest tensor: all-MiniLM-L6-v2 keeps 11.7 M
of its 22.7 M parameters in its 30,522 × 384 word table. Quantizing only the Linear layers leaves
it in float32, so the model cannot get much smaller than 2×. An embedding is a lookup, not a
matmul: quantize each row (one token's vector) with its own scale, look up the codes and scales of
the requested ids, and dequantize just those rows:

    E[i] ≈ s_i · (q_i − z_i)        (per row; or one scale per ``group_size`` elements of a row)

Introduced in Chapter 12.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .convert import QuantizationReport, size_bytes, swap_modules
from .quantize import QuantizedTensor, dequantize, pack_int4, quantize, unpack_int4


class QuantizedEmbedding(nn.Module):
    """An ``nn.Embedding`` whose table is stored as b-bit codes with a scale per row (or per group).

    Storage as in :class:`~scratchlm.compress.QuantizedLinear`: int8 codes for 5–8 bits, packed
    int4 (two per byte) for ≤ 4 bits, float32 scales, uint8 zero points (asymmetric). ``forward``
    gathers the codes and scales of the ids and returns s · (q − z) for those rows only, in
    ``dtype`` (float32 by default). ``weight`` dequantizes the whole table, for code that reads the
    table directly (BERT adds ``position_embeddings.weight[:T]``). Introduced in Chapter 12.
    """

    def __init__(self, qt: QuantizedTensor, padding_idx: int | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if not isinstance(qt, QuantizedTensor):
            raise TypeError(f"QuantizedEmbedding expects a QuantizedTensor; got {type(qt).__name__}")
        if qt.codes.dim() != 2:
            raise ValueError(f"QuantizedEmbedding expects a 2-d (num_embeddings, dim) table; got {tuple(qt.shape)}")
        if qt.granularity == "tensor":
            raise ValueError("QuantizedEmbedding needs one scale per row or group (granularity 'channel' or "
                             "'group'); got 'tensor'")
        self.num_embeddings, self.embedding_dim = qt.shape
        self.bits, self.scheme, self.granularity = qt.bits, qt.scheme, qt.granularity
        self.group_size, self.full_range = qt.group_size, qt.full_range
        self.padding_idx, self.dtype = padding_idx, dtype
        self.packed = qt.bits <= 4
        codes = pack_int4(qt.codes, signed=qt.scheme == "symmetric") if self.packed else qt.codes  # (V, ⌈C/2⌉) | (V, C)
        self.register_buffer("qweight", codes.clone())
        self.register_buffer("scale", qt.scale.to(torch.float32).clone())  # (V, G)
        self.register_buffer("zero_point", None if qt.zero_point is None else qt.zero_point.clone())  # (V, G)

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, bits: int = 8, scheme: str = "symmetric",
                       granularity: str = "channel", group_size: int | None = None) -> QuantizedEmbedding:
        """Quantize ``embedding.weight`` row by row (``"channel"``) or in groups of a row."""
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"expected an nn.Embedding; got {type(embedding).__name__}")
        if embedding.max_norm is not None or embedding.sparse:
            raise ValueError("QuantizedEmbedding does not support max_norm or sparse embeddings")
        w = embedding.weight.detach()  # (V, C)
        qt = quantize(w, bits, scheme, granularity, group_size)
        return cls(qt, embedding.padding_idx, w.dtype)

    def _rows(self, ids: Tensor) -> QuantizedTensor:
        codes = self.qweight[ids]  # (..., C) or (..., ⌈C/2⌉)
        if self.packed:
            codes = unpack_int4(codes, self.embedding_dim, self.scheme == "symmetric")  # (..., C)
            if self.scheme != "symmetric":
                codes = codes.to(torch.uint8)  # (..., C)
        zero = None if self.zero_point is None else self.zero_point[ids]  # (..., G)
        return QuantizedTensor(codes, self.scale[ids], zero, self.bits, self.scheme, self.granularity,
                               self.group_size, self.full_range)

    def forward(self, input_ids: Tensor) -> Tensor:
        return dequantize(self._rows(input_ids), self.dtype)  # (..., C)

    @property
    def weight(self) -> Tensor:
        """The whole dequantized table (V, C)."""
        return dequantize(self._rows(torch.arange(self.num_embeddings, device=self.qweight.device)), self.dtype)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.group_size else ""
        return (f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}, scheme={self.scheme!r}, "
                f"granularity={self.granularity!r}{group}, storage={'packed int4' if self.packed else 'int8'!r}")


def quantize_embeddings(model: nn.Module, bits: int = 8, scheme: str = "symmetric", granularity: str = "channel",
                        group_size: int | None = None, filter_fn: Callable[[str, nn.Embedding], bool] | None = None,
                        *, skip_tied: bool = True) -> QuantizationReport:
    """Replace, in place, every ``nn.Embedding`` that ``filter_fn(name, emb)`` accepts (default: all) by a
    :class:`QuantizedEmbedding`; return a :class:`~scratchlm.compress.QuantizationReport`.

    An embedding whose table is shared with a Linear (GPT's tied ``lm_head``) is skipped unless
    ``skip_tied=False``: quantizing only the lookup would keep the float table for the output layer
    and add codes next to it. Introduced in Chapter 12.
    """
    if not isinstance(model, nn.Module) or isinstance(model, nn.Embedding):
        raise TypeError(f"quantize_embeddings expects a model (an nn.Module holding embeddings); got {type(model).__name__}")
    report = QuantizationReport(bytes_before=size_bytes(model))
    owners: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        owners[id(p)] = owners.get(id(p), 0) + 1
    swap_modules(model, nn.Embedding, lambda name, emb: skip_tied and owners.get(id(emb.weight), 0) > 1,
                 lambda emb: QuantizedEmbedding.from_embedding(emb, bits, scheme, granularity, group_size),
                 filter_fn, report)
    report.bytes_after = size_bytes(model)
    return report

