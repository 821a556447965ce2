"""Latency and size of quantized Linear / MLP layers on this CPU, side by side (Chapter 12).

Run ``python -m scratchlm.bench.quantize --help``. For each shape (a Linear d→d, a Linear d→4d and
an MLP d→4d→GELU→d), each batch (rows of the input: 1 = one token while decoding, 32 = a batch)
and each thread count, it times one forward call of:

* ``fp32``            the float nn.Linear / MLP;
* ``ours w8``         :class:`~scratchlm.compress.QuantizedLinear`, int8 per-channel weight-only;
* ``ours w4 g128``    :class:`~scratchlm.compress.QuantizedLinear`, packed int4, groups of 128;
* ``ours dyn8``       :class:`~scratchlm.compress.DynamicInt8Linear`, int8 weights + per-token int8
  activations, ``torch._int_mm``;
* ``torchao w8``      torchao ``Int8WeightOnlyConfig``;
* ``torchao dyn8``    torchao ``Int8DynamicActivationInt8WeightConfig``;
* ``torch.ao dyn8``   ``torch.ao.quantization.quantize_dynamic`` (deprecated; fbgemm kernels).

How it measures: eager mode, ``torch.inference_mode``, the same input for every method; a few
warm-up calls, then ``repeats`` rounds in which every method is called once in turn (so a slow
moment of the machine hits all methods alike); the figure is the median of the rounds.
Size: bytes of weights + scales (+ zero points) + bias (:func:`~scratchlm.compress.size_bytes`;
torchao tensor subclasses are counted by their inner tensors; ``quantize_dynamic`` by its int8
codes, one scale and the bias — fbgemm's packed layout may hold more). ``err`` is the largest
|y − y_fp32| relative to max |y_fp32|. Timings depend on the machine and its load.
Introduced in Chapter 12.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..compress import DynamicInt8Linear, QuantizedLinear, latency_side_by_side, size_bytes

METHODS = ("fp32", "ours w8", "ours w4 g128", "ours dyn8", "torchao w8", "torchao dyn8", "torch.ao dyn8")


@dataclass
class QuantBenchRow:
    """One (shape, batch, threads, method) measurement."""

    shape: str
    batch: int
    threads: int
    method: str
    ms: float  # median wall time of one forward call, milliseconds
    size_kib: float  # storage of the layer(s), KiB
    err: float  # max |y − y_fp32| / max |y_fp32|


def _shapes(d: int, d_ff: int) -> dict[str, Callable[[], nn.Module]]:
    return {
        f"linear {d}->{d}": lambda: nn.Linear(d, d),
        f"linear {d}->{d_ff}": lambda: nn.Linear(d, d_ff),
        f"mlp {d}->{d_ff}->{d}": lambda: nn.Sequential(nn.Linear(d, d_ff), nn.GELU(), nn.Linear(d_ff, d)),
    }


def _swap_linears(model: nn.Module, build: Callable[[nn.Linear], nn.Module]) -> nn.Module:
    """A copy of ``model`` (a Linear or a Sequential of them) with every Linear replaced by build(linear)."""
    if isinstance(model, nn.Linear):
        return build(model)
    model = copy.deepcopy(model)
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            setattr(model, name, build(child))
    return model


def _torchao():
    logging.getLogger("torchao").setLevel(logging.ERROR)  # its optional GPU extensions fail to load on CPU
    try:
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )
    except ImportError:
        return None
    return quantize_, Int8WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig


def _torchao_model(model: nn.Module, config) -> nn.Module:
    quantize_ = _torchao()[0]
    wrapped = nn.Sequential(copy.deepcopy(model))  # quantize_ swaps weights of the Linears inside
    quantize_(wrapped, config)
    return wrapped


def _torch_ao_dynamic(model: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated
        return torch.ao.quantization.quantize_dynamic(nn.Sequential(copy.deepcopy(model)), {nn.Linear},
                                                      dtype=torch.qint8)


def storage_bytes(module: nn.Module) -> int:
    """:func:`size_bytes`, plus the int8 codes, scale and bias ``quantize_dynamic`` keeps outside
    parameters and buffers."""
    total = size_bytes(module)
    for m in module.modules():
        if isinstance(m, torch.ao.nn.quantized.dynamic.Linear):
            w, b = m.weight(), m.bias()
            total += w.numel() + 4 + (0 if b is None else b.numel() * b.element_size())
    return total


def build_methods(model: nn.Module) -> dict[str, nn.Module]:
    """Every method of the module docstring that can run here, built from the same float ``model``."""
    methods: dict[str, nn.Module] = {
        "fp32": model,
        "ours w8": _swap_linears(model, lambda lin: QuantizedLinear.from_linear(lin, 8)),
        "ours w4 g128": _swap_linears(model, lambda lin: QuantizedLinear.from_linear(lin, 4, "symmetric", "group", 128)),
        "ours dyn8": _swap_linears(model, lambda lin: DynamicInt8Linear.from_linear(lin)),
    }
    tao = _torchao()
    if tao is not None:
        _, w8, dyn8 = tao
        methods["torchao w8"] = _torchao_model(model, w8(set_inductor_config=False))
        methods["torchao dyn8"] = _torchao_model(model, dyn8(set_inductor_config=False))
    methods["torch.ao dyn8"] = _torch_ao_dynamic(model)
    return methods


def _time_round_robin(methods: dict[str, nn.Module], x: torch.Tensor, warmup: int, repeats: int) -> dict[str, float]:
    return latency_side_by_side({name: (lambda m=m: m(x)) for name, m in methods.items()}, warmup=warmup,
                                repeats=repeats)


def benchmark_quantize(*, d: int = 768, d_ff: int = 3072, batches: tuple[int, ...] = (1, 32),
                       threads: tuple[int, ...] = (2, 1), warmup: int = 5, repeats: int = 30,
                       seed: int = 0) -> list[QuantBenchRow]:
    """Measure every method for every shape, batch and thread count (see the module docstring)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0; got repeats={repeats}, warmup={warmup}")
    if d % 128 or d_ff % 128:
        raise ValueError(f"d and d_ff must be multiples of 128 (the int4 group size); got d={d}, d_ff={d_ff}")
    if not batches or not threads or any(b < 1 for b in batches) or any(t < 1 for t in threads):
        raise ValueError(f"batches and threads must be non-empty tuples of positive ints; got {batches}, {threads}")
    rows = []
    saved = torch.get_num_threads()
    try:
        for shape, make in _shapes(d, d_ff).items():
            torch.manual_seed(seed)
            model = make().eval()
            methods = build_methods(model)
            sizes = {name: storage_bytes(m) for name, m in methods.items()}
            for batch in batches:
                x = torch.randn(batch, d, generator=torch.Generator().manual_seed(seed))  # (batch, d)
                with torch.inference_mode():
                    ref = model(x)  # (batch, d_out)
                    errs = {n: float((m(x) - ref).abs().max() / ref.abs().max()) for n, m in methods.items()}
                for t in threads:
                    torch.set_num_threads(t)
                    ms = _time_round_robin(methods, x, warmup, repeats)
                    rows += [QuantBenchRow(shape, batch, t, n, ms[n], sizes[n] / 1024, errs[n]) for n in methods]
    finally:
        torch.set_num_threads(saved)
    return rows


