"""Small PyTorch tools the first chapter builds and later chapters reuse (introduced in Chapter 01).

- :func:`finite_difference_grad`: a central-difference gradient, the independent check of autograd.
- :func:`time_fn` / :func:`compare_times`: median wall time of a call in milliseconds (warm-up first,
  CUDA synchronised; several contenders interleaved so machine load hits them alike).
- :func:`count_parameters` / :func:`parameter_table`: how many parameters a module has, and which
  of them the optimizer may update.
- :func:`dtype_table`: range, precision and size of floating-point dtypes from ``torch.finfo``.
- :func:`gelu_tanh`: GELU written as elementary ops, the classic "many small kernels" function that
  ``torch.compile`` fuses into one.
- :class:`TinyBlock` / :class:`TinyCharLM`: a compact pre-LN transformer block and a character LM
  around it, the specimen Chapter 01 times, freezes, saves and trains. Chapters 03-06 build every
  piece of it properly (attention, positions, blocks, GPT); this one only has to be small and correct.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------- autograd checks


def finite_difference_grad(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, eps: float = 1e-6
) -> torch.Tensor:
    """Central-difference estimate of the gradient of a scalar function.

    For every element i:  dL/dx_i ≈ (f(x + eps·e_i) − f(x − eps·e_i)) / (2·eps),
    with truncation error O(eps²) and round-off error O(u/eps) (u = unit round-off of x's dtype),
    so use float64 and eps ≈ 1e-6 for a tight check. Costs 2·x.numel() calls of ``fn``.
    ``x`` is restored on return.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must have a floating-point dtype; got {x.dtype}")
    if not callable(fn):
        raise TypeError(f"fn must be callable; got {type(fn).__name__}")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps must be a positive number; got {eps!r}")
    grad = torch.zeros_like(x)  # same shape and dtype as x
    flat_x = x.detach().view(-1)  # (N,) shares storage with x, so edits are seen by fn
    flat_grad = grad.view(-1)  # (N,)
    with torch.no_grad():
        for i in range(flat_x.numel()):
            original = flat_x[i].item()
            flat_x[i] = original + eps
            f_plus = _as_scalar(fn(x))
            flat_x[i] = original - eps
            f_minus = _as_scalar(fn(x))
            flat_x[i] = original  # restore before the next coordinate
            flat_grad[i] = (f_plus - f_minus) / (2 * eps)
    return grad


def _as_scalar(value) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"fn must return a scalar; got a tensor of shape {tuple(value.shape)}")
        return value.item()
    if isinstance(value, (int, float)):
        return float(value)
    raise TypeError(f"fn must return a scalar tensor or number; got {type(value).__name__}")


# ----------------------------------------------------------------------------- timing


def _check_timing_args(warmup: int, repeats: int) -> None:
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int; got {warmup!r}")
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"repeats must be a positive int; got {repeats!r}")


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _time_samples(fn: Callable, args: tuple, kwargs: dict, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn(*args, **kwargs)
    _sync()
    samples_ms = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args, **kwargs)
        _sync()
        samples_ms.append((time.perf_counter() - start) * 1e3)
    return samples_ms


def time_fn(fn: Callable, *args, warmup: int = 3, repeats: int = 20, **kwargs) -> float:
    """Median wall time of ``fn(*args, **kwargs)`` in milliseconds.

    ``warmup`` untimed calls come first (they pay for lazy initialisation, autotuning and, for a
    compiled function, compilation). The median of ``repeats`` timed calls is robust to the odd
    slow call on a shared machine. CUDA work is synchronised before each clock read, so the time
    is that of the kernels, not of their launch.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable; got {type(fn).__name__}")
    _check_timing_args(warmup, repeats)
    return statistics.median(_time_samples(fn, args, kwargs, warmup, repeats))


def compare_times(
    fns: dict[str, Callable], *args, rounds: int = 3, warmup: int = 2, repeats: int = 10, **kwargs
) -> dict[str, float]:
    """Median milliseconds per call of several functions on the same arguments, fairly interleaved.

    The functions take turns for ``rounds`` rounds of ``repeats`` timed calls each, so a slow
    phase of a shared machine hits all of them alike; each result is the median over its
    ``rounds × repeats`` samples.
    """
    if not isinstance(fns, dict) or not fns:
        raise ValueError(f"fns must be a non-empty dict of name -> callable; got {fns!r}")
    for name, fn in fns.items():
        if not callable(fn):
            raise TypeError(f"fns[{name!r}] must be callable; got {type(fn).__name__}")
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ValueError(f"rounds must be a positive int; got {rounds!r}")
    _check_timing_args(warmup, repeats)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for round_index in range(rounds):
        for name, fn in fns.items():
            samples[name] += _time_samples(fn, args, kwargs, warmup if round_index == 0 else 0, repeats)
    return {name: statistics.median(values) for name, values in samples.items()}


# ----------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class ParameterCount:
    """Parameter totals of a module (shared parameters counted once)."""

    total: int  # every parameter element
    trainable: int  # elements with requires_grad=True: what the optimizer may update

    @property
    def frozen(self) -> int:
        return self.total - self.trainable


def count_parameters(module: nn.Module) -> ParameterCount:
    """Total and trainable parameter elements: Σ p.numel() over ``module.parameters()``."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module; got {type(module).__name__}")
    params = list(module.parameters())  # parameters() yields a shared tensor once
    return ParameterCount(
        total=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in params if p.requires_grad),
    )


