"""Muon: momentum, then an orthogonalised update, for the hidden weight matrices (introduced in Chapter 06).

* :func:`newton_schulz_orthogonalize`: an approximate polar factor U Vᵀ of a matrix G = U Σ Vᵀ,
  computed with matrix products only (no SVD), in a few odd-polynomial Newton–Schulz steps.
* :class:`Muon`: a ``torch.optim.Optimizer`` for 2-D parameters: momentum with Nesterov look-ahead,
  the update orthogonalised, scaled by the matrix's shape, plus decoupled weight decay.
* :func:`build_muon_adamw` → :class:`MuonAdamW`: one optimizer; Muon for the hidden matrices,
  AdamW for the embeddings, the output head, the biases and the norm gains.

Why orthogonalise: the gradient of a weight matrix in a transformer is nearly low-rank; a few
directions dominate it, and SGD or Adam spend almost the whole step on them. Replacing the update
M = U Σ Vᵀ by U Vᵀ keeps its directions but gives every one of them the same size, so rare directions
are learnt as fast as common ones. U Vᵀ is also the steepest-descent step when the size of a step is
measured by the spectral norm (the largest factor by which it can change a layer's output).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

QUINTIC_COEFFICIENTS = (3.4260, -4.7619, 2.1369)  # (a, b, c): fast; singular values end in [0.8, 1.2]
CUBIC_COEFFICIENTS = (1.5, -0.5, 0.0)  # the classic iteration: slow; converges to exactly 1
QUINTIC_BAND = (0.8, 1.2)  # where the quintic keeps every singular value once it got there


def newton_schulz_orthogonalize(
    G: torch.Tensor,
    steps: int = 5,
    eps: float = 1e-7,
    *,
    coefficients: tuple[float, float, float] = QUINTIC_COEFFICIENTS,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Approximate the orthogonal polar factor U Vᵀ of G = U Σ Vᵀ (``G`` of shape (..., m, n)).

    Normalise, X₀ = G / (‖G‖_F + eps); then ``steps`` times X ← a X + b (X Xᵀ) X + c (X Xᵀ)² X.

    Why it works, one singular value at a time: with X = U Σ Vᵀ, X Xᵀ = U Σ² Uᵀ, so the step is
    X ← U p(Σ) Vᵀ with the odd polynomial p(σ) = a σ + b σ³ + c σ⁵. U and V never change; each
    singular value just follows σ ← p(σ). The normalisation puts them all in (0, 1], because
    σ_max ≤ ‖G‖_F = √(Σᵢ σᵢ²); it also makes the result independent of the scale of G.

    The classic cubic (a, b, c) = (1.5, −0.5, 0) has the fixed point p(1) = 1 with p'(1) = 0, so σ
    converges quadratically to exactly 1 once near it; but a tiny σ grows only by p'(0) = 1.5 per
    step, so a σ of 10⁻³ needs ~17 steps. The quintic used here trades the exact fixed point for
    speed: it is the largest slope a = p'(0) for which (i) p(σ) ≤ 1.2 on [0, 1.2] (nothing
    overshoots), (ii) p(σ) ≥ 0.8 on [0.8, 1.2] (the band [0.8, 1.2] is never left), (iii) p(σ) ≥ σ on
    [0, 0.8] (small values only grow). p is linear in (a, b, c), so this is a small linear programme;
    its solution is (a, b, c) = (3.4260, −4.7619, 2.1369). The constraints that bind are an
    equioscillation: local maximum p(0.560) = 1.200, local minimum p(1.012) = 0.800, fixed point
    p(1.2) = 1.2. The other fixed points are 0 (slope 3.43: tiny values grow 3.43× per step) and
    0.888 (slope −1.20: repelling), so inside the band values keep hopping around 1 instead of
    settling on it: after 5 steps every σ ∈ [0.002, 1] lies in [0.80, 1.20] (not at 1). For direction,
    that is good enough: the cosine similarity to U Vᵀ is 0.993 for rectangular Gaussian matrices and
    0.984–0.992 for square ones (whose smallest σ lie below 0.002·‖G‖_F; 96–98 % still end in the
    band). Jordan et al.'s Muon uses (3.4445, −4.7750, 2.0315): about the same slope (same reach,
    σ ≥ 0.002 in 5 steps) with a wider band, [0.68, 1.20].

    Work is done on the wide orientation (m ≤ n; a tall G is transposed and back), so the Gram
    matrix X Xᵀ is the smaller min(m, n)² one. Float32 by default (bf16 halves the cost on
    accelerators with fast bf16 matmuls, at ~1 % error; the band above is for float32). Returns a
    tensor of G's shape and dtype.
    """
    if not isinstance(G, torch.Tensor):
        raise TypeError(f"G must be a torch.Tensor; got {type(G).__name__}")
    if G.ndim < 2:
        raise ValueError(f"G must have shape (..., m, n) with at least 2 dims; got shape {tuple(G.shape)}")
    if not G.is_floating_point():
        raise TypeError(f"G must be a floating-point tensor; got dtype {G.dtype}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0; got {steps!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0; got {eps!r}")
    if len(coefficients) != 3:
        raise ValueError(f"coefficients must be (a, b, c); got {coefficients!r}")
    a, b, c = (float(x) for x in coefficients)
    X = G.to(dtype)  # (..., m, n)
    transposed = X.size(-2) > X.size(-1)
    if transposed:
        X = X.mT  # (..., n, m): wide, rows <= cols
    X = X / (torch.linalg.matrix_norm(X, keepdim=True) + eps)  # (..., r, k) all singular values <= 1
    for _ in range(steps):
        A = X @ X.mT  # (..., r, r) = U Σ² Uᵀ
        B = b * A + c * (A @ A)  # (..., r, r) = U (b Σ² + c Σ⁴) Uᵀ
        X = a * X + B @ X  # (..., r, k) = U p(Σ) Vᵀ
    if transposed:
        X = X.mT  # (..., m, n)
    return X.to(G.dtype)


