"""LoRA: low-rank adaptation of a frozen linear layer (Hu et al., 2021). Introduced in Chapter 10.

    h = W x + b + (α / r) · B A dropout(x),      A ∈ R^{r × d_in},  B ∈ R^{d_out × r},  r ≪ min(d_in, d_out)

W and b stay frozen; only A and B train: r (d_in + d_out) numbers instead of d_in · d_out. Two
initialisation choices carry the method:

* **B = 0**, so B A = 0 and the adapted model *is* the pretrained model at step 0 (training starts
  from the base model's loss, not from a random perturbation of it). A is Kaiming-uniform, as in
  ``nn.Linear`` and Hugging Face ``peft``; A must not be zero too, or no gradient reaches B's
  partner (∂L/∂A = Bᵀ(...) = 0 and ∂L/∂B = (...)(A x)ᵀ = 0).
* **α / r scaling**: with α fixed, changing r does not change the size of the initial updates much,
  so the learning rate need not be retuned per rank.

Because the update is a matrix of the same shape as W, it can be **merged** after training,
W' = W + (α/r) B A, and the layer costs exactly what the base layer costs; :meth:`LoRALinear.unmerge`
subtracts it again.

Fused projections. GPT keeps q, k and v in one (3C, C) ``qkv_proj``. Hugging Face ``peft`` adapts
such a layer as one matrix (one A, one B of 3C rows). :class:`LoRALinear` can also split the
output rows into parts (``parts=3``) and give each part its own A and B, and adapt only some of
them (``enabled=(True, False, True)``: q and v, the LoRA paper's choice), which is what the paper
does to separate W_q, W_k, W_v.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int; got {value!r}")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (α/r)·B A per output part. Chapter 10.

    Args:
        base: the linear layer to adapt (kept as ``self.base`` and *called*, so a quantized or
            otherwise wrapped layer works too as long as it has ``in_features``/``out_features``).
        r: the rank of the update (> 0).
        alpha: the scale numerator; the update is multiplied by α / r.
        dropout: dropout on the input of the LoRA path only (the base path sees the clean x).
        parts: split the output rows into this many equal parts (3 for a fused q/k/v layer).
        enabled: which parts get an update (default: all).

    Parameters: ``lora_A[i]`` (r, d_in) and ``lora_B[i]`` (d_out / parts, r) for each enabled part i,
    both ``nn.Linear`` without bias (the layout of ``peft``'s ``lora_A`` / ``lora_B``).
    """

    def __init__(self, base: nn.Module, r: int, alpha: float = 1.0, dropout: float = 0.0, *, parts: int = 1,
                 enabled: tuple[bool, ...] | None = None) -> None:
        super().__init__()
        if not hasattr(base, "in_features") or not hasattr(base, "out_features"):
            raise TypeError(f"LoRALinear wraps a linear layer (with in_features/out_features); got {type(base).__name__}")
        if isinstance(base, LoRALinear):
            raise ValueError("LoRALinear: this layer already has LoRA (apply LoRA once, or unwrap it first)")
        _check_positive_int("LoRA rank r", r)
        _check_positive_int("parts", parts)
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
            raise ValueError(f"LoRA alpha must be a number > 0; got {alpha!r}")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1); got {dropout!r}")
        d_in, d_out = base.in_features, base.out_features
        if d_out % parts:
            raise ValueError(f"LoRALinear: out_features={d_out} is not divisible into parts={parts}")
        enabled = (True,) * parts if enabled is None else tuple(bool(e) for e in enabled)
        if len(enabled) != parts or not any(enabled):
            raise ValueError(f"LoRALinear: enabled must give one flag per part ({parts}) with at least one True; "
                             f"got {enabled}")
        self.base = base
        self.r, self.alpha, self.scaling = r, float(alpha), float(alpha) / r
        self.in_features, self.out_features = d_in, d_out
        self.parts, self.enabled = parts, enabled
        self.part_size = d_out // parts
        n = sum(enabled)
        self.lora_A = nn.ModuleList([nn.Linear(d_in, r, bias=False) for _ in range(n)])  # each (r, d_in)
        self.lora_B = nn.ModuleList([nn.Linear(r, self.part_size, bias=False) for _ in range(n)])  # (d_part, r)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_lora_parameters()
        ref = getattr(base, "weight", None)
        if isinstance(ref, Tensor):  # live where the base layer lives (and in its dtype if it is a float one)
            dtype = ref.dtype if ref.is_floating_point() else None
            self.lora_A.to(device=ref.device, dtype=dtype)
            self.lora_B.to(device=ref.device, dtype=dtype)

    @torch.no_grad()
    def reset_lora_parameters(self) -> None:
        """A ~ Kaiming-uniform (as nn.Linear and peft), B = 0: the update B A starts at exactly 0."""
        for a, b in zip(self.lora_A, self.lora_B, strict=True):
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            nn.init.zeros_(b.weight)

    def lora_parameters(self) -> list[nn.Parameter]:
        return [m.weight for m in (*self.lora_A, *self.lora_B)]

    @property
    def weight(self) -> Tensor:
        """The base weight (read-only view for code that inspects shapes/dtypes)."""
        return self.base.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base.bias

    def delta_weight(self) -> Tensor:
        """(α/r) B A for every part, stacked to the base weight's shape (d_out, d_in); zeros where disabled."""
        blocks, j = [], 0
        for on in self.enabled:
            if on:
                blocks.append(self.lora_B[j].weight @ self.lora_A[j].weight)  # (d_part, d_in)
                j += 1
            else:
                blocks.append(self.lora_A[0].weight.new_zeros(self.part_size, self.in_features))  # (d_part, d_in)
        return torch.cat(blocks, dim=0) * self.scaling  # (d_out, d_in)

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)  # (..., d_out): the frozen path
        if self.merged:
            return y
        h = self.lora_dropout(x)  # (..., d_in)
        deltas, j = [], 0
        for on in self.enabled:
            if on:
                deltas.append(self.lora_B[j](self.lora_A[j](h)))  # (..., d_part): B (A x)
                j += 1
            else:
                deltas.append(y.new_zeros(*y.shape[:-1], self.part_size))  # (..., d_part)
        delta = deltas[0] if len(deltas) == 1 else torch.cat(deltas, dim=-1)  # (..., d_out)
        return y + self.scaling * delta  # (..., d_out)

    @torch.no_grad()
    def merge(self) -> None:
        """W ← W + (α/r) B A: the layer then costs what the base layer costs (no extra matmuls)."""
        if self.merged:
            raise ValueError("LoRALinear.merge: already merged")
        self.base.weight += self.delta_weight().to(self.base.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W ← W − (α/r) B A: back to the frozen base weight (to keep training, or swap adapters)."""
        if not self.merged:
            raise ValueError("LoRALinear.unmerge: not merged")
        self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        parts = "" if self.parts == 1 else f", parts={self.parts}, enabled={self.enabled}"
        return f"r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g}{parts}{', merged' if self.merged else ''}"

    @staticmethod
    def num_lora_params(d_in: int, d_out: int, r: int, parts: int = 1, n_enabled: int | None = None) -> int:
        """Closed form: r·(d_in + d_out/parts) per enabled part."""
        n_enabled = parts if n_enabled is None else n_enabled
        return n_enabled * r * (d_in + d_out // parts)
