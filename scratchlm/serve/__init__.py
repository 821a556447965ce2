"""Deployment (introduced in Chapter 13): export to ``torch.export`` / ONNX, and an HTTP server."""

from .export import (
    ClassifierLogits,
    GPTWithCache,
    OnnxClassifier,
    OnnxGPT,
    cache_names,
    export_classifier,
    export_gpt,
    gpt_onnx_names,
    to_onnx,
)

__all__ = [
    "ClassifierLogits",
    "GPTWithCache",
    "OnnxClassifier",
    "OnnxGPT",
    "cache_names",
    "export_classifier",
    "export_gpt",
    "gpt_onnx_names",
    "to_onnx",
]
