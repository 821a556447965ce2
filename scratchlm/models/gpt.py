"""A GPT (decoder-only transformer language model), nanoGPT style (introduced in Chapter 06).

    h_0 = W_te[x] + W_pe[positions]                                   token + learned position
    h_l = h_{l-1} + Attn(LN_1(h_{l-1}));  h_l = h_l + MLP(LN_2(h_l))   pre-norm block, l = 1..L
    p(w_i | w_<i) = softmax(LN_f(h_L) W_teᵀ)_i                        tied output embedding
    L = −(1/N) Σ_i log p(w_i | w_<i)                                  next-token cross-entropy

Parameter names are Hugging Face GPT-2's (``transformer.wte``, ``transformer.h.N.attn.c_attn``,
...), so real GPT-2 weights load with a name map (:meth:`GPT.from_pretrained_dir`); the only
rewrite is a transpose, because HF stores these layers as ``Conv1D`` with (in, out) weights where
``nn.Linear`` keeps (out, in).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.attention import padding_mask, scaled_dot_product_attention

KeyValue = tuple[Tensor, Tensor]  # cached (k, v) of one layer, each (B, H, T_past, head_dim)


@dataclass
class GPTConfig:
    """Sizes of a GPT. Defaults are GPT-2 small (124 M parameters)."""

    block_size: int = 1024  # longest context: number of learned positions (HF: n_positions)
    vocab_size: int = 50257  # number of token ids (GPT-2's BPE: 50,257)
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # width of the residual stream C (head_dim = C / n_head)
    dropout: float = 0.0  # on embeddings, attention weights and residual branches (training only)
    bias: bool = True  # biases in Linear and LayerNorm (GPT-2: True; nanoGPT allows False)
    layer_norm_eps: float = 1e-5  # LayerNorm epsilon (HF: layer_norm_epsilon)
    gelu_approximate: str = "tanh"  # "tanh": GPT-2's gelu_new; "none": exact erf GELU
    attn_impl: str = "sdpa"  # "sdpa" (fused kernel) or "reference" (explicit softmax), Chapter 03

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int; got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1); got {self.dropout}")
        if self.gelu_approximate not in ("tanh", "none"):
            raise ValueError(f"GPTConfig.gelu_approximate must be 'tanh' or 'none'; got {self.gelu_approximate!r}")
        if self.attn_impl not in ("sdpa", "reference"):
            raise ValueError(f"GPTConfig.attn_impl must be 'sdpa' or 'reference'; got {self.attn_impl!r}")


class GPTOutput(NamedTuple):
    """What :meth:`GPT.run` returns."""

    logits: Tensor  # (B, T, vocab_size)
    past_key_values: list[KeyValue] | None  # per layer (k, v), each (B, H, T_past + T, head_dim)
    attentions: list[Tensor] | None  # per layer (B, H, T, T_past + T) attention weights


class CausalSelfAttention(nn.Module):
    """Masked multi-head self-attention with one fused q/k/v projection and an optional KV cache."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.impl = config.attn_impl
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # [W_q W_k W_v]
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)  # W_O
        self.attn_dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: Tensor,
        *,
        past: KeyValue | None = None,
        keep: Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, KeyValue, Tensor | None]:
        """x (B, T, C) -> (y (B, T, C), (k, v) for the cache, weights or None).

        ``keep`` is a bool (B, 1, 1, T_past + T) mask, False at padding keys (left padding).
        """
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, d)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, d)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, d)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, H, T_past + T, d)
            v = torch.cat([past[1], v], dim=2)  # (B, H, T_past + T, d)
        # One new query sees every cached key: no causal mask needed, so SDPA's fastest path runs.
        causal = not (past is not None and T == 1)
        out = scaled_dot_product_attention(
            q, k, v, mask=keep, is_causal=causal, impl=self.impl, return_weights=need_weights,
            dropout_p=self.attn_dropout if self.training else 0.0,
        )
        y, weights = out if need_weights else (out, None)  # (B, H, T, d)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side
        return self.resid_dropout(self.c_proj(y)), (k, v), weights


