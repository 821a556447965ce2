"""Pruning: zero the least important weights (unstructured) or remove whole FFN neurons (structured).

Unstructured magnitude pruning keeps a 0/1 mask M per weight and uses W ⊙ M in the forward pass
(a ``torch.nn.utils.parametrize`` parametrization, so the Linear is still called as a module and
gradients reach only the kept weights); :func:`make_permanent` bakes W ⊙ M in. Zeros alone do not
make a dense matmul faster or a dense tensor smaller; structured pruning does: removing hidden
neuron j of an FFN removes row j of the first Linear and column j of the second, and the layers
really shrink. Introduced in Chapter 12.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize


def _check_sparsity(sparsity: float) -> None:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be a float in [0, 1] (fraction of weights to prune); got {sparsity!r}")


def _n_prune(sparsity: float, n: int) -> int:
    """round(sparsity · n): the count ``torch.nn.utils.prune`` uses for a float amount."""
    return round(sparsity * n)


def magnitude_mask(weight: Tensor, sparsity: float) -> Tensor:
    """0/1 mask (weight's dtype) that zeros the round(sparsity · n) entries of smallest |w|.

    The k smallest are chosen with ``torch.topk(largest=False)``, so exactly k entries are pruned
    even when magnitudes tie. Introduced in Chapter 12.
    """
    return global_magnitude_masks([weight], sparsity)[0]


def global_magnitude_masks(weights: Sequence[Tensor], sparsity: float) -> list[Tensor]:
    """Masks that prune the round(sparsity · N) smallest |w| among *all* N weights together.

    Global pruning lets layers end up with different sparsities: layers with many small weights lose
    more. Introduced in Chapter 12.
    """
    _check_sparsity(sparsity)
    if not weights or any(not isinstance(w, Tensor) or not w.is_floating_point() for w in weights):
        raise TypeError("weights must be a non-empty sequence of floating-point tensors")
    flat = torch.cat([w.detach().abs().reshape(-1) for w in weights])  # (N,)
    k = _n_prune(sparsity, flat.numel())
    keep = torch.ones_like(flat)  # (N,)
    if k:
        keep[torch.topk(flat, k, largest=False).indices] = 0  # (N,)
    masks, start = [], 0
    for w in weights:
        masks.append(keep[start: start + w.numel()].reshape(w.shape).to(w.dtype))  # (*w.shape)
        start += w.numel()
    return masks


class _Mask(nn.Module):
    """Parametrization W ↦ W ⊙ M (M a buffer, so it moves with the model and is saved)."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: Tensor) -> Tensor:
        return w * self.mask  # (*w.shape)


def apply_mask(linear: nn.Linear, mask: Tensor) -> None:
    """Make ``linear`` use W ⊙ mask from now on (replaces an earlier mask). Introduced in Chapter 12."""
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"apply_mask expects an nn.Linear; got {type(linear).__name__}")
    if tuple(mask.shape) != tuple(linear.weight.shape):
        raise ValueError(f"mask must have the weight's shape {tuple(linear.weight.shape)}; got {tuple(mask.shape)}")
    mask = mask.detach().to(linear.weight.dtype).to(linear.weight.device)  # (N, K)
    if parametrize.is_parametrized(linear, "weight"):
        linear.parametrizations.weight[0].mask = mask
    else:
        parametrize.register_parametrization(linear, "weight", _Mask(mask))


def magnitude_prune(model: nn.Module, sparsity: float, *, scope: str = "layer",
                    filter_fn: Callable[[str, nn.Linear], bool] | None = None) -> dict[str, Tensor]:
    """Mask the smallest-|w| weights of every ``nn.Linear`` (that ``filter_fn`` accepts).

    ``scope="layer"``: each weight matrix loses round(sparsity · n) entries; ``"global"``: the
    round(sparsity · N) smallest over all the selected matrices together (biases are not pruned).
    Magnitudes are those of the current (already masked) weights, so calling again with a larger
    sparsity prunes further. Returns {name: mask}. Same masks as ``torch.nn.utils.prune``'s
    ``l1_unstructured`` / ``global_unstructured`` with ``L1Unstructured``. Introduced in Chapter 12.
    """
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global'; got {scope!r}")
    _check_sparsity(sparsity)
    linears = {n: m for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and (filter_fn is None or filter_fn(n, m))}
    if not linears:
        raise ValueError("magnitude_prune found no nn.Linear to prune (check filter_fn)")
    weights = [m.weight for m in linears.values()]
    if scope == "global":
        masks = global_magnitude_masks(weights, sparsity)
    else:
        masks = [magnitude_mask(w, sparsity) for w in weights]
    for m, mask in zip(linears.values(), masks, strict=True):
        apply_mask(m, mask)
    return dict(zip(linears, masks, strict=True))