def muon_update_scale(rows: int, cols: int) -> float:
    """s = √max(1, rows / cols): the factor on the orthogonalised update of a (rows, cols) weight.

    Why: for a weight W of nn.Linear's shape (out, in) = (m, n) and an input x with entries of RMS 1,
    the change O x of the layer's output has E‖O x‖² = tr(Oᵀ O) = min(m, n) for an orthogonalised O.
    Its RMS over the m outputs is therefore 1 when m ≤ n (wide: O Oᵀ = I) but √(n/m) < 1 when m > n
    (tall: Oᵀ O = I). Multiplying by √(m/n) in the tall case makes a step of size lr move every
    layer's outputs by the same RMS, lr, whatever its shape (e.g. 2× for the 4C×C MLP input matrix).
    (Moonlight's alternative, 0.2·√max(m, n), matches the update RMS of AdamW instead, so AdamW's
    learning rate can be reused; the book sets Muon's learning rate on its own.)
    """
    return math.sqrt(max(1.0, rows / cols))


def _first_non_matrix(params: list) -> str | None:
    """Describe the first parameter that is not a 2-D matrix (``params`` as :func:`_tensors` returns them:
    tensors or ``(name, tensor)`` pairs), or return None when all are."""
    for index, item in enumerate(params):
        name, tensor = item if isinstance(item, tuple) else (None, item)
        if isinstance(tensor, torch.Tensor) and tensor.ndim != 2:
            label = f"parameter {name!r}" if name else f"parameter {index} of the group"
            return f"{label} has shape {tuple(tensor.shape)} ({tensor.ndim}-D)"
    return None


def _tensors(params: Any) -> list[Any]:
    return [params] if isinstance(params, torch.Tensor) else list(params)


class _NewtonSchulzOptimizer(torch.optim.Optimizer):
    """The base of :class:`Muon` and :class:`MuonAdamW`: optimizers that keep Newton–Schulz settings
    (``coefficients``, ``ns_dtype``) outside the param groups."""

    coefficients: Any
    ns_dtype: Any

    def __getstate__(self) -> dict[str, Any]:
        """torch.optim.Optimizer pickles only defaults, state and param_groups; keep the NS settings too
        (``copy.deepcopy`` and ``pickle`` go through here)."""
        return {**super().__getstate__(), "coefficients": self.coefficients, "ns_dtype": self.ns_dtype}