class MLP(nn.Module):
    """Position-wise feed-forward: GELU(x W_fc + b_fc) W_proj + b_proj, hidden width 4C."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate=config.gelu_approximate)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, **attn_kwargs) -> tuple[Tensor, KeyValue, Tensor | None]:
        a, present, weights = self.attn(self.ln_1(x), **attn_kwargs)  # (B, T, C)
        x = x + a  # (B, T, C)
        x = x + self.mlp(self.ln_2(x))  # (B, T, C)
        return x, present, weights


class GPT(nn.Module):
    """Decoder-only language model with GPT-2's layout. Introduced in Chapter 06."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT expects a GPTConfig; got {type(config).__name__}")
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embedding (V, C)
            wpe=nn.Embedding(config.block_size, config.n_embd),  # position embedding (T_max, C)
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (Press & Wolf, 2017): the output layer reuses the input embedding, which saves
        # V x C parameters and helps small models: "similar input tokens" = "similar predictions".
        self.transformer.wte.weight = self.lm_head.weight
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2 initialisation: N(0, 0.02) for Linear and Embedding weights, zero biases, and
        N(0, 0.02/√(2L)) for the projections that write into the residual stream (``c_proj``).

        Why the scaled residual projections: each of the 2L residual branches adds a roughly
        independent term to the stream, so its variance grows like 2L x var(branch); dividing the
        std by √(2L) keeps the stream's scale independent of depth at initialisation.
        """
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                std = residual_std if name.endswith("c_proj") else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count (tied weights once); ``non_embedding`` leaves out the position table,
        as nanoGPT and the scaling-law papers do (the token table is the output layer too)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    # ---- forward -------------------------------------------------------------------------------
    def run(
        self,
        idx: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: list[KeyValue] | None = None,
        use_cache: bool = False,
        need_weights: bool = False,
    ) -> GPTOutput:
        """Logits for every position of ``idx`` (B, T), with the optional cache and weights.

        Args:
            attention_mask: (B, T_past + T) 1 = real token, 0 = padding (left padding for batched
                prompts). Positions then count real tokens only, so a padded row matches the same
                prompt run alone.
            position_ids: (B, T) explicit positions; default: continue after the cache.
            past_key_values: per layer (k, v) of the earlier positions (from a previous call).
            use_cache: return the grown (k, v) per layer.
            need_weights: return every layer's attention weights (explicit-softmax path).
        """
        if not isinstance(idx, Tensor) or idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"GPT expects idx as an int64 tensor of shape (B, T); got "
                             f"{getattr(idx, 'dtype', type(idx).__name__)} {tuple(getattr(idx, 'shape', ()))}")
        B, T = idx.shape
        past_len = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        if past_key_values is not None and len(past_key_values) != self.config.n_layer:
            raise ValueError(f"past_key_values must hold {self.config.n_layer} layers; got {len(past_key_values)}")
        if past_len + T > self.config.block_size:
            raise ValueError(f"sequence of {past_len + T} tokens exceeds block_size={self.config.block_size}")
        keep = None
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (B, past_len + T):
                raise ValueError(f"attention_mask must have shape (B, T_past + T) = {(B, past_len + T)}; "
                                 f"got {tuple(attention_mask.shape)}")
            keep = padding_mask(attention_mask)  # (B, 1, 1, T_past + T)
            if position_ids is None:  # count real tokens: first real token is position 0
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past_len:]  # (B, T)
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + T, device=idx.device)[None]  # (1, T)

        x = self.transformer.wte(idx) + self.transformer.wpe(position_ids)  # (B, T, C)
        x = self.transformer.drop(x)  # (B, T, C)
        presents: list[KeyValue] = []
        attentions: list[Tensor] = []
        for i, block in enumerate(self.transformer.h):
            past = None if past_key_values is None else past_key_values[i]
            x, present, weights = block(x, past=past, keep=keep, need_weights=need_weights)  # (B, T, C)
            presents.append(present)
            if need_weights:
                attentions.append(weights)  # (B, H, T, T_past + T)
        x = self.transformer.ln_f(x)  # (B, T, C)
        logits = self.lm_head(x)  # (B, T, V)
        return GPTOutput(logits, presents if use_cache else None, attentions if need_weights else None)

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(logits (B, T, V), loss) with loss = mean −log p(targets | context); None without targets.

        Targets equal to -100 are ignored (padding, or a prompt a fine-tune should not learn).
        """
        logits = self.run(idx).logits  # (B, T, V)
        if targets is None:
            return logits, None
        if targets.shape != idx.shape:
            raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}; got {tuple(targets.shape)}")
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def configure_optimizers(self, *, learning_rate: float, weight_decay: float,
                             betas: tuple[float, float], eps: float = 1e-8,
                             fused: bool | None = None) -> torch.optim.AdamW:
        """AdamW where matrices (embeddings, Linear weights) decay and biases / LayerNorm gains don't;
        the fused kernel when the device has one (see :func:`scratchlm.training.adamw_with_decay_groups`)."""
        from ..training.optim import adamw_with_decay_groups

        return adamw_with_decay_groups(self.named_parameters(), learning_rate=learning_rate,
                                       weight_decay=weight_decay, betas=betas, eps=eps, fused=fused)

    # ---- Hugging Face GPT-2 weights ---------------------------------------------------------------
    HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

    @classmethod
    def config_from_hf(cls, hf: dict, **overrides) -> GPTConfig:
        """A GPTConfig from a Hugging Face GPT-2 ``config.json`` dictionary."""
        if hf.get("model_type") != "gpt2":
            raise ValueError(f"expected a GPT-2 config (model_type 'gpt2'); got {hf.get('model_type')!r}")
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu"):
            raise ValueError(f"unsupported activation_function {act!r}; expected gelu_new or gelu")
        n_inner = hf.get("n_inner")
        if n_inner not in (None, 4 * hf["n_embd"]):
            raise ValueError(f"only n_inner = 4 * n_embd is supported; got n_inner={n_inner}")
        for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
            if hf.get(flag):
                raise ValueError(f"GPT-2 variant with {flag}=True is not supported")
        cfg = dict(block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
                   n_head=hf["n_head"], n_embd=hf["n_embd"], bias=True, dropout=0.0,
                   layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                   gelu_approximate="none" if act == "gelu" else "tanh")
        names = {f.name for f in fields(GPTConfig)}
        unknown = set(overrides) - names
        if unknown:
            raise ValueError(f"unknown GPTConfig fields {sorted(unknown)}; expected some of {sorted(names)}")
        cfg.update(overrides)
        return GPTConfig(**cfg)

    @classmethod
    def from_pretrained_dir(cls, path: str | Path, **overrides) -> GPT:
        """Load a local Hugging Face GPT-2 checkpoint directory (``config.json`` + ``model.safetensors``).

        The name map: HF keys with or without the ``transformer.`` prefix become ours; the four
        Conv1D weights are transposed; HF's non-parameter buffers (``attn.bias``, the causal mask of
        older versions) are skipped; ``lm_head.weight`` is tied to ``transformer.wte.weight``.
        ``overrides`` change config fields that do not affect the weights (dropout, attn_impl).
        """
        from safetensors import safe_open

        path = Path(path)
        config_file, weights_file = path / "config.json", path / "model.safetensors"
        for f in (config_file, weights_file):
            if not f.is_file():
                raise ValueError(f"{str(path)!r} is not a Hugging Face checkpoint directory: {f.name} is missing")
        config = cls.config_from_hf(json.loads(config_file.read_text()), **overrides)
        model = cls(config)
        ours = model.state_dict()
        loaded: dict[str, Tensor] = {}
        with safe_open(str(weights_file), framework="pt") as handle:
            for key in handle.keys():
                name = key if key.startswith(("transformer.", "lm_head.")) else "transformer." + key
                if name.endswith((".attn.bias", ".attn.masked_bias")):
                    continue  # causal-mask buffers, not parameters
                if name not in ours:
                    raise ValueError(f"unexpected tensor {key!r} in {weights_file}")
                tensor = handle.get_tensor(key)
                if name.endswith(cls.HF_TRANSPOSED):
                    tensor = tensor.t()  # Conv1D (in, out) -> Linear (out, in)
                if tensor.shape != ours[name].shape:
                    raise ValueError(f"{key}: expected shape {tuple(ours[name].shape)}; got {tuple(tensor.shape)}")
                loaded[name] = tensor
        loaded.setdefault("lm_head.weight", loaded.get("transformer.wte.weight"))
        missing = [k for k in ours if k not in loaded or loaded[k] is None]
        if missing:
            raise ValueError(f"{weights_file} lacks {len(missing)} tensors, e.g. {missing[:3]}")
        model.load_state_dict(loaded, strict=True)
        return model
