"""T5: a pre-norm encoder-decoder with RMSNorm and bucketed relative position biases.

Introduced in Chapter 08 (Raffel et al., 2020).

    x (B, S) -> E[x] -> N x pre-norm EncoderLayer (+ bidirectional bias b_enc) -> RMSNorm   memory (B, S, C)
    y_<t (B, T) -> E[y] -> N x pre-norm DecoderLayer (causal + b_dec, cross-attends memory) -> RMSNorm
      -> logits = (h · C^-1/2) Eᵀ (tied)                                                         (B, T, V)
    L_T5 = -(1/N) Σ_t log p(y_t | y_<t, x)   (teacher forcing: decoder input = targets shifted right;
                                               the mean over the N labelled target tokens)

Positions: T5-style *relative* position biases (:mod:`scratchlm.layers.relative_position`), not
absolute embeddings; the bias is computed once per stack and shared by all layers; cross-attention
has none.

Reuse: the blocks are Chapter 05's :class:`~scratchlm.layers.EncoderLayer` /
:class:`~scratchlm.layers.DecoderLayer` with ``norm_first=True, bias=False, norm="rmsnorm"`` — T5's
block is exactly a bias-free pre-norm block with RMSNorm. The only numerical difference from
Hugging Face's T5 is where 1/√d_head lives: our attention scales q·k by 1/√d_head, T5 folds it
into the initialisation of W_q. Loading therefore multiplies W_q by √d_head and saving divides it
back, after which the logits agree (tested both ways).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from ..errors import CheckpointError
from ..layers import Decoder, Encoder, KVCache, cache_for
from ..layers.relative_position import RelativePositionBias, relative_position_bucket
from .base import (
    PreTrainedModel,
    build_config,
    check_ids_tensor,
    check_same_shape,
    shift_right,
    token_cross_entropy,
)
from .outputs import ModelOutput

__all__ = ["T5", "T5Config", "relative_position_bucket", "shift_right"]


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
    norm_eps: float = 1e-6  # ε inside RMSNorm
    pad_id: int = 0  # padding id; also the decoder start token, as in T5
    eos_id: int = 1  # end-of-sequence id; greedy decoding stops there
    is_encoder_decoder: ClassVar[bool] = True

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

    @property
    def decoder_start_id(self) -> int:
        return self.pad_id


class T5(PreTrainedModel):
    """The T5 encoder-decoder (v1.0 layout: ReLU FFN, tied embeddings). Introduced in Chapter 08."""

    config_class = T5Config

    def __init__(self, cfg: T5Config) -> None:
        super().__init__(cfg)
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)  # one table: inputs, targets, output
        common = dict(d_model=cfg.d_model, n_heads=cfg.n_heads, d_ff=cfg.d_ff, dropout=cfg.dropout,
                      activation="relu", norm_first=True, final_norm=True, bias=False, norm="rmsnorm",
                      layer_norm_eps=cfg.norm_eps)
        self.encoder = Encoder(cfg.n_encoder_layers, **common)
        self.decoder = Decoder(cfg.n_decoder_layers, **common)
        self.encoder_position_bias = RelativePositionBias(cfg.n_heads, cfg.num_buckets, cfg.max_distance, True)
        self.decoder_position_bias = RelativePositionBias(cfg.n_heads, cfg.num_buckets, cfg.max_distance, False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        self.lm_head.weight = self.shared.weight  # tied: the output matrix is the embedding E
        nn.init.normal_(self.shared.weight, 0.0, 1.0)  # unit-scale embeddings (no √C scaling at the input)
        for bias in (self.encoder_position_bias, self.decoder_position_bias):
            nn.init.normal_(bias.relative_attention_bias.weight, 0.0, cfg.d_model ** -0.5)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):  # T5: std = fan_in^-1/2, so activations keep unit scale
            nn.init.normal_(module.weight, 0.0, module.in_features ** -0.5)

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None, *,
               output_attentions: bool = False, output_hidden_states: bool = False):
        """input_ids (B, S), attention_mask (B, S) 1 = token -> memory (B, S, C) (a StackOutput when
        attentions or hidden states are asked for)."""
        check_ids_tensor("input_ids", input_ids)
        check_same_shape("attention_mask", attention_mask, input_ids)
        S = input_ids.shape[1]
        x = self.dropout(self.shared(input_ids))  # (B, S, C)
        bias = self.encoder_position_bias(S, S, input_ids.device)  # (1, H, S, S)
        if attention_mask is not None:
            bias = bias.masked_fill(attention_mask[:, None, None, :] == 0, float("-inf"))  # (B, H, S, S)
        out = self.encoder(x, mask=bias, output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states)
        if isinstance(out, Tensor):
            return self.dropout(out)  # (B, S, C)
        return out._replace(last_hidden_state=self.dropout(out.last_hidden_state))

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                labels: Tensor | None = None, *, decoder_input_ids: Tensor | None = None,
                encoder_outputs: Tensor | None = None, past_key_values: KVCache | None = None,
                use_cache: bool = False, output_attentions: bool = False,
                output_hidden_states: bool = False) -> ModelOutput:
        """Teacher forcing: ``decoder_input_ids`` defaults to ``labels`` shifted right with the start token.

        ``labels`` (B, T) are the target tokens (−100 = no loss) aligned with the logits.
        ``encoder_outputs`` (B, S, C) skips the encoder (generation encodes once); with a KV cache
        (``past_key_values`` / ``use_cache``) ``decoder_input_ids`` holds only the new tokens.
        """
        cfg = self.config
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("T5.forward needs decoder_input_ids or labels")
            decoder_input_ids = shift_right(labels, cfg.decoder_start_id)
        check_ids_tensor("decoder_input_ids", decoder_input_ids)
        check_same_shape("labels", labels, decoder_input_ids, "decoder_input_ids")
        enc = None
        if encoder_outputs is None:
            if input_ids is None:
                raise ValueError("T5.forward needs input_ids (or encoder_outputs)")
            enc = self.encode(input_ids, attention_mask, output_attentions=output_attentions,
                              output_hidden_states=output_hidden_states)
            memory = enc if isinstance(enc, Tensor) else enc.last_hidden_state  # (B, S, C)
        else:
            memory = encoder_outputs  # (B, S, C)
        cache = cache_for(past_key_values, use_cache)
        past = 0 if cache is None else cache.seq_length()
        T = decoder_input_ids.shape[1]
        y = self.dropout(self.shared(decoder_input_ids))  # (B, T, C)
        bias = self.decoder_position_bias(T, past + T, decoder_input_ids.device, offset=past)  # (1, H, T, past+T)
        padding = None if attention_mask is None else attention_mask == 0  # (B, S) True = padding
        dec = self.decoder(y, memory, tgt_mask=bias, memory_key_padding_mask=padding, tgt_is_causal=True,
                           cache=cache, output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states)
        h = dec if isinstance(dec, Tensor) else dec.last_hidden_state  # (B, T, C)
        logits = self.lm_head(self.dropout(h) * cfg.d_model ** -0.5)  # (B, T, V) rescale: the output matrix is E
        loss = None if labels is None else token_cross_entropy(logits, labels)
        extras = {}
        if not isinstance(dec, Tensor):
            extras = dict(hidden_states=dec.hidden_states,
                          attentions=dec.attentions)
        return ModelOutput(logits=logits, loss=loss, last_hidden_state=h, past_key_values=cache,
                           encoder_last_hidden_state=memory, **extras)

    def input_limits(self) -> dict[str, int]:
        return {"input_ids": self.config.vocab_size, "labels": self.config.vocab_size,
                "max_length": 1 << 30}  # relative positions: no table to run out of

    # ---- Hugging Face T5ForConditionalGeneration --------------------------------------------
    def config_to_hf(self) -> dict[str, Any]:
        c = self.config
        return {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "is_encoder_decoder": True,
                "vocab_size": c.vocab_size, "d_model": c.d_model, "d_kv": c.d_model // c.n_heads, "d_ff": c.d_ff,
                "num_layers": c.n_encoder_layers, "num_decoder_layers": c.n_decoder_layers, "num_heads": c.n_heads,
                "relative_attention_num_buckets": c.num_buckets, "relative_attention_max_distance": c.max_distance,
                "dropout_rate": c.dropout, "layer_norm_epsilon": c.norm_eps, "feed_forward_proj": "relu",
                "tie_word_embeddings": True, "pad_token_id": c.pad_id, "eos_token_id": c.eos_id,
                "decoder_start_token_id": c.pad_id, "scratchlm": {"model": "T5", **asdict(c)}}

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any], path: str, **overrides) -> T5Config:
        if hf.get("model_type") != "t5":
            raise CheckpointError(path, f"expected a T5 config (model_type 't5'); got {hf.get('model_type')!r}")
        missing = [k for k in ("vocab_size", "d_model", "d_ff", "num_layers", "num_heads") if k not in hf]
        if missing:
            raise CheckpointError(path, f"missing fields {missing}")
        if hf.get("feed_forward_proj", "relu") != "relu" or not hf.get("tie_word_embeddings", True):
            raise CheckpointError(path, "only T5 v1.0 (ReLU FFN, tied embeddings) is supported")
        if hf.get("d_kv", hf["d_model"] // hf["num_heads"]) * hf["num_heads"] != hf["d_model"]:
            raise CheckpointError(path, "only d_kv = d_model / num_heads is supported")
        cfg = dict(vocab_size=hf["vocab_size"], d_model=hf["d_model"], n_heads=hf["num_heads"], d_ff=hf["d_ff"],
                   n_encoder_layers=hf["num_layers"], n_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
                   dropout=hf.get("dropout_rate", 0.1), num_buckets=hf.get("relative_attention_num_buckets", 32),
                   max_distance=hf.get("relative_attention_max_distance", 128),
                   norm_eps=hf.get("layer_norm_epsilon", 1e-6), pad_id=hf.get("pad_token_id", 0),
                   eos_id=hf.get("eos_token_id", 1))
        return build_config(T5Config, cfg, overrides, path)

    def _name_map(self) -> dict[str, tuple[str, float]]:
        """Our parameter name -> (HF name, factor ours = factor · theirs)."""
        cfg = self.config
        scale = (cfg.d_model // cfg.n_heads) ** 0.5  # HF's W_q has 1/√d_head folded in; ours does not
        out = {"shared.weight": ("shared.weight", 1.0)}
        attn = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}
        for stack, n_layers in (("encoder", cfg.n_encoder_layers), ("decoder", cfg.n_decoder_layers)):
            ff = 1 if stack == "encoder" else 2  # index of the FFN sub-layer inside an HF block
            for i in range(n_layers):
                hf, us = f"{stack}.block.{i}.layer", f"{stack}.layers.{i}"
                blocks = [("0.SelfAttention", "self_attn", "norm1", "0")]
                if stack == "decoder":
                    blocks.append(("1.EncDecAttention", "cross_attn", "norm2", "1"))
                for hf_attn, our_attn, norm, idx in blocks:
                    for h, o in attn.items():
                        out[f"{us}.{our_attn}.{o}.weight"] = (f"{hf}.{hf_attn}.{h}.weight", scale if h == "q" else 1.0)
                    out[f"{us}.{norm}.weight"] = (f"{hf}.{idx}.layer_norm.weight", 1.0)
                out[f"{us}.ffn.linear1.weight"] = (f"{hf}.{ff}.DenseReluDense.wi.weight", 1.0)
                out[f"{us}.ffn.linear2.weight"] = (f"{hf}.{ff}.DenseReluDense.wo.weight", 1.0)
                out[f"{us}.norm{ff + 1}.weight"] = (f"{hf}.{ff}.layer_norm.weight", 1.0)
            out[f"{stack}.norm.weight"] = (f"{stack}.final_layer_norm.weight", 1.0)
            out[f"{stack}_position_bias.relative_attention_bias.weight"] = (
                f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", 1.0)
        return out

    def hf_state_dict(self) -> dict[str, Tensor]:
        ours = self.state_dict()
        return {theirs: ours[name] / factor for name, (theirs, factor) in self._name_map().items()}

    def load_hf_state_dict(self, tensors: dict[str, Tensor]) -> None:
        tensors = {k: v for k, v in tensors.items() if k not in ("lm_head.weight", "encoder.embed_tokens.weight",
                                                                  "decoder.embed_tokens.weight")}  # tied copies
        mapped = {}
        for name, (theirs, factor) in self._name_map().items():
            if theirs not in tensors:
                raise CheckpointError("model.safetensors", f"missing tensor {theirs!r} (for {name})")
            mapped[name] = tensors.pop(theirs) * factor
        if tensors:
            raise CheckpointError("model.safetensors", f"unexpected tensors {sorted(tensors)[:4]} ({len(tensors)})")
        self._load_mapped(mapped)
