"""The encoder-decoder Transformer of Vaswani et al. (2017), assembled from :mod:`scratchlm.layers`.

Introduced in Chapter 05 (and the backbone of T5 in Chapter 08).

    src ids (B, S) ─ embed·√d + PE ─ Encoder ──────────────┐ memory (B, S, C)
    tgt ids (B, T) ─ embed·√d + PE ─ Decoder (causal, cross-attends to memory) ─ Linear ─ logits (B, T, V)

Teacher forcing: the decoder input is the target shifted right (it starts with BOS), and position
t is trained to predict target token t + 1; the causal mask keeps it from peeking ahead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..layers.blocks import Decoder, Encoder
from ..layers.feedforward import ACTIVATIONS
from ..layers.norms import LayerNorm
from ..layers.positional import SinusoidalPositionalEncoding


@dataclass
class EncoderDecoderConfig:
    """Sizes and switches of :class:`EncoderDecoderTransformer`. Defaults: Transformer-base."""

    src_vocab_size: int  # rows of the source embedding table
    tgt_vocab_size: int  # rows of the target embedding table = number of output logits
    d_model: int = 512  # C: width of the residual stream
    n_heads: int = 8  # attention heads per attention sublayer; must divide d_model
    n_encoder_layers: int = 6  # encoder blocks
    n_decoder_layers: int = 6  # decoder blocks
    d_ff: int = 2048  # hidden width of the feed-forward sublayer (usually 4·d_model)
    dropout: float = 0.1  # on embeddings+PE, attention weights, sublayer outputs and FFN hidden units
    activation: str = "relu"  # FFN non-linearity: "relu" (original), "gelu" or "gelu_tanh"
    norm_first: bool = False  # False: post-LN (Vaswani); True: pre-LN (Xiong et al.) + final LNs
    layer_norm_eps: float = 1e-5  # ε inside every LayerNorm
    bias: bool = True  # biases in Linear and LayerNorm layers
    max_len: int = 512  # longest source or target sequence (size of the sinusoidal table)
    pad_id: int = 0  # padding token id (greedy decoding fills finished rows with it)
    tie_output_projection: bool = True  # output Linear reuses the target embedding matrix
    share_embeddings: bool = False  # one embedding table for source and target (needs equal vocabs)

    def __post_init__(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "n_encoder_layers",
                     "n_decoder_layers", "d_ff", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model must be divisible by n_heads; got d_model={self.d_model}, "
                             f"n_heads={self.n_heads}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}; got {self.activation!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout!r}")
        if not 0 <= self.pad_id < self.tgt_vocab_size:
            raise ValueError(f"pad_id must be a target token id in [0, {self.tgt_vocab_size}); got {self.pad_id}")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError("share_embeddings needs src_vocab_size == tgt_vocab_size; got "
                             f"{self.src_vocab_size} and {self.tgt_vocab_size}")


def parameter_breakdown(cfg: EncoderDecoderConfig) -> dict[str, int]:
    """Closed-form parameter count of :class:`EncoderDecoderTransformer`, per component.

    With C = d_model, F = d_ff, b = 1 if biases else 0:
    attention 4C² + 4bC (W_Q, W_K, W_V, W_O), FFN 2CF + b(F + C), LayerNorm C + bC;
    encoder layer = attention + FFN + 2 LN; decoder layer = 2 attention + FFN + 3 LN;
    sinusoidal positions have no parameters. Introduced in Chapter 05.
    """
    c, f, b = cfg.d_model, cfg.d_ff, int(cfg.bias)
    attention = 4 * c * c + 4 * b * c
    ffn = 2 * c * f + b * (f + c)
    norm = c + b * c
    final_norm = norm if cfg.norm_first else 0
    le, ld = cfg.n_encoder_layers, cfg.n_decoder_layers
    return {
        "source embedding": 0 if cfg.share_embeddings else cfg.src_vocab_size * c,
        "target embedding": cfg.tgt_vocab_size * c,
        "encoder self-attention": le * attention,
        "encoder feed-forward": le * ffn,
        "encoder LayerNorms": le * 2 * norm + final_norm,
        "decoder self-attention": ld * attention,
        "decoder cross-attention": ld * attention,
        "decoder feed-forward": ld * ffn,
        "decoder LayerNorms": ld * 3 * norm + final_norm,
        "output projection": 0 if cfg.tie_output_projection else cfg.tgt_vocab_size * c,
    }


def count_parameters_formula(cfg: EncoderDecoderConfig) -> int:
    """Total of :func:`parameter_breakdown`; equals ``sum(p.numel() for p in model.parameters())``."""
    return sum(parameter_breakdown(cfg).values())


def init_transformer_weights(module: nn.Module, d_model: int) -> None:
    """The one init used for Chapter 05 models (apply with ``model.apply``).

    Linear weights: Xavier-uniform (as ``nn.Transformer``), biases 0; embeddings N(0, 1/d_model), so
    that after the ×√d_model scaling the token vectors have unit variance (Vaswani et al. §3.4);
    LayerNorm: γ = 1, β = 0.
    """
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=d_model**-0.5)
    elif isinstance(module, (LayerNorm, nn.LayerNorm)):
        nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class EncoderDecoderTransformer(nn.Module):
    """Token embeddings + sinusoidal positions + encoder + decoder + output projection.

    logits = Decoder(E_tgt[tgt]·√C + PE, Encoder(E_src[src]·√C + PE)) · W_outᵀ, with W_out = E_tgt
    when ``tie_output_projection``. Introduced in Chapter 05.
    """

    def __init__(self, cfg: EncoderDecoderConfig) -> None:
        super().__init__()
        if not isinstance(cfg, EncoderDecoderConfig):
            raise TypeError(f"cfg must be an EncoderDecoderConfig; got {type(cfg).__name__}")
        self.cfg = cfg
        c = cfg.d_model
        self.tgt_embed = nn.Embedding(cfg.tgt_vocab_size, c)
        self.src_embed = self.tgt_embed if cfg.share_embeddings else nn.Embedding(cfg.src_vocab_size, c)
        self.positions = SinusoidalPositionalEncoding(c, cfg.max_len, cfg.dropout)  # shared: no parameters
        stack = dict(d_model=c, n_heads=cfg.n_heads, d_ff=cfg.d_ff, dropout=cfg.dropout,
                     activation=cfg.activation, norm_first=cfg.norm_first,
                     layer_norm_eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.encoder = Encoder(cfg.n_encoder_layers, **stack)
        self.decoder = Decoder(cfg.n_decoder_layers, **stack)
        self.lm_head = nn.Linear(c, cfg.tgt_vocab_size, bias=False)
        self.apply(lambda m: init_transformer_weights(m, c))
        if cfg.tie_output_projection:
            self.lm_head.weight = self.tgt_embed.weight  # one (V, C) matrix for input and output
        self.embed_scale = math.sqrt(c)

    def _check_ids(self, name: str, ids: Tensor, vocab_size: int) -> None:
        if not isinstance(ids, Tensor) or ids.dtype not in (torch.int64, torch.int32):
            got = ids.dtype if isinstance(ids, Tensor) else type(ids).__name__
            raise TypeError(f"{name} must be an integer (long) tensor of token ids; got {got}")
        if ids.dim() != 2:
            raise ValueError(f"{name} must have shape (B, T); got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
            raise ValueError(f"{name} ids must lie in [0, {vocab_size}); got range "
                             f"[{int(ids.min())}, {int(ids.max())}]")

    def encode(self, src: Tensor, src_key_padding_mask: Tensor | None = None) -> Tensor:
        """src: (B, S) ids -> memory (B, S, C). src_key_padding_mask: (B, S) bool, True = padding."""
        self._check_ids("src", src, self.cfg.src_vocab_size)
        x = self.positions(self.src_embed(src) * self.embed_scale)  # (B, S, C)
        return self.encoder(x, key_padding_mask=src_key_padding_mask)  # (B, S, C)

    def decode(self, tgt: Tensor, memory: Tensor, tgt_key_padding_mask: Tensor | None = None,
               memory_key_padding_mask: Tensor | None = None) -> Tensor:
        """tgt: (B, T) decoder input ids, memory: (B, S, C) -> logits (B, T, V_tgt)."""
        self._check_ids("tgt", tgt, self.cfg.tgt_vocab_size)
        y = self.positions(self.tgt_embed(tgt) * self.embed_scale)  # (B, T, C)
        y = self.decoder(y, memory, tgt_key_padding_mask=tgt_key_padding_mask,
                         memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=True)  # (B, T, C)
        return self.lm_head(y)  # (B, T, V)

    def forward(self, src: Tensor, tgt: Tensor, src_key_padding_mask: Tensor | None = None,
                tgt_key_padding_mask: Tensor | None = None) -> Tensor:
        """src: (B, S), tgt: (B, T) (shifted right, starts with BOS) -> logits (B, T, V_tgt)."""
        memory = self.encode(src, src_key_padding_mask)  # (B, S, C)
        return self.decode(tgt, memory, tgt_key_padding_mask, src_key_padding_mask)  # (B, T, V)

    @torch.no_grad()
    def greedy_decode(self, src: Tensor, *, bos_id: int, max_new_tokens: int, eos_id: int | None = None,
                      src_key_padding_mask: Tensor | None = None) -> Tensor:
        """Encode once, then append argmax tokens one at a time. Returns (B, 1 + max_new_tokens) ids
        starting with BOS; after a row emits ``eos_id`` the rest of it is ``pad_id``. No KV cache
        (Chapter 06 adds one): step t re-runs the decoder on all t tokens."""
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int; got {max_new_tokens!r}")
        if max_new_tokens + 1 > self.cfg.max_len:
            raise ValueError(f"1 + max_new_tokens = {max_new_tokens + 1} exceeds max_len={self.cfg.max_len}")
        for name, tok in (("bos_id", bos_id), ("eos_id", eos_id)):
            if tok is not None and not 0 <= tok < self.cfg.tgt_vocab_size:
                raise ValueError(f"{name} must be in [0, {self.cfg.tgt_vocab_size}); got {tok}")
        memory = self.encode(src, src_key_padding_mask)  # (B, S, C)
        out = torch.full((src.shape[0], 1), bos_id, dtype=torch.long, device=src.device)  # (B, 1)
        finished = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)  # (B,)
        for _ in range(max_new_tokens):
            logits = self.decode(out, memory, memory_key_padding_mask=src_key_padding_mask)  # (B, t, V)
            next_token = logits[:, -1].argmax(dim=-1)  # (B,)
            next_token = next_token.masked_fill(finished, self.cfg.pad_id)  # (B,)
            out = torch.cat([out, next_token[:, None]], dim=1)  # (B, t + 1)
            if eos_id is not None:
                finished |= next_token == eos_id
                if bool(finished.all()):
                    pad = torch.full((src.shape[0], max_new_tokens + 1 - out.shape[1]), self.cfg.pad_id,
                                     dtype=torch.long, device=src.device)
                    return torch.cat([out, pad], dim=1)  # (B, 1 + max_new_tokens)
        return out  # (B, 1 + max_new_tokens)
