"""Export: ``torch.export`` graphs and ONNX files of the GPT (KV cache as explicit inputs and outputs)
and of a sentence classifier, run with onnxruntime (introduced in Chapter 13).

``torch.export`` traces a model once into a graph of ATen operations with *symbolic* sizes: the
batch, the sequence length and the cache length stay free variables (``Dim.DYNAMIC``), so one graph
serves every shape. ``torch.onnx.export(exported_program)`` translates that graph to ONNX, which
runtimes outside Python (onnxruntime here) execute.

A Python object such as :class:`~scratchlm.layers.KVCache` cannot cross that boundary, so the
cache becomes tensors: :class:`GPTWithCache` takes the past keys and values of every layer,
``past.{i}.key`` / ``past.{i}.value`` (B, H, T_past, d_head), and returns the grown ones,
``present.{i}.key`` / ``present.{i}.value`` (B, H, T_past + T, d_head), next to the logits. The
caller feeds each step's ``present`` back as the next step's ``past``. One graph serves the prompt
(T_past = 0: empty tensors) and every decode step (T = 1).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.export import Dim

from ..layers.kv_cache import KVCache

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


def cache_names(n_layers: int, prefix: str) -> list[str]:
    """``[prefix.0.key, prefix.0.value, prefix.1.key, ...]``: the flat order of the cache tensors."""
    return [f"{prefix}.{i}.{kind}" for i in range(n_layers) for kind in ("key", "value")]


class GPTWithCache(nn.Module):
    """A GPT whose KV cache is explicit tensors: ``(input_ids, attention_mask, *past) -> (logits, *present)``.

    ``past`` is flat: key and value of layer 0, then layer 1, ... each (B, H, T_past, d_head);
    ``attention_mask`` is (B, T_past + T). ``logits_to_keep`` as in :meth:`GPT.forward` (1 for
    generation: only the last position's logits are needed).
    """

    def __init__(self, model: nn.Module, logits_to_keep: int = 0) -> None:
        super().__init__()
        self.model = model
        self.n_layers = model.config.n_layers
        self.logits_to_keep = logits_to_keep

    def forward(self, input_ids: Tensor, attention_mask: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        if len(past) != 2 * self.n_layers:
            raise ValueError(f"GPTWithCache expects {2 * self.n_layers} past tensors (key and value of "
                             f"{self.n_layers} layers); got {len(past)}")
        cache = KVCache()
        for i in range(self.n_layers):
            cache.layers[i] = (past[2 * i], past[2 * i + 1])  # (B, H, T_past, d_head) each
        out = self.model(input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True,
                         logits_to_keep=self.logits_to_keep)
        present = [t for i in range(self.n_layers) for t in cache.layers[i]]  # (B, H, T_past + T, d_head)
        return (out.logits, *present)

    def empty_past(self, batch_size: int, device: torch.device | str | None = None) -> list[Tensor]:
        """Zero-length past tensors (B, H, 0, d_head): the input of the prompt step."""
        c = self.model.config
        shape = (batch_size, c.n_heads, 0, c.d_model // c.n_heads)
        dtype = next(self.model.parameters()).dtype
        return [torch.zeros(shape, dtype=dtype, device=device) for _ in range(2 * self.n_layers)]


class ClassifierLogits(nn.Module):
    """``(input_ids, attention_mask) -> logits (B, num_labels)``: a classifier head's plain-tensor face."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.classifier(input_ids, attention_mask=attention_mask).logits  # (B, num_labels)


def _example_gpt_inputs(model: nn.Module) -> tuple[Tensor, ...]:
    """Example inputs with every dynamic size >= 2 (torch.export specialises sizes 0 and 1)."""
    c = model.config
    B, T, P = 2, 3, 4
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    ids = torch.randint(0, c.vocab_size, (B, T), generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.ones(B, P + T, dtype=torch.long, device=device)
    past = [torch.zeros(B, c.n_heads, P, c.d_model // c.n_heads, dtype=dtype, device=device)
            for _ in range(2 * c.n_layers)]
    return (ids, mask, *past)


def _size_oblivious():
    """Trace without assuming that dynamic sizes are >= 2. By default torch.export specialises sizes 0
    and 1 (a size-1 dim broadcasts, so the graph might differ) and the exported program then refuses
    a batch of 1 or an empty cache; size-oblivious tracing keeps one graph for every size."""
    import torch.fx.experimental._config as fx_config

    if hasattr(fx_config, "backed_size_oblivious"):
        return fx_config.patch(backed_size_oblivious=True)
    return contextlib.nullcontext()  # older PyTorch: the program then checks sizes >= 2 (ONNX does not)


def export_gpt(model: nn.Module, *, logits_to_keep: int = 0) -> torch.export.ExportedProgram:
    """``torch.export`` of :class:`GPTWithCache` with dynamic batch, length and cache length.

    Sizes 0 and 1: where a dimension of size 1 *could* broadcast, torch.export records a guard, and
    ``program.module()`` then refuses e.g. a batch of 1 or a one-token step. The guards are
    conservative here: ``program.module(check_guards=False)`` (which still checks the ranges of
    the symbolic sizes) and the ONNX translation (which has no guards) give our model's numbers for a
    batch of one, a one-token step and an empty cache — the tests check exactly these cases.
    """
    if model.config.block_size < 8:
        raise ValueError("export_gpt traces with 7 positions; the model's block_size must be >= 8")
    wrapper = GPTWithCache(model, logits_to_keep).eval()
    example = _example_gpt_inputs(model)
    D = Dim.DYNAMIC
    shapes = ({0: D, 1: D}, {0: D, 1: D}, tuple({0: D, 2: D} for _ in example[2:]))  # *past: one tuple
    with torch.no_grad(), _size_oblivious():
        return torch.export.export(wrapper, example, dynamic_shapes=shapes)


def export_classifier(classifier: nn.Module, *, vocab_size: int) -> torch.export.ExportedProgram:
    """``torch.export`` of a sentence classifier (:class:`ClassifierLogits`) with dynamic batch and length."""
    wrapper = ClassifierLogits(classifier).eval()
    device = next(classifier.parameters()).device
    ids = torch.randint(0, vocab_size, (2, 5), generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.ones_like(ids)
    D = Dim.DYNAMIC
    with torch.no_grad(), _size_oblivious():
        return torch.export.export(wrapper, (ids, mask), dynamic_shapes=({0: D, 1: D}, {0: D, 1: D}))


def to_onnx(program: torch.export.ExportedProgram, path: str | os.PathLike, input_names: list[str],
            output_names: list[str]) -> Path:
    """Translate an exported program to an ONNX file (``torch.onnx.export(..., dynamo=True)``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notes of the translator, not about this model
        torch.onnx.export(program, f=str(path), dynamo=True, input_names=input_names, output_names=output_names,
                          verbose=False, report=False)
    return path


def gpt_onnx_names(n_layers: int) -> tuple[list[str], list[str]]:
    """Input and output names of the GPT graph."""
    return (["input_ids", "attention_mask", *cache_names(n_layers, "past")],
            ["logits", *cache_names(n_layers, "present")])


def _session(path: str | os.PathLike, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxGPT:
    """An exported GPT (:func:`export_gpt` + :func:`to_onnx`) run by onnxruntime, with its own greedy loop."""

    def __init__(self, path: str | os.PathLike, n_layers: int, n_heads: int, head_dim: int,
                 threads: int | None = None) -> None:
        self.session = _session(path, threads)
        self.n_layers, self.n_heads, self.head_dim = n_layers, n_heads, head_dim
        self.input_names, self.output_names = gpt_onnx_names(n_layers)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                 past: list[np.ndarray] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """logits and present (numpy); ``past=None`` starts from an empty cache."""
        if past is None:
            empty = np.zeros((input_ids.shape[0], self.n_heads, 0, self.head_dim), dtype=np.float32)
            past = [empty] * (2 * self.n_layers)
        feeds = dict(zip(self.input_names, [input_ids.astype(np.int64), attention_mask.astype(np.int64), *past],
                         strict=True))
        logits, *present = self.session.run(self.output_names, feeds)
        return logits, present

    def generate(self, input_ids: np.ndarray, max_new_tokens: int, attention_mask: np.ndarray | None = None) -> np.ndarray:
        """Greedy continuation (B, T + max_new_tokens), fed step by step through the explicit cache."""
        ids = np.asarray(input_ids, dtype=np.int64)  # (B, T)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        logits, past = self(ids, mask)
        out = [ids]
        for step in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1)[:, None].astype(np.int64)  # (B, 1)
            out.append(nxt)
            if step + 1 == max_new_tokens:
                break
            mask = np.concatenate([mask, np.ones_like(nxt)], axis=1)  # (B, T_seen + 1)
            logits, past = self(nxt, mask, past)
        return np.concatenate(out, axis=1)  # (B, T + n)


class OnnxClassifier:
    """An exported classifier (:func:`export_classifier` + :func:`to_onnx`) run by onnxruntime."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.session = _session(path, threads)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds: dict[str, Any] = {"input_ids": np.asarray(input_ids, dtype=np.int64),
                                 "attention_mask": np.asarray(attention_mask, dtype=np.int64)}
        return self.session.run(["logits"], feeds)[0]  # (B, num_labels)
