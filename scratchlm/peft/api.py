"""One way to apply a PEFT method to any model of the book, count, save and load it. Chapter 10.

    model = apply_peft(model, LoraConfig(r=8, alpha=16, target_modules=r"q_proj|v_proj", trainable=("classifier",)))
    count_parameters(model)            # {'trainable': ..., 'total': ..., 'percent': ...}
    save_peft(model, "adapter.safetensors")   # only the trainable tensors (a few hundred kB)
    load_peft(fresh_model_with_the_same_config_applied, "adapter.safetensors")

:func:`apply_peft` freezes every parameter, inserts the method's modules, and marks trainable only
the method's parameters plus those whose names match ``config.trainable`` (regular expressions —
typically the new task head, which no PEFT method can leave frozen: ``peft`` calls these
``modules_to_save``). Methods:

=================  =====================================================  ==========================
config             what trains                                             where it goes
=================  =====================================================  ==========================
LoraConfig         A, B of every Linear whose name matches the pattern     Linear → LoRALinear
AdapterConfig      bottleneck adapters (+ LayerNorms, as Houlsby et al.)   the blocks' adapter slots
PrefixConfig       the prefix MLP (then baked into L·2·P·C numbers)        MultiHeadAttention.prefix
PromptConfig       P input embeddings                                      the token embedding
BitFitConfig       every bias (Ben Zaken et al., 2022)                     nothing inserted
=================  =====================================================  ==========================
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..layers.multihead import MultiHeadAttention
from ..layers.norms import LayerNorm, RMSNorm
from ..models.hf import _atomic_write
from .adapter import ADAPTER_ACTIVATIONS, ADAPTER_SITES, Adapter
from .lora import LoRALinear
from .prefix import LayerPrefix, PrefixEncoder
from .prompt import PromptTuningModel, find_input_embedding

QKV_NAMES = ("q", "k", "v")


@dataclass
class LoraConfig:
    """LoRA on every ``nn.Linear`` whose dotted name matches ``target_modules`` (``re.search``).

    A fused ``qkv_proj`` is split into its q, k, v thirds with one A/B each for the thirds named in
    ``qkv_parts``; ``qkv_parts=None`` adapts it as one matrix (what ``peft`` does to GPT-2's c_attn).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str = r"(q_proj|v_proj|qkv_proj)$"
    qkv_parts: tuple[str, ...] | None = ("q", "v")
    trainable: tuple[str, ...] = ()
    method: str = field(default="lora", init=False)


@dataclass
class AdapterConfig:
    """Houlsby adapters of width ``bottleneck`` in the slots ``<site>_adapter`` of every block."""

    bottleneck: int = 64
    activation: str = "gelu"
    sites: tuple[str, ...] = ("self_attn", "ffn")
    train_norms: bool = True  # Houlsby et al. also train the layer norms
    trainable: tuple[str, ...] = ()
    method: str = field(default="adapter", init=False)


@dataclass
class PrefixConfig:
    """P prefix keys/values in every attention module whose name matches ``target_modules``."""

    num_virtual_tokens: int = 10
    hidden: int | None = 512  # width of the reparameterisation MLP; None: train the prefixes directly
    target_modules: str = r"self_attn$"
    trainable: tuple[str, ...] = ()
    method: str = field(default="prefix", init=False)


@dataclass
class PromptConfig:
    """P trainable input embeddings prepended to the tokens."""

    num_virtual_tokens: int = 10
    init: str = "vocab"
    seed: int = 0
    trainable: tuple[str, ...] = ()
    method: str = field(default="prompt", init=False)


@dataclass
class BitFitConfig:
    """Train the biases only (and ``trainable``)."""

    trainable: tuple[str, ...] = ()
    method: str = field(default="bitfit", init=False)


PeftConfig = LoraConfig | AdapterConfig | PrefixConfig | PromptConfig | BitFitConfig
CONFIGS = {c.__dataclass_fields__["method"].default: c
           for c in (LoraConfig, AdapterConfig, PrefixConfig, PromptConfig, BitFitConfig)}


# ---- injection -----------------------------------------------------------------------------------
def _named(model: nn.Module, kind: type | tuple[type, ...], pattern: str) -> list[tuple[str, nn.Module]]:
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"target_modules is not a valid regular expression: {pattern!r} ({err})") from None
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, kind) and regex.search(n)]
    if not found:
        names = [n for n, m in model.named_modules() if isinstance(m, kind)][:8]
        kinds = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ValueError(f"no {kinds} module matches target_modules={pattern!r}; some candidates: {names}")
    return found