class Muon(_NewtonSchulzOptimizer):
    """Momentum, orthogonalised: for every 2-D parameter W with gradient G, each step does

        v ← μ v + G                               (momentum buffer; v₀ = 0)
        u = G + μ v  (Nesterov)   or   u = v      (heavy ball)
        W ← W (1 − lr·λ) − lr · √max(1, m/n) · NS(u)

    where NS is :func:`newton_schulz_orthogonalize` (``ns_steps`` steps) and λ the decoupled weight
    decay (AdamW-style: it shrinks W directly and is not part of the momentum). Because NS removes
    the scale of u, PyTorch-SGD's momentum form used here and the EMA form v ← μ v + (1 − μ) G give
    the same update. Parameters must be 2-D matrices (nn.Linear's (out, in) layout for the shape
    factor, see :func:`muon_update_scale`); anything else is rejected. Introduced in Chapter 06.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        ns_steps: int = 5,
        *,
        coefficients: tuple[float, float, float] = QUINTIC_COEFFICIENTS,
        ns_dtype: torch.dtype = torch.float32,
    ) -> None:
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0; got {lr!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1); got {momentum!r}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0; got {weight_decay!r}")
        if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or ns_steps < 1:
            raise ValueError(f"ns_steps must be an int >= 1; got {ns_steps!r}")
        self.coefficients = tuple(float(x) for x in coefficients)
        self.ns_dtype = ns_dtype
        defaults = dict(lr=lr, momentum=momentum, nesterov=bool(nesterov), weight_decay=weight_decay,
                        ns_steps=ns_steps)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group after checking that every parameter in it is a 2-D matrix."""
        params = _tensors(param_group["params"])  # a generator can be read only once
        problem = _first_non_matrix(params)
        if problem:
            raise ValueError(f"Muon updates 2-D weight matrices only; {problem}. Give embeddings, biases "
                             f"and norm gains to AdamW (see build_muon_adamw).")
        super().add_param_group({**param_group, "params": params})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One Muon update of every parameter that has a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    muon_update(p, self.state[p], group, group["lr"], self.coefficients, self.ns_dtype)
        return loss


def muon_update(p: torch.Tensor, state: dict[str, Any], group: dict[str, Any], lr: float,
                coefficients: tuple[float, float, float], ns_dtype: torch.dtype) -> None:
    """Muon's step for one matrix (see :class:`Muon`): momentum, orthogonalise, scale, decay."""
    grad = p.grad  # (m, n)
    if grad.is_sparse:
        raise TypeError("Muon does not support sparse gradients")
    if "momentum_buffer" not in state:
        state["momentum_buffer"] = torch.zeros_like(grad)  # (m, n)
    buf, mu = state["momentum_buffer"], group["momentum"]
    buf.mul_(mu).add_(grad)  # (m, n) v ← μ v + G
    update = grad.add(buf, alpha=mu) if group["nesterov"] else buf  # (m, n)
    ortho = newton_schulz_orthogonalize(update, group["ns_steps"], coefficients=coefficients,
                                        dtype=ns_dtype)  # (m, n) ≈ U Vᵀ
    if group["weight_decay"] != 0:
        p.mul_(1.0 - lr * group["weight_decay"])  # (m, n) decoupled weight decay
    p.add_(ortho, alpha=-lr * muon_update_scale(p.size(0), p.size(1)))  # (m, n)