def make_permanent(model: nn.Module) -> int:
    """Replace every masked weight by W ⊙ M as a plain parameter (drop the parametrization and the
    mask). Returns how many layers were made permanent. Introduced in Chapter 12."""
    count = 0
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight") and isinstance(
                module.parametrizations.weight[0], _Mask):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            count += 1
    return count


@dataclass
class SparsityReport:
    """Zeros per Linear weight and overall. Introduced in Chapter 12."""

    rows: list[dict] = field(default_factory=list)  # name, numel, zeros, sparsity

    @property
    def total_sparsity(self) -> float:
        n = sum(r["numel"] for r in self.rows)
        return sum(r["zeros"] for r in self.rows) / n if n else 0.0

    def __str__(self) -> str:
        lines = [f"{'layer':<40} {'weights':>10} {'zeros':>10} {'sparsity':>9}"]
        lines += [f"{r['name']:<40} {r['numel']:>10,} {r['zeros']:>10,} {r['sparsity']:>9.1%}" for r in self.rows]
        lines.append(f"{'total':<40} {sum(r['numel'] for r in self.rows):>10,} "
                     f"{sum(r['zeros'] for r in self.rows):>10,} {self.total_sparsity:>9.1%}")
        return "\n".join(lines)


def sparsity_report(model: nn.Module) -> SparsityReport:
    """Count exact zeros in the (masked) weight of every ``nn.Linear``. Introduced in Chapter 12."""
    report = SparsityReport()
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.Linear):
                w = m.weight  # (N, K), W ⊙ M if masked
                zeros = int((w == 0).sum())
                report.rows.append({"name": name, "numel": w.numel(), "zeros": zeros, "sparsity": zeros / w.numel()})
    return report


# ----------------------------------------------------------------------------- structured: FFN neurons


class PrunedPair(NamedTuple):
    """The result of :func:`prune_linear_pair`. Introduced in Chapter 12."""

    linear_in: nn.Linear
    linear_out: nn.Linear
    kept: Tensor  # (d_kept,) indices of the hidden neurons that remain, ascending


def _check_pair(linear_in: nn.Linear, linear_out: nn.Linear) -> None:
    if not isinstance(linear_in, nn.Linear) or not isinstance(linear_out, nn.Linear):
        raise TypeError(f"expected two nn.Linear; got {type(linear_in).__name__}, {type(linear_out).__name__}")
    if linear_in.out_features != linear_out.in_features:
        raise ValueError(f"linear_in.out_features ({linear_in.out_features}) must equal "
                         f"linear_out.in_features ({linear_out.in_features})")


def neuron_importance_l2(linear_in: nn.Linear, linear_out: nn.Linear) -> Tensor:
    """Score of hidden neuron j: ‖[W_in[j, :], b_in[j]]‖₂ · ‖W_out[:, j]‖₂, shape (d_hidden,).

    The product is 0 when nothing leaves the neuron (its output cannot matter) and small when either
    side is small. Introduced in Chapter 12.
    """
    _check_pair(linear_in, linear_out)
    with torch.no_grad():
        incoming = linear_in.weight.float().pow(2).sum(dim=1)  # (H,)
        if linear_in.bias is not None:
            incoming = incoming + linear_in.bias.float().pow(2)  # (H,)
        outgoing = linear_out.weight.float().norm(dim=0)  # (H,)
        return incoming.sqrt() * outgoing  # (H,)


