"""How data parallelism scales: compute against communication (introduced in Chapter 14).

**Ring all-reduce** (Patarasuk & Yuan, 2009). N ranks in a ring, each with a buffer of S bytes cut
into N chunks. A reduce-scatter (N−1 rounds: pass a chunk on, add the one received) leaves each rank
with one fully summed chunk; an all-gather (N−1 more rounds) spreads the sums. Each rank sends
2(N−1) chunks of S/N bytes, so with link bandwidth β and per-message latency α

    t_allreduce(S, N) = 2 (N−1)/N · S / β  +  2 (N−1) α .

The bandwidth term barely grows with N (it tends to 2S/β): that is why the ring is the default.
(NCCL reports "bus bandwidth" busbw = 2(N−1)/N · S / t, which is β for a perfect ring.)

**Per-step communication volume** per rank: DDP all-reduces the gradients, 2(N−1)/N·S. FSDP/ZeRO-3
all-gathers the parameters in forward and again in backward and reduce-scatters the gradients:
3(N−1)/N·S, 1.5 x DDP's (Rajbhandari et al., 2020).

**Step time.** A rank computes for t_c (forward + backward + update on its share of the batch);
gradients of late layers are ready while early layers still run backward, so DDP starts their
all-reduce early (buckets) and hides up to a fraction ``overlap`` of t_c:

    t_step = t_c + max(0, t_comm − overlap · t_c) .

*Weak scaling* (each rank keeps its per-rank batch, the global batch grows with N): t_c stays the
one-rank time, throughput = N · tokens / t_step. *Strong scaling* (fixed global batch): t_c = t_1/N,
and communication, which does not shrink with N, soon dominates.
"""

from __future__ import annotations

from typing import Literal

COMM_FACTOR = {"ddp": 2.0, "fsdp": 3.0}  # bytes sent per rank = factor · (N−1)/N · S


def _check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number; got {value!r}")


def ring_allreduce_seconds(nbytes: float, world_size: int, bandwidth: float, latency_s: float = 0.0) -> float:
    """2(N−1)/N · nbytes / bandwidth + 2(N−1)·latency (bandwidth in bytes per second); 0 for N = 1."""
    _check_positive("nbytes", nbytes, allow_zero=True)
    _check_positive("bandwidth", bandwidth)
    _check_positive("latency_s", latency_s, allow_zero=True)
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int; got {world_size!r}")
    n = world_size
    return 2 * (n - 1) / n * nbytes / bandwidth + 2 * (n - 1) * latency_s


def bus_bandwidth(nbytes: float, world_size: int, seconds: float) -> float:
    """NCCL's busbw of a measured all-reduce: 2(N−1)/N · nbytes / seconds (bytes per second)."""
    _check_positive("seconds", seconds)
    return 2 * (world_size - 1) / world_size * nbytes / seconds


def comm_seconds(strategy: str, nbytes: float, world_size: int, bandwidth: float, latency_s: float = 0.0) -> float:
    """Communication time of one step for ``strategy`` ("ddp": 1 all-reduce; "fsdp": 1.5 x that)."""
    if strategy not in COMM_FACTOR:
        raise ValueError(f"strategy must be one of {tuple(COMM_FACTOR)}; got {strategy!r}")
    return COMM_FACTOR[strategy] / 2 * ring_allreduce_seconds(nbytes, world_size, bandwidth, latency_s)


def step_seconds(compute_s: float, world_size: int, nbytes: float, bandwidth: float, *, latency_s: float = 0.0,
                 overlap: float = 0.0, scaling: Literal["weak", "strong"] = "weak", strategy: str = "ddp") -> float:
    """Modelled time of one data-parallel step: t_c + max(0, t_comm − overlap·t_c).

    ``compute_s`` is the one-rank step time for the per-rank batch (weak scaling) or for the whole
    global batch (strong scaling, divided by N here). ``overlap`` in [0, 1] is the fraction of the
    compute time that can hide communication.
    """
    _check_positive("compute_s", compute_s)
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"overlap must lie in [0, 1]; got {overlap!r}")
    if scaling not in ("weak", "strong"):
        raise ValueError(f"scaling must be 'weak' or 'strong'; got {scaling!r}")
    t_c = compute_s if scaling == "weak" else compute_s / world_size
    t_comm = comm_seconds(strategy, nbytes, world_size, bandwidth, latency_s)
    return t_c + max(0.0, t_comm - overlap * t_c)


def speedup(compute_s: float, world_size: int, nbytes: float, bandwidth: float, **kwargs) -> float:
    """Throughput of N ranks over one rank's, from :func:`step_seconds` (weak: N·t_1/t_N; strong: t_1/t_N)."""
    t_n = step_seconds(compute_s, world_size, nbytes, bandwidth, **kwargs)
    factor = world_size if kwargs.get("scaling", "weak") == "weak" else 1
    return factor * compute_s / t_n


def training_flops(num_params: int, tokens: int) -> float:
    """≈ 6·Ψ·tokens floating-point operations for a forward + backward pass (Kaplan et al., 2020)."""
    return 6.0 * num_params * tokens
