"""Time and peak memory of attention vs sequence length T: reference path vs SDPA (Chapter 03).

Run ``python -m scratchlm.bench.attention --help``. For each T it times one causal self-attention
forward pass, q/k/v of shape (B, H, T, d), with ``impl="reference"`` (explicit Q Kᵀ, masked softmax,
weights @ V: materialises several (B, H, T, T) tensors) and ``impl="sdpa"``
(F.scaled_dot_product_attention, which on CPU and CUDA uses a fused kernel that processes the scores
in tiles and never stores the whole T×T matrix).

How it measures:
* time: the fastest of ``repeats`` calls after one warm-up call (the minimum is the least disturbed
  by other processes, as in :mod:`timeit`) (``torch.cuda.synchronize`` on GPU),
  under ``torch.inference_mode``;
* peak memory: on CPU, torch.profiler with ``profile_memory=True`` records every allocation and free
  made by PyTorch's allocator during one call; replaying them in time order gives the peak number of
  bytes held at once *above what existed before the call* (q, k, v are not counted, the output is).
  On CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation before the call.
* for scale, the table also prints the size of one fp32 (B, H, T, T) tensor, B·H·T²·4 bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import asdict, dataclass

import torch

from ..layers.attention import IMPLS, scaled_dot_product_attention


@dataclass
class AttentionBenchRow:
    """One (T, impl) measurement."""

    T: int  # sequence length (queries = keys = T)
    impl: str  # "reference" or "sdpa"
    ms: float  # fastest wall time of one forward call over the repeats, milliseconds
    peak_mib: float  # peak extra memory during one call, MiB (see module docstring)
    txt_mib: float  # size of one fp32 (B, H, T, T) tensor, MiB: the O(T²) yardstick


@contextlib.contextmanager
def _quiet_stderr_fd():
    """Silence file descriptor 2: the profiler's C++ side logs "profiler_start/stop" lines there."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _peak_cpu_bytes(fn) -> int:
    """Peak bytes held at once by allocations made during ``fn()`` (torch.profiler memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr_fd(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()  # + for an allocation, - for a free
        peak = max(peak, current)
    return peak


def _peak_cuda_bytes(fn, device: torch.device) -> int:
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def benchmark_attention(
    seq_lens: list[int],
    *,
    batch: int = 1,
    heads: int = 4,
    head_dim: int = 64,
    repeats: int = 5,
    causal: bool = True,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    threads: int | None = None,
) -> list[AttentionBenchRow]:
    """Measure both attention paths for every T in ``seq_lens`` (see the module docstring).

    ``threads`` sets torch's intra-op CPU threads for the measurement only (1 gives repeatable CPU
    timings on a busy machine; None keeps the current setting).
    """
    if not seq_lens or any(not isinstance(t, int) or t < 1 for t in seq_lens):
        raise ValueError(f"seq_lens must be a non-empty list of positive ints; got {seq_lens!r}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _measure(seq_lens, batch, heads, head_dim, repeats, causal, device, dtype, gen)
    finally:
        torch.set_num_threads(saved_threads)


def _measure(seq_lens, batch, heads, head_dim, repeats, causal, device, dtype, gen) -> list[AttentionBenchRow]:
    rows = []
    for T in seq_lens:
        q, k, v = (torch.randn(batch, heads, T, head_dim, generator=gen).to(device, dtype) for _ in range(3))
        for impl in IMPLS:

            def call(impl=impl, q=q, k=k, v=v):
                with torch.inference_mode():
                    return scaled_dot_product_attention(q, k, v, is_causal=causal, impl=impl)

            call()  # warm-up (kernel selection, allocator)
            times = []
            for _ in range(repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                call()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - start)
            peak = _peak_cuda_bytes(call, device) if device.type == "cuda" else _peak_cpu_bytes(call)
            rows.append(
                AttentionBenchRow(
                    T=T,
                    impl=impl,
                    ms=1000 * min(times),
                    peak_mib=peak / 2**20,
                    txt_mib=batch * heads * T * T * 4 / 2**20,
                )
            )
    return rows


def format_table(rows: list[AttentionBenchRow]) -> str:
    """A plain-text table with one line per T: both paths side by side."""
    by_t: dict[int, dict[str, AttentionBenchRow]] = {}
    for r in rows:
        by_t.setdefault(r.T, {})[r.impl] = r
    head = (
        f"{'T':>6} | {'ref ms':>9} {'sdpa ms':>9} {'speed-up':>8} | "
        f"{'ref peak MiB':>12} {'sdpa peak MiB':>13} | {'one TxT fp32 MiB':>16}"
    )
    lines = [head, "-" * len(head)]
    for T, pair in by_t.items():
        ref, fast = pair["reference"], pair["sdpa"]
        lines.append(
            f"{T:>6} | {ref.ms:>9.2f} {fast.ms:>9.2f} {ref.ms / fast.ms:>7.1f}x | "
            f"{ref.peak_mib:>12.2f} {fast.peak_mib:>13.2f} | {ref.txt_mib:>16.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int, nargs="+", default=[128, 256, 512, 1024, 2048], help="sequence lengths")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-causal", action="store_true", help="no causal mask")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    rows = benchmark_attention(
        args.T,
        batch=args.batch,
        heads=args.heads,
        head_dim=args.head_dim,
        repeats=args.repeats,
        causal=not args.no_causal,
        device=args.device,
        dtype=getattr(torch, args.dtype),
        threads=args.threads,
    )
    print(
        f"attention forward, causal={not args.no_causal}, B={args.batch}, H={args.heads}, d={args.head_dim}, "
        f"{args.dtype}, device={args.device}, torch {torch.__version__}, threads {args.threads or torch.get_num_threads()}"
    )
    print(f"time: fastest of {args.repeats} calls after a warm-up; peak: extra bytes allocated during one call")
    print(format_table(rows))
    return [asdict(r) for r in rows]


if __name__ == "__main__":
    main()