def neuron_importance_taylor(linear_out: nn.Linear, loss_fn: Callable[[], Tensor]) -> Tensor:
    """First-order Taylor score of each input neuron of ``linear_out`` (Molchanov et al., 2017).

    Setting neuron j to zero at every token changes the loss by ΔL_j ≈ −Σ_t a_tj · ∂L/∂a_tj (first-order
    Taylor expansion), where a_tj is the neuron's activation (the input of ``linear_out``) at token t.
    The score is |Σ_t a_tj ∂L/∂a_tj|, shape (d_hidden,). ``loss_fn()`` runs the model on a batch and
    returns the scalar loss; gradients come from ``torch.autograd.grad``, so no ``.grad`` is touched.
    Introduced in Chapter 12.
    """
    if not isinstance(linear_out, nn.Linear):
        raise TypeError(f"expected an nn.Linear; got {type(linear_out).__name__}")
    acts: list[Tensor] = []
    handle = linear_out.register_forward_pre_hook(lambda _m, args: acts.append(args[0]))
    try:
        loss = loss_fn()
    finally:
        handle.remove()
    if not acts:
        raise ValueError("loss_fn() never called linear_out: nothing to score")
    if not isinstance(loss, Tensor) or loss.dim() != 0 or not loss.requires_grad:
        raise ValueError("loss_fn() must return a scalar tensor that requires grad")
    if not all(a.requires_grad for a in acts):
        raise ValueError("the input of linear_out does not require grad (are the parameters frozen?)")
    grads = torch.autograd.grad(loss, acts)
    score = sum((a.detach() * g).reshape(-1, a.shape[-1]).sum(dim=0) for a, g in zip(acts, grads, strict=True))  # (H,)
    return score.abs()  # (H,)


def select_neurons(scores: Tensor, sparsity: float) -> Tensor:
    """Indices (ascending) of the neurons to keep: drop the round(sparsity · H) lowest scores.

    Introduced in Chapter 12.
    """
    _check_sparsity(sparsity)
    if not isinstance(scores, Tensor) or scores.dim() != 1:
        raise ValueError(f"scores must be a 1-d tensor (one per neuron); got {getattr(scores, 'shape', scores)!r}")
    n_keep = scores.numel() - _n_prune(sparsity, scores.numel())
    if n_keep < 1:
        raise ValueError(f"sparsity {sparsity} would remove all {scores.numel()} neurons")
    return torch.topk(scores, n_keep, largest=True, sorted=False).indices.sort().values  # (n_keep,)


def prune_linear_pair(linear_in: nn.Linear, linear_out: nn.Linear, keep: Tensor) -> PrunedPair:
    """New, smaller Linears that keep only the hidden neurons ``keep`` (indices or a bool mask).

    linear_in: W_in (H, d_in), b_in (H,) → rows ``keep``; linear_out: W_out (d_out, H) → columns
    ``keep``, b_out unchanged. Removes (H − H')·(d_in + 1 + d_out) parameters (d_in + d_out without
    b_in). Outputs are unchanged when the removed neurons send nothing out (zero columns of W_out).
    Introduced in Chapter 12.
    """
    _check_pair(linear_in, linear_out)
    hidden = linear_in.out_features
    if not isinstance(keep, Tensor):
        raise TypeError(f"keep must be a tensor of indices or a bool mask; got {type(keep).__name__}")
    if keep.dtype == torch.bool:
        if tuple(keep.shape) != (hidden,):
            raise ValueError(f"a bool keep mask must have shape ({hidden},); got {tuple(keep.shape)}")
        keep = keep.nonzero().flatten()  # (H',)
    keep = keep.to(torch.long).unique()  # (H',) sorted, no repeats
    if keep.numel() == 0 or int(keep.min()) < 0 or int(keep.max()) >= hidden:
        raise ValueError(f"keep must hold between 1 and {hidden} indices in [0, {hidden}); got {keep.tolist()[:8]}...")
    w = linear_in.weight
    new_in = nn.Linear(linear_in.in_features, keep.numel(), bias=linear_in.bias is not None,
                       device=w.device, dtype=w.dtype)
    new_out = nn.Linear(keep.numel(), linear_out.out_features, bias=linear_out.bias is not None,
                        device=linear_out.weight.device, dtype=linear_out.weight.dtype)
    with torch.no_grad():
        new_in.weight.copy_(linear_in.weight[keep])  # (H', d_in)
        if linear_in.bias is not None:
            new_in.bias.copy_(linear_in.bias[keep])  # (H',)
        new_out.weight.copy_(linear_out.weight[:, keep])  # (d_out, H')
        if linear_out.bias is not None:
            new_out.bias.copy_(linear_out.bias)  # (d_out,)
    return PrunedPair(new_in, new_out, keep)
