"""Parameter-efficient fine-tuning from scratch (Chapter 10): LoRA, bottleneck adapters,
prefix-tuning, prompt tuning and BitFit, applied to any model of the book by :func:`apply_peft`.

Each method is a small module (``lora``, ``adapter``, ``prefix``, ``prompt``) that reaches the model
through the hook points the layers already have: every ``nn.Linear`` is called as a module (LoRA
wraps it), the blocks have ``nn.Identity`` adapter slots, and ``MultiHeadAttention.prefix`` takes
prefix keys and values. ``api`` freezes, counts, saves and loads. Checked against Hugging Face
``peft`` with shared weights in ``tests/test_peft.py``.
"""

from .adapter import ADAPTER_SITES, Adapter
from .api import (
    AdapterConfig,
    BitFitConfig,
    LoraConfig,
    PrefixConfig,
    PromptConfig,
    apply_peft,
    bake_prefix,
    count_parameters,
    inject_adapters,
    inject_lora,
    inject_prefix,
    load_peft,
    merge_lora,
    peft_state_dict,
    save_peft,
    unmerge_lora,
)
from .lora import LoRALinear
from .measure import training_memory
from .prefix import LayerPrefix, PrefixEncoder
from .prompt import PromptEmbedding, PromptTuningModel, find_input_embedding

__all__ = [
    "ADAPTER_SITES",
    "Adapter",
    "AdapterConfig",
    "BitFitConfig",
    "LayerPrefix",
    "LoRALinear",
    "LoraConfig",
    "PrefixConfig",
    "PrefixEncoder",
    "PromptConfig",
    "PromptEmbedding",
    "PromptTuningModel",
    "apply_peft",
    "bake_prefix",
    "count_parameters",
    "find_input_embedding",
    "inject_adapters",
    "inject_lora",
    "inject_prefix",
    "load_peft",
    "merge_lora",
    "peft_state_dict",
    "save_peft",
    "training_memory",
    "unmerge_lora",
]
