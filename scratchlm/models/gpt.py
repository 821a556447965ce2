"""A GPT (decoder-only transformer language model), nanoGPT style (introduced in Chapter 06).

    h_0 = W_te[x] + W_pe[positions]                                   token + learned position
    h_l = h_{l-1} + Attn(LN_1(h_{l-1}));  h_l = h_l + MLP(LN_2(h_l))   pre-norm block, l = 1..L
    p(w_i | w_<i) = softmax(LN_f(h_L) W_teᵀ)_i                        tied output embedding
    L = −(1/N) Σ_i log p(w_i | w_<i)                                  next-token cross-entropy

The blocks are Chapter 05's :class:`~scratchlm.layers.EncoderLayer` in its pre-LN, causal form with
one fused q/k/v projection — the same class BERT and T5 use — so adapters, LoRA and quantization
(Chapters 10–12) reach GPT through the same hook points and layers. Options for Chapter 06's speed
run (``positions="rope"``, ``qk_norm``, ``activation="relu2"``/``"swiglu"``, ``norm="rmsnorm"``,
untied head) are config fields, not forks.

Names above the blocks are Hugging Face GPT-2's (``transformer.wte``, ``transformer.h``,
``transformer.ln_f``, ``lm_head``); inside a block they are Chapter 05's, and
:data:`HF_GPT2_LAYER_MAP` translates (plus a transpose: HF stores these layers as ``Conv1D`` with
(in, out) weights where ``nn.Linear`` keeps (out, in)). Saved models load in ``GPT2LMHeadModel``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from ..layers import (
    ACTIVATIONS,
    NORMS,
    EncoderLayer,
    KVCache,
    LayerNorm,
    RMSNorm,
    RotaryEmbedding,
    cache_for,
    make_norm,
)
from .base import (
    PreTrainedModel,
    build_config,
    check_ids_tensor,
    check_same_shape,
    shift_for_causal_lm,
    token_cross_entropy,
)
from .outputs import ModelOutput


@dataclass
class GPTConfig:
    """Sizes and switches of a GPT. Defaults are GPT-2 small (124 M parameters)."""

    vocab_size: int = 50257  # number of token ids (GPT-2's BPE: 50,257)
    block_size: int = 1024  # longest context (HF: n_positions); size of the position table
    n_layers: int = 12  # transformer blocks
    n_heads: int = 12  # attention heads per block
    d_model: int = 768  # width of the residual stream C (head_dim = C / n_heads)
    d_ff: int | None = None  # hidden width of the MLP; None: 4 · d_model
    dropout: float = 0.0  # on embeddings, attention weights and residual branches (training only)
    bias: bool = True  # biases in Linear and LayerNorm (GPT-2: True; nanoGPT allows False)
    norm_eps: float = 1e-5  # normalisation epsilon (HF: layer_norm_epsilon)
    activation: str = "gelu_tanh"  # MLP non-linearity: GPT-2's "gelu_tanh", exact "gelu", "relu2", "swiglu"
    norm: str = "layernorm"  # "layernorm" (GPT-2) or "rmsnorm"
    positions: str = "learned"  # "learned" absolute table (GPT-2) or "rope" (rotary, no table)
    rope_base: float = 10000.0  # RoPE frequency base θ
    qk_norm: bool = False  # RMSNorm on every query and key head before the dot product
    tie_embeddings: bool = True  # output layer reuses the token embedding (Press & Wolf, 2017)
    attn_impl: str = "sdpa"  # "sdpa" (fused kernel) or "reference" (explicit softmax), Chapter 03

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layers", "n_heads", "d_model"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int; got {value!r}")
        if self.d_ff is not None and (not isinstance(self.d_ff, int) or self.d_ff < 1):
            raise ValueError(f"GPTConfig.d_ff must be None or a positive int; got {self.d_ff!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"GPTConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1); got {self.dropout}")
        choices = {"activation": tuple(ACTIVATIONS), "norm": NORMS, "positions": ("learned", "rope"),
                   "attn_impl": ("sdpa", "reference")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"GPTConfig.{name} must be one of {allowed}; got {getattr(self, name)!r}")
        if self.positions == "rope" and (self.d_model // self.n_heads) % 2:
            raise ValueError(f"GPTConfig: rotary positions need an even head dimension; got "
                             f"{self.d_model // self.n_heads}")

    @property
    def ffn_width(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model


HF_GPT2_LAYER_MAP = {  # inside transformer.h.N: Hugging Face GPT-2 name -> ours (Chapter 05 names)
    "ln_1": "norm1",
    "attn.c_attn": "self_attn.qkv_proj",
    "attn.c_proj": "self_attn.out_proj",
    "ln_2": "norm2",
    "mlp.c_fc": "ffn.linear1",
    "mlp.c_proj": "ffn.linear2",
}
HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HF_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}


class GPT(PreTrainedModel):
    """Decoder-only language model with GPT-2's layout. Introduced in Chapter 06."""

    config_class = GPTConfig

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config)
        c = config
        parts = dict(wte=nn.Embedding(c.vocab_size, c.d_model))  # token embedding (V, C)
        if c.positions == "learned":
            parts["wpe"] = nn.Embedding(c.block_size, c.d_model)  # position embedding (T_max, C)
        parts["drop"] = nn.Dropout(c.dropout)
        parts["h"] = nn.ModuleList([
            EncoderLayer(c.d_model, c.n_heads, c.ffn_width, c.dropout, c.activation, norm_first=True,
                         layer_norm_eps=c.norm_eps, bias=c.bias, norm=c.norm, fused_qkv=True, qk_norm=c.qk_norm,
                         ffn_hidden_dropout=False, attn_impl=c.attn_impl)
            for _ in range(c.n_layers)
        ])
        parts["ln_f"] = make_norm(c.norm, c.d_model, c.norm_eps, c.bias)
        self.transformer = nn.ModuleDict(parts)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:  # saves V x C parameters; "similar input tokens" = "similar predictions"
            self.transformer.wte.weight = self.lm_head.weight
        if c.positions == "rope":  # one table of angles, shared by every layer (buffers, not parameters)
            rotary = RotaryEmbedding(c.d_model // c.n_heads, c.block_size, base=c.rope_base)
            for block in self.transformer.h:
                block.self_attn.rotary = rotary
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2 initialisation: N(0, 0.02) for Linear and Embedding weights, zero biases, and
        N(0, 0.02/√(2L)) for the projections that write into the residual stream (``out_proj``,
        ``ffn.linear2``).

        Why the scaled residual projections: each of the 2L residual branches adds a roughly
        independent term to the stream, so its variance grows like 2L x var(branch); dividing the
        std by √(2L) keeps the stream's scale independent of depth at initialisation.
        """
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                std = residual_std if name.endswith(("out_proj", "linear2")) else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, (LayerNorm, RMSNorm)):
                nn.init.ones_(module.weight)  # LayerNorm / RMSNorm gains
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count (tied weights once); ``non_embedding`` leaves out the position table,
        as nanoGPT and the scaling-law papers do (the token table is the output layer too)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding and "wpe" in self.transformer else n

    # ---- forward -------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        *,
        position_ids: Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        """Logits for every position of ``input_ids`` (B, T), the loss when ``labels`` are given.

        Args:
            attention_mask: (B, T_past + T) 1 = real token, 0 = padding (left padding for batched
                prompts). Positions then count real tokens only, so a padded row matches the same
                prompt run alone.
            labels: (B, T) *unshifted* targets (usually ``input_ids``; −100 = no loss): position t is
                scored on labels[t + 1].
            position_ids: (B, T) explicit positions; default: continue after the cache.
            past_key_values: a :class:`~scratchlm.layers.KVCache` holding the earlier positions;
                ``use_cache=True`` creates one if needed and returns it, grown.
            output_attentions / output_hidden_states: every layer's weights (reference path) /
                every layer's output.
        """
        check_ids_tensor("input_ids", input_ids)
        B, T = input_ids.shape
        cache = cache_for(past_key_values, use_cache)
        past_len = 0 if cache is None else cache.seq_length()
        if past_len + T > self.config.block_size:
            raise ValueError(f"sequence of {past_len + T} tokens (cache {past_len} + {T} new) exceeds "
                             f"block_size={self.config.block_size}")
        padding = None
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (B, past_len + T):
                raise ValueError(f"attention_mask must have shape (B, T_past + T) = {(B, past_len + T)}; "
                                 f"got {tuple(attention_mask.shape)}")
            padding = attention_mask == 0  # (B, T_past + T) True = padding key
            if position_ids is None:  # count real tokens: the first real token is position 0
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past_len:]  # (B, T)
        check_same_shape("position_ids", position_ids, input_ids)
        check_same_shape("labels", labels, input_ids)

        x = self.transformer.wte(input_ids)  # (B, T, C)
        if "wpe" in self.transformer:
            pos = position_ids if position_ids is not None else torch.arange(past_len, past_len + T,
                                                                             device=input_ids.device)
            x = x + self.transformer.wpe(pos)  # (B, T, C)
        x = self.transformer.drop(x)  # (B, T, C)
        causal = not (past_len > 0 and T == 1)  # one new query sees every cached key: SDPA's fastest path
        hidden = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        for i, block in enumerate(self.transformer.h):
            out = block(x, key_padding_mask=padding, is_causal=causal, cache=cache, layer_idx=i,
                        positions=position_ids, need_weights=output_attentions)
            x = out[0] if output_attentions else out  # (B, T, C)
            if output_attentions:
                attentions.append(out[1])  # (B, H, T, T_past + T)
            if output_hidden_states:
                hidden.append(x)
        x = self.transformer.ln_f(x)  # (B, T, C)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None if labels is None else token_cross_entropy(*shift_for_causal_lm(logits, labels))
        return ModelOutput(logits=logits, loss=loss, last_hidden_state=x, past_key_values=cache,
                           hidden_states=None if hidden is None else tuple(hidden),
                           attentions=None if attentions is None else tuple(attentions))

    def input_limits(self) -> dict[str, int]:
        return {"input_ids": self.config.vocab_size, "labels": self.config.vocab_size,
                "max_length": self.config.block_size}

    def configure_optimizers(self, *, learning_rate: float, weight_decay: float,
                             betas: tuple[float, float], eps: float = 1e-8,
                             fused: bool | None = None) -> torch.optim.AdamW:
        """AdamW where matrices (embeddings, Linear weights) decay and biases / norm gains don't;
        the fused kernel when the device has one (see :func:`scratchlm.training.adamw_with_decay_groups`)."""
        from ..training.optim import adamw_with_decay_groups

        return adamw_with_decay_groups(self.named_parameters(), learning_rate=learning_rate,
                                       weight_decay=weight_decay, betas=betas, eps=eps, fused=fused)

    # ---- Hugging Face GPT-2 format ------------------------------------------------------------
    @property
    def gpt2_compatible(self) -> bool:
        """Whether ``GPT2LMHeadModel`` can hold this model (learned positions, LayerNorm, plain MLP)."""
        c = self.config
        return (c.positions == "learned" and c.norm == "layernorm" and not c.qk_norm
                and c.activation in HF_ACTIVATIONS)

    def config_to_hf(self) -> dict[str, Any]:
        c = self.config
        hf = {"scratchlm": {"model": "GPT", **asdict(c)}}  # exact round trip (bias=False, options)
        if not self.gpt2_compatible:
            return {**hf, "model_type": "scratchlm-gpt"}
        return {**hf, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": c.vocab_size,
                "n_positions": c.block_size, "n_embd": c.d_model, "n_layer": c.n_layers, "n_head": c.n_heads,
                "n_inner": c.d_ff, "activation_function": HF_ACTIVATIONS[c.activation],
                "layer_norm_epsilon": c.norm_eps, "resid_pdrop": c.dropout, "embd_pdrop": c.dropout,
                "attn_pdrop": c.dropout, "tie_word_embeddings": c.tie_embeddings, "bos_token_id": None,
                "eos_token_id": None}

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any], path: str, **overrides) -> GPTConfig:
        if isinstance(hf.get("scratchlm"), dict):  # saved by us: the exact config
            cfg = hf["scratchlm"]
        else:
            if hf.get("model_type") != "gpt2":
                raise CheckpointError(path, f"expected a GPT-2 config (model_type 'gpt2'); got {hf.get('model_type')!r}")
            missing = [k for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head") if k not in hf]
            if missing:
                raise CheckpointError(path, f"missing fields {missing}")
            act = {v: k for k, v in HF_ACTIVATIONS.items()} | {"gelu_pytorch_tanh": "gelu_tanh"}
            if hf.get("activation_function", "gelu_new") not in act:
                raise CheckpointError(path, f"unsupported activation_function {hf.get('activation_function')!r}")
            for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention", "reorder_and_upcast_attn"):
                if hf.get(flag):
                    raise CheckpointError(path, f"GPT-2 variant with {flag}=True is not supported")
            cfg = dict(vocab_size=hf["vocab_size"], block_size=hf["n_positions"], d_model=hf["n_embd"],
                       n_layers=hf["n_layer"], n_heads=hf["n_head"], d_ff=hf.get("n_inner"), bias=True,
                       norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                       activation=act[hf.get("activation_function", "gelu_new")],
                       tie_embeddings=hf.get("tie_word_embeddings", True))
        return build_config(GPTConfig, cfg, overrides, path)

    def hf_state_dict(self) -> dict[str, Tensor]:
        """Our tensors under GPT-2's names (Conv1D weights transposed; zero biases if bias=False)."""
        out: dict[str, Tensor] = {}
        inverse = {ours: theirs for theirs, ours in HF_GPT2_LAYER_MAP.items()}
        for name, tensor in self.state_dict().items():
            if name == "lm_head.weight" and self.config.tie_embeddings:
                continue  # tied: stored once, as transformer.wte.weight
            if name.startswith("transformer.h.") and self.gpt2_compatible:
                _, _, i, rest = name.split(".", 3)
                module, kind = rest.rsplit(".", 1)
                name = f"transformer.h.{i}.{inverse[module]}.{kind}"
                if name.endswith(HF_TRANSPOSED):
                    tensor = tensor.t()
            out[name] = tensor
        if not self.config.bias and self.gpt2_compatible:  # GPT-2 always has biases: write zeros
            for i in range(self.config.n_layers):
                for module, width in (("ln_1", 1), ("attn.c_attn", 3), ("attn.c_proj", 1), ("ln_2", 1),
                                      ("mlp.c_fc", self.config.ffn_width / self.config.d_model), ("mlp.c_proj", 1)):
                    out[f"transformer.h.{i}.{module}.bias"] = torch.zeros(int(width * self.config.d_model))
            out["transformer.ln_f.bias"] = torch.zeros(self.config.d_model)
        return out

    def load_hf_state_dict(self, tensors: dict[str, Tensor]) -> None:
        """Load GPT-2-named tensors (with or without the ``transformer.`` prefix) or our own names."""
        own = self.state_dict()
        mapped: dict[str, Tensor] = {}
        for key, tensor in tensors.items():
            name = key if key.startswith(("transformer.", "lm_head.")) else "transformer." + key
            if name.endswith((".attn.bias", ".attn.masked_bias")):
                continue  # causal-mask buffers of older HF versions, not parameters
            if name.startswith("transformer.h."):
                _, _, i, rest = name.split(".", 3)
                module, kind = rest.rsplit(".", 1)
                if module in HF_GPT2_LAYER_MAP:
                    if name.endswith(HF_TRANSPOSED):
                        tensor = tensor.t()  # Conv1D (in, out) -> Linear (out, in)
                    name = f"transformer.h.{i}.{HF_GPT2_LAYER_MAP[module]}.{kind}"
            if not self.config.bias and name.endswith(".bias") and name not in own:
                continue  # a bias-free model saved in GPT-2 format: its biases are the zeros we wrote
            mapped[name] = tensor
        if self.config.tie_embeddings:
            mapped.pop("lm_head.weight", None)
        self._load_mapped(mapped)
