"""T5: a pre-norm encoder-decoder with RMSNorm and bucketed relative position biases.

Introduced in Chapter 08 (Raffel et al., 2020).

    x (B, S) -> E[x] -> N x pre-norm EncoderLayer (+ bidirectional bias b_enc) -> RMSNorm   memory (B, S, C)
    y_<t (B, T) -> E[y] -> N x pre-norm DecoderLayer (causal + b_dec, cross-attends memory) -> RMSNorm
      -> logits = (h · C^-1/2) Eᵀ (tied)                                                         (B, T, V)
    L_T5 = - sum_t log p(y_t | y_<t, x)       (teacher forcing: decoder input = targets shifted right)

Positions: T5-style *relative* position biases, not absolute embeddings. Every attention logit
gets a learned scalar per head that depends only on the bucketed offset ``key - query``:
``scores = q·k/√d + b[head, bucket(j - i)]``. Why: span corruption shortens inputs and the
targets are short strings, so what matters is "how far away", not "which absolute slot"; the
buckets are exact for small offsets and logarithmic up to ``max_distance``, so the model also
runs on inputs longer than any it saw. The bias is computed once per stack and shared by all
layers (as in T5); cross-attention has none.

Reuse: the blocks are Chapter 05's :class:`~scratchlm.layers.EncoderLayer` /
:class:`~scratchlm.layers.DecoderLayer` with ``norm_first=True, bias=False`` and their LayerNorms
replaced by :class:`RMSNorm` — T5's block is exactly a bias-free pre-LN block with RMSNorm.
The only numerical difference from Hugging Face's T5 is where 1/√d_head lives: our attention
scales q·k by 1/√d_head, T5 folds it into the initialisation of W_q. :func:`load_hf_t5_state_dict`
therefore multiplies W_q by √d_head, after which the logits agree (tested).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..constants import IGNORE_INDEX
from ..layers.blocks import Decoder, Encoder
from ..layers.norms import LayerNorm, RMSNorm


@dataclass
class T5Config:
    """Sizes of :class:`T5`. Defaults: t5-small (60 M parameters)."""

    vocab_size: int = 32128  # V: shared by encoder input, decoder input and output (incl. sentinels)
    d_model: int = 512  # C: width of the residual stream
    n_heads: int = 8  # H: heads per attention sublayer (d_head = C / H)
    n_encoder_layers: int = 6  # encoder blocks
    n_decoder_layers: int = 6  # decoder blocks
    d_ff: int = 2048  # hidden width of the ReLU feed-forward sublayer
    dropout: float = 0.1  # on embeddings, attention weights, sublayer outputs, FFN hidden units
    num_buckets: int = 32  # relative-position buckets per direction pair (half per direction in the encoder)
    max_distance: int = 128  # offsets beyond this share the last bucket
    layer_norm_eps: float = 1e-6  # ε inside RMSNorm
    pad_id: int = 0  # padding id; also the decoder start token, as in T5
    eos_id: int = 1  # end-of-sequence id; greedy decoding stops there

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_heads", "n_encoder_layers", "n_decoder_layers", "d_ff",
                     "num_buckets", "max_distance"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"T5Config.{name} must be a positive int; got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"T5Config.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"T5Config.dropout must be in [0, 1); got {self.dropout!r}")
        for name in ("pad_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"T5Config.{name} must be in [0, vocab_size={self.vocab_size}); got {getattr(self, name)}")


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

    def forward(self, Tq: int, Tk: int, device: torch.device | None = None) -> Tensor:
        query = torch.arange(Tq, device=device)[:, None]  # (Tq, 1)
        key = torch.arange(Tk, device=device)[None, :]  # (1, Tk)
        buckets = relative_position_bucket(key - query, bidirectional=self.bidirectional,
                                           num_buckets=self.num_buckets, max_distance=self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)[None]  # (1, H, Tq, Tk)


def _use_rmsnorm(module: nn.Module, eps: float) -> None:
    """Replace every :class:`LayerNorm` below ``module`` by an :class:`RMSNorm` of the same width."""
    for name, child in module.named_children():
        if isinstance(child, LayerNorm):
            setattr(module, name, RMSNorm(child.d_model, eps))
        else:
            _use_rmsnorm(child, eps)


@dataclass
class Seq2SeqOutput:
    """What :class:`T5` returns."""

    logits: Tensor  # (B, T, V)
    loss: Tensor | None = None  # mean -log p(y_t | y_<t, x) over labelled positions


class T5(nn.Module):
    """The T5 encoder-decoder (v1.0 layout: ReLU FFN, tied embeddings). Introduced in Chapter 08."""

    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        if not isinstance(cfg, T5Config):
            raise TypeError(f"T5 expects a T5Config; got {type(cfg).__name__}")
        self.config = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)  # one table: inputs, targets, output
        common = dict(d_model=cfg.d_model, n_heads=cfg.n_heads, d_ff=cfg.d_ff, dropout=cfg.dropout,
                      activation="relu", norm_first=True, final_norm=True, bias=False)
        self.encoder = Encoder(cfg.n_encoder_layers, **common)
        self.decoder = Decoder(cfg.n_decoder_layers, **common)
        _use_rmsnorm(self, cfg.layer_norm_eps)
        self.encoder_position_bias = RelativePositionBias(cfg.n_heads, cfg.num_buckets, cfg.max_distance, True)
        self.decoder_position_bias = RelativePositionBias(cfg.n_heads, cfg.num_buckets, cfg.max_distance, False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.apply(self._init_weights)
        nn.init.normal_(self.shared.weight, 0.0, 1.0)  # unit-scale embeddings (no √C scaling at the input)
        for bias in (self.encoder_position_bias, self.decoder_position_bias):
            nn.init.normal_(bias.relative_attention_bias.weight, 0.0, cfg.d_model ** -0.5)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):  # T5: std = fan_in^-1/2, so activations keep unit scale
            nn.init.normal_(module.weight, 0.0, module.in_features ** -0.5)

    def _check_ids(self, name: str, ids: Tensor) -> None:
        if not isinstance(ids, Tensor) or ids.dtype not in (torch.int64, torch.int32) or ids.dim() != 2:
            raise TypeError(f"{name} must be an int64 tensor of shape (B, T); got "
                            f"{getattr(ids, 'dtype', type(ids).__name__)} {tuple(getattr(ids, 'shape', ()))}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            raise ValueError(f"{name} must lie in [0, vocab_size={self.config.vocab_size}); got "
                             f"{int(ids.min())}..{int(ids.max())}")

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """input_ids (B, S), attention_mask (B, S) 1 = token -> memory (B, S, C)."""
        self._check_ids("input_ids", input_ids)
        S = input_ids.shape[1]
        x = self.dropout(self.shared(input_ids))  # (B, S, C)
        bias = self.encoder_position_bias(S, S, input_ids.device)  # (1, H, S, S)
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"attention_mask must have shape {tuple(input_ids.shape)}; got {tuple(attention_mask.shape)}")
            pad = attention_mask[:, None, None, :] == 0  # (B, 1, 1, S) True = padding key
            bias = bias.masked_fill(pad, float("-inf"))  # (B, H, S, S)
        return self.dropout(self.encoder(x, mask=bias))  # (B, S, C)

    def decode(self, decoder_input_ids: Tensor, memory: Tensor, attention_mask: Tensor | None = None, *,
               last_only: bool = False) -> Tensor:
        """decoder_input_ids (B, T), memory (B, S, C) -> logits (B, T, V), or (B, 1, V) with ``last_only``
        (greedy decoding needs only the newest position, and the V-way projection is the costly part)."""
        self._check_ids("decoder_input_ids", decoder_input_ids)
        T = decoder_input_ids.shape[1]
        y = self.dropout(self.shared(decoder_input_ids))  # (B, T, C)
        bias = self.decoder_position_bias(T, T, decoder_input_ids.device)  # (1, H, T, T)
        memory_padding = None if attention_mask is None else attention_mask == 0  # (B, S) True = padding
        h = self.decoder(y, memory, tgt_mask=bias, memory_key_padding_mask=memory_padding,
                         tgt_is_causal=True)  # (B, T, C)
        if last_only:
            h = h[:, -1:]  # (B, 1, C)
        h = self.dropout(h) * self.config.d_model ** -0.5  # (B, T, C) rescale: the output matrix is E
        return h @ self.shared.weight.T  # (B, T, V)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                decoder_input_ids: Tensor | None = None, labels: Tensor | None = None) -> Seq2SeqOutput:
        """Teacher forcing: ``decoder_input_ids`` defaults to ``labels`` shifted right with the start token."""
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("T5.forward needs decoder_input_ids or labels")
            decoder_input_ids = shift_right(labels, self.config.pad_id)
        memory = self.encode(input_ids, attention_mask)  # (B, S, C)
        logits = self.decode(decoder_input_ids, memory, attention_mask)  # (B, T, V)
        loss = None
        if labels is not None:
            if labels.shape != decoder_input_ids.shape:
                raise ValueError(f"labels {tuple(labels.shape)} and decoder_input_ids "
                                 f"{tuple(decoder_input_ids.shape)} must have the same shape")
            loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
        return Seq2SeqOutput(logits, loss)

    @torch.no_grad()
    def generate_greedy(self, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                        max_new_tokens: int = 32,
                        allowed_tokens: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """y_t = argmax_v p(v | y_<t, x), starting from the start token; stops at EOS.

        The encoder runs once; the decoder is re-run on the growing prefix every step (no cache:
        outputs here are a few dozen tokens). Returns (B, L) ids without the start token; rows
        that finished early are padded with ``pad_id`` after their EOS.

        ``allowed_tokens`` (constrained decoding, Chapter 08) maps the tokens generated so far,
        (B, t) without the start token, to a (B, V) bool mask; the argmax is then taken over the
        allowed tokens only (see :class:`scratchlm.decoding.constrained.ItemSequenceConstraint`).
        """
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int; got {max_new_tokens!r}")
        cfg = self.config
        memory = self.encode(input_ids, attention_mask)  # (B, S, C)
        B = input_ids.shape[0]
        out = torch.full((B, 1), cfg.pad_id, dtype=torch.long, device=input_ids.device)  # (B, 1) start
        done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)  # (B,)
        for _ in range(max_new_tokens):
            logits = self.decode(out, memory, attention_mask, last_only=True)[:, -1]  # (B, V) newest position
            if allowed_tokens is not None:
                allowed = allowed_tokens(out[:, 1:])  # (B, V) bool
                if allowed.shape != logits.shape or allowed.dtype != torch.bool:
                    raise ValueError(f"allowed_tokens must return a bool mask of shape {tuple(logits.shape)}; "
                                     f"got {allowed.dtype} {tuple(allowed.shape)}")
                logits = logits.masked_fill(~allowed, float("-inf"))  # (B, V)
            nxt = logits.argmax(-1).masked_fill(done, cfg.pad_id)  # (B,)
            out = torch.cat([out, nxt[:, None]], dim=1)  # (B, t + 1)
            done |= nxt == cfg.eos_id
            if done.all():
                break
        return out[:, 1:]  # (B, L)


def shift_right(labels: Tensor, start_id: int) -> Tensor:
    """Decoder input for teacher forcing: ``[start, y_0, ..., y_{T-2}]``; -100 becomes ``start_id`` (pad)."""
    shifted = torch.full_like(labels, start_id)  # (B, T)
    shifted[:, 1:] = labels[:, :-1]  # (B, T-1)
    return shifted.masked_fill(shifted == IGNORE_INDEX, start_id)  # (B, T)


def load_hf_t5_state_dict(model: T5, hf_state: dict[str, Tensor]) -> None:
    """Copy a Hugging Face ``T5ForConditionalGeneration`` (v1.0, ReLU, tied, d_kv = d_model / heads).

    A name map, plus one rescaling: HF's T5 does not divide q·k by √d_head, ours does, so
    W_q ← √d_head · W_q.
    """
    cfg = model.config
    scale = (cfg.d_model // cfg.n_heads) ** 0.5
    ours: dict[str, Tensor] = {"shared.weight": hf_state["shared.weight"]}
    attn = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}

    def copy_attention(src: str, dst: str) -> None:
        for hf_name, our_name in attn.items():
            w = hf_state[f"{src}.{hf_name}.weight"]
            ours[f"{dst}.{our_name}.weight"] = w * scale if hf_name == "q" else w

    for stack, n_layers in (("encoder", cfg.n_encoder_layers), ("decoder", cfg.n_decoder_layers)):
        ff = 1 if stack == "encoder" else 2  # index of the FFN sub-layer inside an HF block
        for i in range(n_layers):
            hf, us = f"{stack}.block.{i}.layer", f"{stack}.layers.{i}"
            copy_attention(f"{hf}.0.SelfAttention", f"{us}.self_attn")
            ours[f"{us}.norm1.weight"] = hf_state[f"{hf}.0.layer_norm.weight"]
            if stack == "decoder":
                copy_attention(f"{hf}.1.EncDecAttention", f"{us}.cross_attn")
                ours[f"{us}.norm2.weight"] = hf_state[f"{hf}.1.layer_norm.weight"]
            ours[f"{us}.ffn.linear1.weight"] = hf_state[f"{hf}.{ff}.DenseReluDense.wi.weight"]
            ours[f"{us}.ffn.linear2.weight"] = hf_state[f"{hf}.{ff}.DenseReluDense.wo.weight"]
            ours[f"{us}.norm{ff + 1}.weight"] = hf_state[f"{hf}.{ff}.layer_norm.weight"]
        ours[f"{stack}.norm.weight"] = hf_state[f"{stack}.final_layer_norm.weight"]
        ours[f"{stack}_position_bias.relative_attention_bias.weight"] = hf_state[
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    model.load_state_dict(ours, strict=True)