def inject_lora(model: nn.Module, config: LoraConfig) -> dict[str, LoRALinear]:
    """Replace every matching Linear by a :class:`LoRALinear` (B = 0); return them by name."""
    if config.qkv_parts is not None and (not config.qkv_parts or set(config.qkv_parts) - set(QKV_NAMES)):
        raise ValueError(f"qkv_parts must be a non-empty subset of {QKV_NAMES} or None; got {config.qkv_parts!r}")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("this model already has LoRA layers (apply LoRA once)")
    wrapped = {}
    for name, linear in _named(model, nn.Linear, config.target_modules):
        if name.rsplit(".", 1)[-1] in ("lora_A", "lora_B") or ".lora_" in name:
            continue
        fused = name.endswith("qkv_proj") and config.qkv_parts is not None
        parts, enabled = (3, tuple(p in config.qkv_parts for p in QKV_NAMES)) if fused else (1, None)
        layer = LoRALinear(linear, config.r, config.alpha, config.dropout, parts=parts, enabled=enabled)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
        wrapped[name] = layer
    return wrapped


def inject_adapters(model: nn.Module, config: AdapterConfig) -> dict[str, Adapter]:
    """Put an :class:`Adapter` in every block's ``<site>_adapter`` slot; return them by name."""
    bad = set(config.sites) - set(ADAPTER_SITES)
    if not config.sites or bad:
        raise ValueError(f"adapter sites must be a non-empty subset of {ADAPTER_SITES}; got {config.sites!r}")
    if config.activation not in ADAPTER_ACTIVATIONS:
        raise ValueError(f"adapter activation must be one of {sorted(ADAPTER_ACTIVATIONS)}; got {config.activation!r}")
    added = {}
    for name, block in list(model.named_modules()):
        for site in config.sites:
            slot = getattr(block, f"{site}_adapter", None)
            if slot is None or not isinstance(block, nn.Module):
                continue
            if not isinstance(slot, nn.Identity):
                raise ValueError(f"{name}.{site}_adapter is already occupied by {type(slot).__name__} (apply once)")
            adapter = Adapter(block.d_model, config.bottleneck, config.activation)
            ref = next(block.parameters())
            setattr(block, f"{site}_adapter", adapter.to(device=ref.device, dtype=ref.dtype))
            added[f"{name}.{site}_adapter"] = adapter
    if not added:
        raise ValueError(f"no block of {type(model).__name__} has adapter slots {[s + '_adapter' for s in config.sites]}")
    return added


def inject_prefix(model: nn.Module, config: PrefixConfig) -> PrefixEncoder:
    """Give every matching attention module a :class:`LayerPrefix`; register the shared encoder on the model."""
    if hasattr(model, "prefix_encoder") or any(isinstance(m, LayerPrefix) for m in model.modules()):
        raise ValueError("this model already has prefixes (apply prefix-tuning once)")
    attentions = _named(model, MultiHeadAttention, config.target_modules)
    first = attentions[0][1]
    if any((m.n_heads, m.head_dim) != (first.n_heads, first.head_dim) for _, m in attentions):
        raise ValueError("prefix-tuning needs every targeted attention module to have the same heads and width")
    encoder = PrefixEncoder(len(attentions), first.n_heads, first.head_dim, config.num_virtual_tokens, config.hidden)
    ref = next(first.parameters())
    model.prefix_encoder = encoder.to(device=ref.device, dtype=ref.dtype)
    for i, (_, attention) in enumerate(attentions):
        attention.prefix = LayerPrefix(encoder, i)
    return encoder


@torch.no_grad()
def bake_prefix(model: nn.Module) -> int:
    """Replace the prefix MLP by its output: each layer keeps (H, P, d) keys and values. Returns L·2·P·C."""
    encoder = getattr(model, "prefix_encoder", None)
    if not isinstance(encoder, PrefixEncoder):
        raise ValueError("bake_prefix: this model has no prefix encoder (not prefix-tuned, or already baked)")
    prefixes = encoder()  # (L, 2, H, P, d)
    for module in model.modules():
        if isinstance(module, LayerPrefix):
            module.bake(prefixes)
    del model.prefix_encoder
    return prefixes.numel()


def _locate_base_model(model: nn.Module) -> tuple[nn.Module | None, str]:
    """The (sub)model holding the token embedding, and its name ('' for ``model`` itself)."""
    for name, module in model.named_modules():
        if hasattr(module, "config") and not isinstance(module, PromptTuningModel):
            try:
                find_input_embedding(module)
                return module, name
            except ValueError:
                continue
    return None, ""


