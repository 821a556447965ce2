"""The encoder-decoder Transformer of Vaswani et al. (2017), assembled from :mod:`scratchlm.layers`.

Introduced in Chapter 05 (and the backbone of T5 in Chapter 08).

    src ids (B, S) ─ embed·√d + PE ─ Encoder ──────────────┐ memory (B, S, C)
    tgt ids (B, T) ─ embed·√d + PE ─ Decoder (causal, cross-attends to memory) ─ Linear ─ logits (B, T, V)

Teacher forcing: the decoder input is the target shifted right (it starts with BOS), and position
t is trained to predict target token t + 1; the causal mask keeps it from peeking ahead.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from ..errors import CheckpointError
from ..layers import (
    ACTIVATIONS,
    Decoder,
    Encoder,
    KVCache,
    LayerNorm,
    SinusoidalPositionalEncoding,
    cache_for,
)
from .base import (
    PreTrainedModel,
    build_config,
    check_ids_tensor,
    check_same_shape,
    shift_right,
    token_cross_entropy,
)
from .outputs import ModelOutput


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
    norm_eps: float = 1e-5  # ε inside every LayerNorm
    bias: bool = True  # biases in Linear and LayerNorm layers
    max_len: int = 512  # longest source or target sequence (size of the sinusoidal table)
    pad_id: int = 0  # padding token id (generation fills finished rows with it)
    decoder_start_id: int | None = None  # first decoder input (BOS); needed to build it from labels
    eos_id: int | None = None  # end of a target; generation stops a row there
    tie_output_projection: bool = True  # output Linear reuses the target embedding matrix
    share_embeddings: bool = False  # one embedding table for source and target (needs equal vocabs)
    is_encoder_decoder: ClassVar[bool] = True

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
        for name in ("decoder_start_id", "eos_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.tgt_vocab_size:
                raise ValueError(f"{name} must be None or a target token id in [0, {self.tgt_vocab_size}); got {value}")
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


class EncoderDecoderTransformer(PreTrainedModel):
    """Token embeddings + sinusoidal positions + encoder + decoder + output projection.

    logits = Decoder(E_tgt[tgt]·√C + PE, Encoder(E_src[src]·√C + PE)) · W_outᵀ, with W_out = E_tgt
    when ``tie_output_projection``. Follows the model contract: ``forward(input_ids, attention_mask,
    labels, decoder_input_ids=...)`` returns a :class:`ModelOutput`. Introduced in Chapter 05.
    """

    config_class = EncoderDecoderConfig

    def __init__(self, cfg: EncoderDecoderConfig) -> None:
        super().__init__(cfg)
        c = cfg.d_model
        self.tgt_embed = nn.Embedding(cfg.tgt_vocab_size, c)
        self.src_embed = self.tgt_embed if cfg.share_embeddings else nn.Embedding(cfg.src_vocab_size, c)
        self.positions = SinusoidalPositionalEncoding(c, cfg.max_len, cfg.dropout)  # shared: no parameters
        stack = dict(d_model=c, n_heads=cfg.n_heads, d_ff=cfg.d_ff, dropout=cfg.dropout,
                     activation=cfg.activation, norm_first=cfg.norm_first,
                     layer_norm_eps=cfg.norm_eps, bias=cfg.bias)
        self.encoder = Encoder(cfg.n_encoder_layers, **stack)
        self.decoder = Decoder(cfg.n_decoder_layers, **stack)
        self.lm_head = nn.Linear(c, cfg.tgt_vocab_size, bias=False)
        self.apply(lambda m: init_transformer_weights(m, c))
        if cfg.tie_output_projection:
            self.lm_head.weight = self.tgt_embed.weight  # one (V, C) matrix for input and output
        self.embed_scale = math.sqrt(c)

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """input_ids (B, S) source ids, attention_mask (B, S) 1 = token -> memory (B, S, C)."""
        check_ids_tensor("input_ids", input_ids)
        check_same_shape("attention_mask", attention_mask, input_ids)
        x = self.positions(self.src_embed(input_ids) * self.embed_scale)  # (B, S, C)
        padding = None if attention_mask is None else attention_mask == 0  # (B, S) True = padding
        return self.encoder(x, key_padding_mask=padding)  # (B, S, C)

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                labels: Tensor | None = None, *, decoder_input_ids: Tensor | None = None,
                decoder_attention_mask: Tensor | None = None, encoder_outputs: Tensor | None = None,
                past_key_values: KVCache | None = None, use_cache: bool = False) -> ModelOutput:
        """Teacher forcing: ``decoder_input_ids`` (B, T) start with BOS (default: ``labels`` shifted right
        behind ``config.decoder_start_id``); ``labels`` (B, T) are the targets (−100 = no loss).

        ``decoder_attention_mask`` (B, T_past + T) 1 = token; ``encoder_outputs`` (B, S, C) skips the
        encoder; a KV cache makes ``decoder_input_ids`` only the new tokens (generation).
        """
        if decoder_input_ids is None:
            if labels is None or self.config.decoder_start_id is None:
                raise ValueError("EncoderDecoderTransformer.forward needs decoder_input_ids, or labels and a "
                                 "config.decoder_start_id to build them")
            decoder_input_ids = shift_right(labels, self.config.decoder_start_id)
        check_ids_tensor("decoder_input_ids", decoder_input_ids)
        check_same_shape("labels", labels, decoder_input_ids, "decoder_input_ids")
        if encoder_outputs is None:
            if input_ids is None:
                raise ValueError("EncoderDecoderTransformer.forward needs input_ids (or encoder_outputs)")
            encoder_outputs = self.encode(input_ids, attention_mask)  # (B, S, C)
        cache = cache_for(past_key_values, use_cache)
        past = 0 if cache is None else cache.seq_length()
        y = self.positions(self.tgt_embed(decoder_input_ids) * self.embed_scale, offset=past)  # (B, T, C)
        tgt_padding = None if decoder_attention_mask is None else decoder_attention_mask == 0  # (B, T_past + T)
        mem_padding = None if attention_mask is None else attention_mask == 0  # (B, S)
        h = self.decoder(y, encoder_outputs, tgt_key_padding_mask=tgt_padding, memory_key_padding_mask=mem_padding,
                         tgt_is_causal=True, cache=cache)  # (B, T, C)
        logits = self.lm_head(h)  # (B, T, V)
        loss = None if labels is None else token_cross_entropy(logits, labels)
        return ModelOutput(logits=logits, loss=loss, last_hidden_state=h, past_key_values=cache,
                           encoder_last_hidden_state=encoder_outputs)

    def input_limits(self) -> dict[str, int]:
        return {"input_ids": self.config.src_vocab_size, "decoder_input_ids": self.config.tgt_vocab_size,
                "labels": self.config.tgt_vocab_size, "max_length": self.config.max_len}

    # ---- saving: no Hugging Face class holds this model, so the directory is scratchlm's own ----
    def config_to_hf(self) -> dict[str, Any]:
        return {"model_type": "scratchlm-transformer", "scratchlm": {"model": "EncoderDecoderTransformer",
                                                                     **asdict(self.config)}}

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any], path: str, **overrides) -> EncoderDecoderConfig:
        if hf.get("model_type") != "scratchlm-transformer" or not isinstance(hf.get("scratchlm"), dict):
            raise CheckpointError(path, f"expected a scratchlm encoder-decoder config (model_type "
                                        f"'scratchlm-transformer'); got {hf.get('model_type')!r}")
        return build_config(EncoderDecoderConfig, hf["scratchlm"], overrides, path)

    def hf_state_dict(self) -> dict[str, Tensor]:
        aliases = self._tied_aliases()
        return {k: v for k, v in self.state_dict().items() if k not in aliases}

    def load_hf_state_dict(self, tensors: dict[str, Tensor]) -> None:
        self._load_mapped(dict(tensors))