def parameter_table(module: nn.Module, *, depth: int | None = None) -> list[dict]:
    """One row per parameter (``depth=None``) or per name prefix of ``depth`` dotted parts.

    Rows are dicts ready for ``pandas.DataFrame(rows)``: ``name, shape, numel, trainable`` per
    parameter; ``name, numel, trainable`` per group, where ``trainable`` is ``"yes"``, ``"no"`` or
    ``"partly"``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module; got {type(module).__name__}")
    if depth is not None and (not isinstance(depth, int) or isinstance(depth, bool) or depth < 1):
        raise ValueError(f"depth must be None or a positive int; got {depth!r}")
    rows: list[dict] = []
    if depth is None:
        for name, p in module.named_parameters():
            rows.append(dict(name=name, shape=tuple(p.shape), numel=p.numel(), trainable=p.requires_grad))
        return rows
    groups: dict[str, list[nn.Parameter]] = {}
    for name, p in module.named_parameters():
        groups.setdefault(".".join(name.split(".")[:depth]), []).append(p)
    for name, params in groups.items():
        flags = {p.requires_grad for p in params}
        trainable = "yes" if flags == {True} else "no" if flags == {False} else "partly"
        rows.append(dict(name=name, numel=sum(p.numel() for p in params), trainable=trainable))
    return rows


# ----------------------------------------------------------------------------- dtypes


def dtype_table(dtypes: Sequence[torch.dtype] = (torch.float64, torch.float32, torch.bfloat16, torch.float16)):
    """Range and precision of floating-point dtypes, from ``torch.finfo``.

    ``eps`` is the gap between 1 and the next representable number (relative precision ≈ eps/2),
    ``max`` the largest finite value, ``tiny`` the smallest positive normal number, and
    ``digits`` ≈ −log10(eps), the significant decimal digits.
    """
    rows = []
    for dtype in dtypes:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype_table takes floating-point torch dtypes; got {dtype!r}")
        info = torch.finfo(dtype)
        rows.append(
            dict(
                dtype=str(dtype).replace("torch.", ""),
                bits=info.bits,
                bytes=info.bits // 8,
                eps=info.eps,
                max=info.max,
                tiny=info.tiny,
                digits=round(-math.log10(info.eps), 1),
            )
        )
    return rows


# ----------------------------------------------------------------------------- specimens


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation, from elementary ops:

    GELU(x) ≈ 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))

    Eager PyTorch runs each op as its own kernel with a temporary tensor (memory-bound);
    ``torch.compile`` fuses them into one loop. Equals ``F.gelu(x, approximate="tanh")``.
    """
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class TinyBlock(nn.Module):
    """A pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x)), causal self-attention.

    Attn(X) = softmax(QKᵀ/√d + M)V per head with the causal mask M, MLP(x) = W₂·GELU(W₁x + b₁) + b₂.
    Same maths as ``nn.TransformerEncoderLayer(norm_first=True, activation="gelu")`` with a causal
    mask; written out so its parameters have readable names.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int | None = None):
        super().__init__()
        if d_model <= 0 or n_heads <= 0 or d_model % n_heads != 0:
            raise ValueError(f"d_model must be a positive multiple of n_heads; got {d_model} and {n_heads}")
        self.n_heads = n_heads  # heads share the width: head_dim = d_model // n_heads
        self.ln_1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)  # Q, K and V projections in one matmul
        self.proj = nn.Linear(d_model, d_model)  # output projection Wᴼ
        self.ln_2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, d_ff or 4 * d_model)  # MLP up-projection
        self.fc_out = nn.Linear(d_ff or 4 * d_model, d_model)  # MLP down-projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        H = self.n_heads
        q, k, v = self.qkv(self.ln_1(x)).split(C, dim=-1)  # 3 × (B, T, C)
        q = q.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, d)
        k = k.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, d)
        v = v.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, d)
        scores = q @ k.transpose(-2, -1) / math.sqrt(C // H)  # (B, H, T, T)
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)  # (T, T) True above diagonal
        weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)  # (B, H, T, T)
        y = (weights @ v).transpose(1, 2).reshape(B, T, C)  # (B, T, C) heads concatenated
        x = x + self.proj(y)  # (B, T, C) residual
        return x + self.fc_out(F.gelu(self.fc(self.ln_2(x))))  # (B, T, C) residual


class TinyCharLM(nn.Module):
    """Token + position embeddings → ``n_layers`` :class:`TinyBlock` → LayerNorm → vocabulary logits.

    p(w_t | w_<t) = softmax(W_head · h_t); the loss is the mean cross-entropy −log p(w_t | w_<t).
    """

    def __init__(self, vocab_size: int, block_size: int, d_model: int, n_heads: int, n_layers: int = 1):
        super().__init__()
        for name, value in dict(vocab_size=vocab_size, block_size=block_size, n_layers=n_layers).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        self.block_size = block_size  # longest context the position table covers
        self.tok_emb = nn.Embedding(vocab_size, d_model)  # token id -> vector
        self.pos_emb = nn.Embedding(block_size, d_model)  # position -> vector
        self.blocks = nn.ModuleList(TinyBlock(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)  # hidden -> next-token logits

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        if idx.dim() != 2 or idx.dtype != torch.long:
            raise ValueError(f"idx must be a (B, T) long tensor; got {tuple(idx.shape)} {idx.dtype}")
        B, T = idx.shape
        if T > self.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.block_size}")
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.tok_emb(idx) + self.pos_emb(pos)  # (B, T, C) + (T, C) broadcasts to (B, T, C)
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        logits = self.head(self.ln_f(x))  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T))  # scalar
        return logits, loss