# ---- the one entry point -------------------------------------------------------------------------
def apply_peft(model: nn.Module, config: PeftConfig) -> nn.Module:
    """Freeze ``model``, insert the method of ``config``, unfreeze its parameters (+ ``config.trainable``).

    Returns the model to train: ``model`` itself, except for prompt tuning of a bare model, which
    returns a :class:`PromptTuningModel` around it (inside a head, the head's encoder is wrapped).
    Applying a second method to the same model raises ValueError.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"apply_peft expects an nn.Module; got {type(model).__name__}")
    if not isinstance(config, tuple(CONFIGS.values())):
        raise TypeError(f"apply_peft expects one of {[c.__name__ for c in CONFIGS.values()]}; got {type(config).__name__}")
    if getattr(model, "peft_config", None) is not None or any(
            getattr(m, "peft_config", None) is not None for m in model.modules()):
        raise ValueError("apply_peft: this model already has a PEFT method applied; start from a fresh model")
    if isinstance(config, (LoraConfig, PromptConfig, PrefixConfig)):
        n = config.r if isinstance(config, LoraConfig) else config.num_virtual_tokens
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            what = "rank r" if isinstance(config, LoraConfig) else "num_virtual_tokens"
            raise ValueError(f"{type(config).__name__}: {what} must be a positive int; got {n!r}")
    if isinstance(config, AdapterConfig) and (not isinstance(config.bottleneck, int) or config.bottleneck <= 0):
        raise ValueError(f"AdapterConfig: bottleneck must be a positive int; got {config.bottleneck!r}")
    for pattern in config.trainable:
        re.compile(pattern)
    for p in model.parameters():
        p.requires_grad_(False)

    result = model
    if isinstance(config, LoraConfig):
        for layer in inject_lora(model, config).values():
            for p in layer.lora_parameters():
                p.requires_grad_(True)
    elif isinstance(config, AdapterConfig):
        for adapter in inject_adapters(model, config).values():
            adapter.requires_grad_(True)
        if config.train_norms:
            for m in model.modules():
                if isinstance(m, (nn.LayerNorm, LayerNorm, RMSNorm)):
                    m.requires_grad_(True)
    elif isinstance(config, PrefixConfig):
        inject_prefix(model, config).requires_grad_(True)
    elif isinstance(config, PromptConfig):
        base, name = _locate_base_model(model)
        if base is None:
            raise ValueError(f"prompt tuning: found no model with a token embedding inside {type(model).__name__}")
        gen = torch.Generator().manual_seed(config.seed)
        wrapper = PromptTuningModel(base, config.num_virtual_tokens, config.init, generator=gen)
        wrapper.embedding.prompt.requires_grad_(True)
        if name:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, wrapper)
        else:
            result = wrapper
    else:  # BitFit: the biases
        for pname, p in model.named_parameters():
            if pname.endswith("bias"):
                p.requires_grad_(True)
    _unfreeze_matching(result, config.trainable)
    result.peft_config = config
    return result


def _unfreeze_matching(model: nn.Module, patterns: tuple[str, ...]) -> None:
    for pattern in patterns:
        hits = [p for n, p in model.named_parameters(remove_duplicate=False) if re.search(pattern, n)]
        if not hits:
            raise ValueError(f"trainable pattern {pattern!r} matches no parameter of {type(model).__name__}")
        for p in hits:
            p.requires_grad_(True)


def count_parameters(model: nn.Module) -> dict[str, float]:
    """Trainable and total parameters (shared tensors once) and the trainable share in percent."""
    params = list(model.parameters())  # deduplicated by identity
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / max(total, 1)}


def merge_lora(model: nn.Module) -> int:
    """Merge every LoRA layer into its base weight; returns how many were merged."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    if not layers:
        raise ValueError("merge_lora: this model has no LoRA layers")
    for m in layers:
        m.merge()
    return len(layers)


def unmerge_lora(model: nn.Module) -> int:
    """Undo :func:`merge_lora`."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    if not layers:
        raise ValueError("unmerge_lora: this model has no LoRA layers")
    for m in layers:
        m.unmerge()
    return len(layers)


# ---- saving and loading only the PEFT tensors ------------------------------------------------------
def peft_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The tensors a PEFT method adds or trains: trainable parameters and baked prefixes, by name."""
    out = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for name, module in model.named_modules():
        if isinstance(module, LayerPrefix) and module.baked:
            out[f"{name}.key"], out[f"{name}.value"] = module.key, module.value
    if not out:
        raise ValueError("peft_state_dict: nothing is trainable in this model (apply_peft first)")
    return out


def save_peft(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write only the PEFT tensors to a safetensors file, atomically (temp file + fsync + rename)."""
    from safetensors.torch import save

    config = _config_of(model)
    tensors = {k: v.detach().contiguous().cpu() for k, v in peft_state_dict(model).items()}
    path = Path(path)
    meta = {"scratchlm_peft": json.dumps({"method": config.method, **asdict(config)})}
    data = save(tensors, metadata=meta)
    _atomic_write(path, data)  # temp file, fsync, rename: never half-written
    return path


def load_peft(model: nn.Module, path: str | os.PathLike) -> None:
    """Load tensors written by :func:`save_peft` into a model with the same method applied (strict)."""
    from safetensors import safe_open

    config = _config_of(model)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_peft: no file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("scratchlm_peft", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise ValueError(f"load_peft: {path} is not a readable safetensors file ({err})") from None
    if meta.get("method") != config.method:
        raise ValueError(f"load_peft: {path} holds a {meta.get('method')!r} adapter; the model has {config.method!r}")
    own = peft_state_dict(model)
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise ValueError(f"load_peft: {path} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in tensors.items():
        if tensor.shape != own[name].shape:
            raise ValueError(f"load_peft: {name} has shape {tuple(tensor.shape)} in {path}, the model expects "
                             f"{tuple(own[name].shape)}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            own[name].copy_(tensor)


def _config_of(model: nn.Module) -> PeftConfig:
    config = getattr(model, "peft_config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no PEFT method applied (call apply_peft first)")
    return config
