"""Compression (Chapter 12): quantization from scratch.

* ``quantize`` — :func:`quantize` / :func:`dequantize` (symmetric or asymmetric; per tensor, channel
  or group), packed int4 storage (:func:`pack_int4`, :func:`unpack_int4`).
* ``qlinear`` — :class:`QuantizedLinear` (weight-only int8/int4) and :class:`DynamicInt8Linear`
  (int8 weights and activations, integer matmul).
* ``convert`` — :func:`quantize_model` swaps every ``nn.Linear``; :func:`size_bytes` counts storage.
* ``analysis`` — weight and output error vs bits and group size.

Introduced in Chapter 12.
"""

from .analysis import bits_per_weight, error_sweep, output_error, weight_error
from .convert import QuantizationReport, QuantizeConfig, quantize_model, size_bytes
from .qlinear import DynamicInt8Linear, QuantizedLinear, int8_matmul
from .quantize import QuantizedTensor, code_range, dequantize, pack_int4, quantize, unpack_int4

__all__ = [
    "DynamicInt8Linear",
    "QuantizationReport",
    "QuantizeConfig",
    "QuantizedLinear",
    "QuantizedTensor",
    "bits_per_weight",
    "code_range",
    "dequantize",
    "error_sweep",
    "int8_matmul",
    "output_error",
    "pack_int4",
    "quantize",
    "quantize_model",
    "size_bytes",
    "unpack_int4",
    "weight_error",
]
