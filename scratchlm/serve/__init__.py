"""Deployment (introduced in Chapter 13): export to ``torch.export`` / ONNX, and an HTTP server.

* :mod:`~scratchlm.serve.export` — torch.export / ONNX graphs (GPT with an explicit KV cache, classifier)
* :mod:`~scratchlm.serve.bundle` — the serving directory (safetensors + JSON only)
* :mod:`~scratchlm.serve.batching` — the batching queue; :mod:`~scratchlm.serve.app` — the FastAPI app
* :mod:`~scratchlm.serve.runner` — uvicorn in a thread; ``python -m scratchlm.serve`` — the command line
* :mod:`~scratchlm.serve.client` — SSE parsing, streaming, a bounded load test

The HTTP modules import fastapi/uvicorn/httpx; importing ``scratchlm.serve`` itself needs only torch.
"""

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