def adamw_update(p: torch.Tensor, state: dict[str, Any], group: dict[str, Any], lr: float) -> None:
    """AdamW's step for one tensor (Loshchilov & Hutter), written out; torch.optim.AdamW is the reference.

    t ← t + 1;  W ← W (1 − lr·λ);  m ← β₁ m + (1 − β₁) g;  v ← β₂ v + (1 − β₂) g²;
    W ← W − lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)
    """
    grad = p.grad  # same shape as p
    if grad.is_sparse:
        raise TypeError("AdamW here does not support sparse gradients")
    if "step" not in state:
        state["step"] = torch.tensor(0.0)  # on the CPU: reading it never waits for an accelerator
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    beta1, beta2 = group["betas"]
    state["step"] += 1
    t = state["step"].item()
    if group["weight_decay"] != 0:
        p.mul_(1.0 - lr * group["weight_decay"])
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m.lerp_(grad, 1.0 - beta1)  # m ← β₁ m + (1 − β₁) g
    v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)  # v ← β₂ v + (1 − β₂) g²
    denom = (v.sqrt() / math.sqrt(1.0 - beta2**t)).add_(group["eps"])
    p.addcdiv_(m, denom, value=-lr / (1.0 - beta1**t))


# Parameters that stay with AdamW even when 2-D: embedding tables and output heads, by name.
ADAMW_NAME_PATTERN = (r"embed|(^|\.)(wte|wpe|lm_head|head|shared|classifier|score|seq_relationship"
                      r"|relative_attention_bias)\.")


