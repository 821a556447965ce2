"""Compression (Chapter 12): quantization from scratch, pruning and distillation.

* ``quantize`` — :func:`quantize` / :func:`dequantize` (symmetric or asymmetric; per tensor, channel
  or group), packed int4 storage (:func:`pack_int4`, :func:`unpack_int4`).
* ``qlinear`` — :class:`QuantizedLinear` (weight-only int8/int4) and :class:`DynamicInt8Linear`
  (int8 weights and activations, integer matmul).
* ``convert`` — :func:`quantize_model` swaps every ``nn.Linear``; :func:`size_bytes` counts storage.
* ``analysis`` — weight and output error vs bits and group size.
* ``prune`` — magnitude pruning with masks, structured FFN-neuron pruning of a Linear pair.
* ``heads`` — structured pruning inside transformer blocks: attention heads (L2 or Michel et al.'s
  gradient score) and FFN neurons, removed physically.
* ``qembedding`` — :class:`QuantizedEmbedding` (int8/int4 rows) and :func:`quantize_embeddings`.
* ``distill`` — the Hinton et al. (2015) distillation loss and a ``loss_fn`` for ``train()``.
* ``student`` — a smaller student from a teacher: :func:`keep_layers`, :func:`trim_vocabulary`.
* ``measure`` — :func:`saved_size` (safetensors bytes on disk), :func:`latency_side_by_side`.

Introduced in Chapter 12.
"""

from .analysis import bits_per_weight, error_sweep, output_error, weight_error
from .convert import QuantizationReport, QuantizeConfig, quantize_model, size_bytes
from .distill import distillation_loss, make_distillation_loss_fn
from .heads import (
    attention_layers,
    count_heads,
    ffn_importance_taylor,
    ffn_layers,
    head_importance_l2,
    head_importance_taylor,
    prune_ffn,
    prune_heads,
    prune_model_heads,
    select_heads,
)
from .measure import latency_side_by_side, saved_size
from .prune import (
    PrunedPair,
    SparsityReport,
    apply_mask,
    global_magnitude_masks,
    magnitude_mask,
    magnitude_prune,
    make_permanent,
    neuron_importance_l2,
    neuron_importance_taylor,
    prune_linear_pair,
    select_neurons,
    sparsity_report,
)
from .qembedding import QuantizedEmbedding, quantize_embeddings
from .qlinear import DynamicInt8Linear, QuantizedLinear, int8_matmul
from .quantize import QuantizedTensor, code_range, dequantize, pack_int4, quantize, unpack_int4
from .student import TrimmedVocabulary, keep_layers, trim_vocabulary

__all__ = [
    "DynamicInt8Linear",
    "PrunedPair",
    "QuantizationReport",
    "QuantizeConfig",
    "QuantizedEmbedding",
    "QuantizedLinear",
    "QuantizedTensor",
    "SparsityReport",
    "TrimmedVocabulary",
    "apply_mask",
    "attention_layers",
    "bits_per_weight",
    "code_range",
    "count_heads",
    "dequantize",
    "distillation_loss",
    "error_sweep",
    "ffn_importance_taylor",
    "ffn_layers",
    "global_magnitude_masks",
    "head_importance_l2",
    "head_importance_taylor",
    "int8_matmul",
    "keep_layers",
    "latency_side_by_side",
    "magnitude_mask",
    "magnitude_prune",
    "make_distillation_loss_fn",
    "make_permanent",
    "neuron_importance_l2",
    "neuron_importance_taylor",
    "output_error",
    "pack_int4",
    "prune_ffn",
    "prune_heads",
    "prune_linear_pair",
    "prune_model_heads",
    "quantize",
    "quantize_embeddings",
    "quantize_model",
    "saved_size",
    "select_heads",
    "select_neurons",
    "size_bytes",
    "sparsity_report",
    "trim_vocabulary",
    "unpack_int4",
    "weight_error",
]