def format_table(rows: list[QuantBenchRow]) -> str:
    """One block per (shape, batch): methods as rows, one latency column per thread count."""
    threads = sorted({r.threads for r in rows}, reverse=True)
    out = []
    for shape in dict.fromkeys(r.shape for r in rows):
        for batch in dict.fromkeys(r.batch for r in rows if r.shape == shape):
            sel = [r for r in rows if r.shape == shape and r.batch == batch]
            fp = {r.threads: r.ms for r in sel if r.method == "fp32"}
            head = f"{shape}, batch {batch}"
            cols = "".join(f" {f'ms @{t}thr':>10} {'vs fp32':>8}" for t in threads)
            out += [head, f"  {'method':<15}{cols} {'KiB':>9} {'err':>9}"]
            for method in dict.fromkeys(r.method for r in sel):
                by_t = {r.threads: r for r in sel if r.method == method}
                r0 = next(iter(by_t.values()))
                cells = "".join(f" {by_t[t].ms:>10.3f} {fp[t] / by_t[t].ms:>7.2f}x" for t in threads)
                out.append(f"  {method:<15}{cells} {r0.size_kib:>9.1f} {r0.err:>9.2e}")
            out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d", type=int, default=768, help="model width d (a multiple of 128)")
    parser.add_argument("--d-ff", type=int, default=3072, help="hidden width of the MLP, 4d (a multiple of 128)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="rows of the input")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="torch intra-op threads")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    load_before = _load()
    rows = benchmark_quantize(d=args.d, d_ff=args.d_ff, batches=tuple(args.batch), threads=tuple(args.threads),
                              warmup=args.warmup, repeats=args.repeats)
    try:
        import torchao

        tao_version = torchao.__version__
    except ImportError:
        tao_version = "not installed"
    print(f"quantized Linear / MLP forward on CPU, torch {torch.__version__}, torchao {tao_version}, "
          f"quantized engine {torch.backends.quantized.engine}")
    print(f"time: median of {args.repeats} round-robin rounds after {args.warmup} warm-up rounds, eager, "
          "inference_mode; 'vs fp32' = fp32 time / method time (> 1 is faster)")
    print(f"machine: {os.cpu_count()} CPUs, 1-min load average {load_before} before and {_load()} after the run "
          "(a load above the thread count means other processes competed for the cores)")
    print(format_table(rows))
    return [asdict(r) for r in rows]


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"


if __name__ == "__main__":
    main()
