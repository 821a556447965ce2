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
* ``distill`` — the Hinton et al. (2015) distillation loss.

Introduced in Chapter 12.
"""

from .analysis import bits_per_weight, error_sweep, output_error, weight_error
from .convert import QuantizationReport, QuantizeConfig, quantize_model, size_bytes
from .distill import distillation_loss
from .heads import (
    attention_layers,
    count_heads,
    ffn_layers,
    head_importance_l2,
    head_importance_taylor,
    prune_ffn,
    prune_heads,
    prune_model_heads,
    select_heads,
)
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
from .qlinear import DynamicInt8Linear, QuantizedLinear, int8_matmul
from .quantize import QuantizedTensor, code_range, dequantize, pack_int4, quantize, unpack_int4

__all__ = [
    "select_heads",
    "prune_model_heads",
    "prune_heads",
    "prune_ffn",
    "head_importance_taylor",
    "head_importance_l2",
    "ffn_layers",
    "count_heads",
    "attention_layers",
    "DynamicInt8Linear",
    "PrunedPair",
    "QuantizationReport",
    "QuantizeConfig",
    "QuantizedLinear",
    "QuantizedTensor",
    "SparsityReport",
    "apply_mask",
    "bits_per_weight",
    "code_range",
    "dequantize",
    "distillation_loss",
    "error_sweep",
    "global_magnitude_masks",
    "int8_matmul",
    "magnitude_mask",
    "magnitude_prune",
    "make_permanent",
    "neuron_importance_l2",
    "neuron_importance_taylor",
    "output_error",
    "pack_int4",
    "prune_linear_pair",
    "quantize",
    "quantize_model",
    "select_neurons",
    "size_bytes",
    "sparsity_report",
    "unpack_int4",
    "weight_error",
]