def split_parameters(
    model: nn.Module,
    use_muon: Callable[[str, nn.Parameter], bool] | None = None,
    *,
    adamw_pattern: str = ADAMW_NAME_PATTERN,
) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Sort the trainable parameters into ``{"muon": ..., "adamw_decay": ..., "adamw_no_decay": ...}``.

    Each parameter lands in exactly one list (``named_parameters`` lists a tied weight once). Default
    rule for Muon: 2-D, not the weight of an ``nn.Embedding``, and a name that ``adamw_pattern`` does
    not match (embeddings and output heads). ``use_muon(name, param)`` replaces that rule. The rest
    goes to AdamW: 2-D and larger decays (nanoGPT's rule), 1-D (biases, norm gains) does not.

    Why embeddings and the head stay with AdamW: an embedding's input is a one-hot vector, so a row
    is a free vector per token, not part of a linear map between hidden spaces; its natural step
    normalises each row (as Adam's per-coordinate scaling roughly does), not the matrix's singular
    values, and rows of tokens absent from the batch get no gradient at all. The output head maps
    to logits over the vocabulary (V ≫ C) and is tied to the embedding in GPT; Muon's authors found
    both train better with AdamW, and biases and gains are vectors, which Muon cannot orthogonalise.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"split_parameters expects an nn.Module; got {type(model).__name__}")
    embedding_ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    pattern = re.compile(adamw_pattern)

    def default_rule(name: str, param: nn.Parameter) -> bool:
        return param.ndim == 2 and id(param) not in embedding_ids and not pattern.search(name)

    rule = use_muon or default_rule
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {"muon": [], "adamw_decay": [], "adamw_no_decay": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if rule(name, param):
            if param.ndim != 2:
                raise ValueError(f"use_muon selected {name!r} of shape {tuple(param.shape)}; Muon needs 2-D "
                                 f"matrices")
            groups["muon"].append((name, param))
        else:
            groups["adamw_decay" if param.ndim >= 2 else "adamw_no_decay"].append((name, param))
    return groups


class MuonAdamW(_NewtonSchulzOptimizer):
    """One optimizer, two update rules: groups with ``use_muon`` get :class:`Muon`'s, the rest AdamW's.

    One ``torch.optim.Optimizer``, so a training loop, ``state_dict``/``load_state_dict`` and
    :func:`scratchlm.training.save_checkpoint` treat it like any other. Every group may carry
    ``lr_scale``: the rate used is ``group["lr"] × group["lr_scale"]``, so a loop that writes the same
    scheduled lr into every group (as the book's loop does) drives Muon at, e.g., 20× AdamW's rate
    with one schedule. Muon groups use ``momentum``, ``nesterov``, ``ns_steps``; AdamW groups
    ``betas`` and ``eps``; both ``weight_decay`` (decoupled). AdamW is written out in
    :func:`adamw_update` (a loop over tensors, not PyTorch's fused kernel: here it only updates the
    embeddings, the head and the vectors). Introduced in Chapter 06.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        *,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        coefficients: tuple[float, float, float] = QUINTIC_COEFFICIENTS,
        ns_dtype: torch.dtype = torch.float32,
    ) -> None:
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0; got {lr!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1); got {momentum!r}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1); got {betas!r}")
        if not eps >= 0 or not weight_decay >= 0:
            raise ValueError(f"eps and weight_decay must be >= 0; got {eps!r}, {weight_decay!r}")
        if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or ns_steps < 1:
            raise ValueError(f"ns_steps must be an int >= 1; got {ns_steps!r}")
        self.coefficients = tuple(float(x) for x in coefficients)
        self.ns_dtype = ns_dtype
        defaults = dict(lr=lr, lr_scale=1.0, use_muon=False, momentum=momentum, nesterov=bool(nesterov),
                        ns_steps=ns_steps, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; a ``use_muon`` group must hold 2-D matrices only."""
        params = _tensors(param_group["params"])
        problem = _first_non_matrix(params) if param_group.get("use_muon", self.defaults["use_muon"]) else None
        if problem:
            raise ValueError(f"a use_muon group takes 2-D weight matrices only; {problem}")
        super().add_param_group({**param_group, "params": params})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Update every parameter that has a gradient at lr × lr_scale; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = group["lr"] * group["lr_scale"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["use_muon"]:
                    muon_update(p, self.state[p], group, lr, self.coefficients, self.ns_dtype)
                else:
                    adamw_update(p, self.state[p], group, lr)
        return loss


def build_muon_adamw(
    model: nn.Module,
    muon_lr: float = 0.02,
    adamw_lr: float = 1e-3,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.99),
    *,
    muon_weight_decay: float | None = None,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    eps: float = 1e-8,
    base_lr: float | None = None,
    use_muon: Callable[[str, nn.Parameter], bool] | None = None,
    adamw_pattern: str = ADAMW_NAME_PATTERN,
) -> MuonAdamW:
    """Muon for the hidden matrices of ``model``, AdamW for the rest (split by :func:`split_parameters`).

    Groups, in this order: ``muon`` (rate muon_lr), ``adamw_decay`` (2-D non-Muon, decay
    ``weight_decay``) and ``adamw_no_decay`` (biases, gains), each with ``lr = base_lr`` (default
    ``adamw_lr``) and ``lr_scale = its rate / base_lr``: an external schedule that peaks at base_lr
    drives both. Muon's decay defaults to ``weight_decay · adamw_lr / muon_lr``: decoupled decay
    shrinks W by lr·λ per step, so this shrinks every matrix by the same factor whichever rule
    updates it (the same λ at a 20× larger lr would decay the hidden matrices 20× faster).
    """
    for label, value in (("muon_lr", muon_lr), ("adamw_lr", adamw_lr)):
        if not value > 0:
            raise ValueError(f"{label} must be > 0; got {value!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0; got {weight_decay!r}")
    base = adamw_lr if base_lr is None else base_lr
    if not base > 0:
        raise ValueError(f"base_lr must be > 0; got {base_lr!r}")
    split = split_parameters(model, use_muon, adamw_pattern=adamw_pattern)
    if not split["muon"]:
        raise ValueError("no parameter was selected for Muon (no hidden 2-D matrices); use AdamW alone")
    if muon_weight_decay is None:
        muon_weight_decay = weight_decay * adamw_lr / muon_lr
    groups = [
        {"params": [p for _, p in split["muon"]], "name": "muon", "use_muon": True,
         "weight_decay": muon_weight_decay, "lr_scale": muon_lr / base},
        {"params": [p for _, p in split["adamw_decay"]], "name": "adamw_decay", "weight_decay": weight_decay,
         "lr_scale": adamw_lr / base},
        {"params": [p for _, p in split["adamw_no_decay"]], "name": "adamw_no_decay", "weight_decay": 0.0,
         "lr_scale": adamw_lr / base},
    ]
    return MuonAdamW(groups, lr=base, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, betas=betas,
                     eps=eps)
