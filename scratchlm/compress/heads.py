"""Structured pruning of attention heads and FFN neurons inside transformer blocks (Chapter 12).

Head h of a :class:`~scratchlm.layers.MultiHeadAttention` owns rows h·d … (h+1)·d − 1 of W_q, W_k and
W_v (d = d_head; with a fused ``qkv_proj`` the same rows inside each of its three (I, C) parts) and
the same *columns* of Wᴼ, because

    MultiHead(X) = Σ_h head_h · Wᴼ[:, h·d:(h+1)·d]ᵀ + bᴼ .

Removing a head deletes those rows and columns: the layer physically shrinks, ``n_heads`` drops,
d_head stays. A head whose Wᴼ columns are zero adds nothing to the sum, so removing it leaves the
output unchanged exactly. Each removed head saves 3·d·(C + 1) + C·d parameters (3·d·C + C·d without
biases).

Which heads? Michel et al. (2019) put a gate ξ_h = 1 on every head's output and score the head by
|∂L/∂ξ_h| (summed over batches): the first-order change of the loss when the head is switched off.
Because ξ_h multiplies head_h, ∂L/∂ξ_h = Σ_tokens ⟨head_h, ∂L/∂head_h⟩, which is what
:func:`head_importance_taylor` computes from the input of Wᴼ — no gate has to be built into the
model. :func:`head_importance_l2` is the data-free score ‖Wᴼ[:, h·d:(h+1)·d]‖_F.

FFN neurons: :func:`prune_ffn` applies :func:`~scratchlm.compress.prune_linear_pair` to a block's
``ffn.linear1`` / ``ffn.linear2`` (and the gate of a SwiGLU FFN). Introduced in Chapter 12.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..layers.feedforward import FeedForward
from ..layers.multihead import MultiHeadAttention
from .prune import _check_sparsity, _n_prune, prune_linear_pair


def attention_layers(model: nn.Module) -> dict[str, MultiHeadAttention]:
    """Every self-attention module of ``model`` by name, in model order (``...self_attn``).

    Cross-attention (``cross_attn``) is left out: its heads are scored and removed the same way, but
    a decoder's self- and cross-attention are separate modules with separate heads. T5's relative
    position bias has one column per head that :func:`prune_heads` does not slice, so T5 models are
    refused. Introduced in Chapter 12.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"attention_layers expects an nn.Module; got {type(model).__name__}")
    if any(type(m).__name__ == "RelativePositionBias" for m in model.modules()):
        raise ValueError("head pruning does not support T5's relative position bias (one column per head); "
                         "prune BERT-, GPT- or Chapter 05-style models")
    return {name: m for name, m in model.named_modules()
            if isinstance(m, MultiHeadAttention) and name.split(".")[-1] == "self_attn"}


def ffn_layers(model: nn.Module) -> dict[str, FeedForward]:
    """Every transformer FFN (:class:`~scratchlm.layers.FeedForward`) of ``model`` by name, in order.

    Introduced in Chapter 12."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"ffn_layers expects an nn.Module; got {type(model).__name__}")
    return {name: m for name, m in model.named_modules() if isinstance(m, FeedForward)}


def _plain_linear(module: nn.Module, what: str) -> nn.Linear:
    if not isinstance(module, nn.Linear):
        raise TypeError(f"{what} must be a plain nn.Linear to be pruned; got {type(module).__name__} "
                        "(prune before quantizing or wrapping with LoRA)")
    if parametrize.is_parametrized(module):
        raise TypeError(f"{what} carries a parametrization (a pruning mask?): call make_permanent(model) "
                        "before removing heads or neurons")
    return module


def _check_attention(attn: object) -> MultiHeadAttention:
    if not isinstance(attn, MultiHeadAttention):
        raise TypeError(f"expected a scratchlm MultiHeadAttention; got {type(attn).__name__}")
    return attn


def head_importance_l2(attn: MultiHeadAttention) -> Tensor:
    """Data-free score of each head: ‖Wᴼ[:, h·d:(h+1)·d]‖_F, shape (H,).

    The Frobenius norm of the output-projection columns that read head h: 0 exactly when nothing of
    the head reaches the residual stream. It ignores how large the head's outputs are on real data
    (a head with small Wᴼ columns but large values can still matter). Introduced in Chapter 12.
    """
    attn = _check_attention(attn)
    w = _plain_linear(attn.out_proj, "out_proj").weight.detach().float()  # (C, I)
    return w.reshape(w.shape[0], attn.n_heads, attn.head_dim).pow(2).sum(dim=(0, 2)).sqrt()  # (H,)


def head_importance_taylor(attns: Sequence[MultiHeadAttention], loss_fn: Callable[[], Tensor]) -> list[Tensor]:
    """Michel et al. (2019) head importance on one batch: I_h = |∂L/∂ξ_h|, one (H,) tensor per layer.

    With a gate ξ_h = 1 on head h's output o_h (the input of Wᴼ, (B, T, H, d)),
    ∂L/∂ξ_h = Σ_{b,t} ⟨o_{b,t,h}, ∂L/∂o_{b,t,h}⟩: the first-order Taylor estimate of how much the
    loss changes when the head is removed. ``loss_fn()`` runs the model on a batch and returns the
    scalar loss; call this once per batch and add the results (Michel et al. average |∂L/∂ξ_h| over
    the data). Gradients come from ``torch.autograd.grad`` (no ``.grad`` is written), so the
    parameters must require grad. Introduced in Chapter 12.
    """
    attns = [_check_attention(a) for a in attns]
    if not attns:
        raise ValueError("head_importance_taylor needs at least one attention layer")
    captured = _inputs_with_grads([a.out_proj for a in attns], loss_fn,
                                  "attention layer(s)", "attention outputs")
    scores = []
    for attn, pairs in zip(attns, captured, strict=True):
        total = torch.zeros(attn.n_heads)  # (H,)
        for o, g in pairs:  # (B, T, I) each
            per_head = (o.detach() * g).float().reshape(-1, attn.n_heads, attn.head_dim)  # (B·T, H, d)
            total = total + per_head.sum(dim=(0, 2)).cpu()  # (H,)
        scores.append(total.abs())  # (H,)
    return scores


def ffn_importance_taylor(ffns: Sequence[FeedForward], loss_fn: Callable[[], Tensor]) -> list[Tensor]:
    """First-order Taylor score of every hidden neuron of several FFNs from one backward pass.

    For the hidden activation a_j (the input of W2), |Σ_tokens a_j ∂L/∂a_j| (Molchanov et al.,
    2017): the same score as :func:`~scratchlm.compress.neuron_importance_taylor`, for all blocks at
    once. Returns one (d_ff,) tensor per FFN. Introduced in Chapter 12.
    """
    if not ffns or any(not isinstance(f, FeedForward) for f in ffns):
        raise TypeError("ffns must be a non-empty sequence of scratchlm FeedForward modules")
    scores = []
    for pairs in _inputs_with_grads([f.linear2 for f in ffns], loss_fn, "FFN(s)", "FFN activations"):
        total = sum((a.detach() * g).float().reshape(-1, a.shape[-1]).sum(dim=0).cpu()
                    for a, g in pairs)  # (d_ff,)
        scores.append(total.abs())  # (H,)
    return scores



def _inputs_with_grads(modules: Sequence[nn.Module], loss_fn: Callable[[], Tensor], callee: str,
                       inputs: str) -> list[list[tuple[Tensor, Tensor]]]:
    """Run ``loss_fn()`` once; per module, every input it received paired with ∂L/∂input (one backward).

    Shared by the head and FFN Taylor scores: a forward pre-hook records each call's input, then one
    ``torch.autograd.grad`` gives all the gradients without writing ``.grad``.
    """
    seen: list[list[Tensor]] = [[] for _ in modules]
    handles = [m.register_forward_pre_hook(lambda _m, args, i=i: seen[i].append(args[0]))
               for i, m in enumerate(modules)]
    try:
        loss = loss_fn()
    finally:
        for h in handles:
            h.remove()
    if not isinstance(loss, Tensor) or loss.dim() != 0 or not loss.requires_grad:
        raise ValueError("loss_fn() must return a scalar tensor that requires grad")
    missing = [i for i, xs in enumerate(seen) if not xs]
    if missing:
        raise ValueError(f"loss_fn() never called the {callee} {missing}: nothing to score")
    flat = [x for xs in seen for x in xs]
    if not all(x.requires_grad for x in flat):
        raise ValueError(f"the {inputs} do not require grad (are the parameters frozen?)")
    grads = iter(torch.autograd.grad(loss, flat))
    return [[(x, next(grads)) for x in xs] for xs in seen]

def select_heads(scores: Sequence[Tensor], fraction: float, *, scope: str = "global",
                 normalize: bool = True, min_heads: int = 1) -> list[list[int]]:
    """Which heads to remove: the round(fraction · N) lowest-scoring of all N heads.

    ``scope="global"`` ranks all heads of all layers together (Michel et al.), so layers lose
    different numbers of heads; ``"layer"`` removes round(fraction · H_l) from each layer.
    ``normalize`` divides each layer's scores by their L2 norm first (Michel et al. found that this
    makes scores comparable across layers). Every layer keeps at least ``min_heads`` heads.
    Returns one sorted list of head indices per layer. Introduced in Chapter 12.
    """
    _check_sparsity(fraction)
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer'; got {scope!r}")
    if not isinstance(min_heads, int) or isinstance(min_heads, bool) or min_heads < 1:
        raise ValueError(f"min_heads must be an int >= 1 (a layer cannot lose every head); got {min_heads!r}")
    if not scores or any(not isinstance(s, Tensor) or s.dim() != 1 or s.numel() == 0 for s in scores):
        raise ValueError("scores must be a non-empty sequence of 1-d tensors, one score per head")
    scores = [s.detach().float().cpu() for s in scores]
    if normalize:
        scores = [s / s.norm() if float(s.norm()) > 0 else s for s in scores]
    removed: list[list[int]] = [[] for _ in scores]
    if scope == "layer":
        for i, s in enumerate(scores):
            k = min(_n_prune(fraction, s.numel()), s.numel() - min_heads)
            removed[i] = sorted(torch.topk(s, k, largest=False).indices.tolist()) if k > 0 else []
        return removed
    total = sum(s.numel() for s in scores)
    k = _n_prune(fraction, total)
    order = sorted(((float(v), i, h) for i, s in enumerate(scores) for h, v in enumerate(s.tolist())))
    for _, i, h in order:  # lowest first; ties broken by (layer, head) so the choice is deterministic
        if k == 0:
            break
        if scores[i].numel() - len(removed[i]) > min_heads:
            removed[i].append(h)
            k -= 1
    return [sorted(r) for r in removed]


def _rows_of_heads(heads: Tensor, head_dim: int) -> Tensor:
    """Row indices h·d … (h+1)·d − 1 for every head h in ``heads`` (ascending)."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)  # (H'·d,)


def _sliced_linear(linear: nn.Linear, rows: Tensor | None = None, cols: Tensor | None = None) -> nn.Linear:
    """A new Linear with only the given output rows / input columns of ``linear`` (bias follows rows)."""
    w = linear.weight.detach()  # (N, K)
    if rows is not None:
        w = w[rows.to(w.device)]  # (N', K)
    if cols is not None:
        w = w[:, cols.to(w.device)]  # (N', K')
    new = nn.Linear(w.shape[1], w.shape[0], bias=linear.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)  # (N', K')
        if linear.bias is not None:
            b = linear.bias.detach()  # (N,)
            new.bias.copy_(b if rows is None else b[rows.to(b.device)])  # (N',)
    new.train(linear.training)
    new.weight.requires_grad_(linear.weight.requires_grad)
    if new.bias is not None:
        new.bias.requires_grad_(linear.bias.requires_grad)
    return new


def prune_heads(attn: MultiHeadAttention, heads: Iterable[int]) -> Tensor:
    """Remove ``heads`` (indices into the layer's current heads) from ``attn`` in place.

    Separate projections: rows of W_q, W_k, W_v (and their biases) and columns of Wᴼ; fused
    ``qkv_proj``: the same rows in each of its q, k and v parts. ``n_heads`` and ``inner_dim`` are
    updated; d_head, the scale 1/√d_head and ``d_model`` are not. Returns the indices of the heads
    kept (ascending). Optimizer state of the old parameters does not carry over: build the optimizer
    after pruning. Introduced in Chapter 12.
    """
    attn = _check_attention(attn)
    heads = list(heads)
    if any(not isinstance(h, int) or isinstance(h, bool) for h in heads):
        raise TypeError(f"heads must be ints; got {heads!r}")
    if any(not 0 <= h < attn.n_heads for h in heads):
        raise ValueError(f"head indices must lie in [0, {attn.n_heads}); got {sorted(heads)}")
    drop = set(heads)
    if len(drop) >= attn.n_heads:
        raise ValueError(f"cannot remove all {attn.n_heads} heads of a layer (asked to remove {sorted(drop)})")
    keep = torch.tensor([h for h in range(attn.n_heads) if h not in drop], dtype=torch.long)  # (H',)
    if not drop:
        return keep
    d = attn.head_dim
    rows = _rows_of_heads(keep, d)  # (H'·d,)
    if attn.fused_qkv:
        qkv = _plain_linear(attn.qkv_proj, "qkv_proj")
        inner = attn.inner_dim
        attn.qkv_proj = _sliced_linear(qkv, rows=torch.cat([rows, rows + inner, rows + 2 * inner]))  # (3H'd, C)
    else:
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(attn, name, _sliced_linear(_plain_linear(getattr(attn, name), name), rows=rows))  # (H'd, C)
    attn.out_proj = _sliced_linear(_plain_linear(attn.out_proj, "out_proj"), cols=rows)  # (C, H'd)
    attn.n_heads = int(keep.numel())
    attn.inner_dim = attn.n_heads * d
    return keep


def prune_model_heads(model: nn.Module, heads: Sequence[Iterable[int]] | Mapping[str, Iterable[int]]) -> dict[str, Tensor]:
    """Remove heads from every self-attention layer of ``model`` (see :func:`attention_layers`).

    ``heads``: one iterable of head indices per layer, in model order (what :func:`select_heads`
    returns), or a mapping {layer name: heads}. Returns {layer name: kept head indices}.
    Introduced in Chapter 12.
    """
    layers = attention_layers(model)
    if isinstance(heads, Mapping):
        unknown = set(heads) - set(layers)
        if unknown:
            raise ValueError(f"unknown attention layer name(s) {sorted(unknown)}; known: {list(layers)[:4]}...")
        plan = {name: list(h) for name, h in heads.items()}
    else:
        heads = list(heads)
        if len(heads) != len(layers):
            raise ValueError(f"heads must hold one list per attention layer ({len(layers)}); got {len(heads)}")
        plan = {name: list(h) for name, h in zip(layers, heads, strict=True)}
    return {name: prune_heads(layers[name], h) for name, h in plan.items()}


def prune_ffn(ffn: FeedForward, keep: Tensor) -> Tensor:
    """Keep only the hidden neurons ``keep`` (indices or a bool mask) of a block's FFN, in place.

    FFN(x) = act(x W1ᵀ + b1) W2ᵀ + b2: rows of W1 (and of the gate W_g for SwiGLU) and columns of W2
    go, via :func:`~scratchlm.compress.prune_linear_pair`. Returns the kept indices (ascending).
    Introduced in Chapter 12.
    """
    if not isinstance(ffn, FeedForward):
        raise TypeError(f"prune_ffn expects a scratchlm FeedForward; got {type(ffn).__name__}")
    linear1 = _plain_linear(ffn.linear1, "ffn.linear1")
    linear2 = _plain_linear(ffn.linear2, "ffn.linear2")
    pair = prune_linear_pair(linear1, linear2, keep)
    if ffn.gate is not None:
        ffn.gate = _sliced_linear(_plain_linear(ffn.gate, "ffn.gate"), rows=pair.kept)  # (H', C)
    for old, new in ((linear1, pair.linear_in), (linear2, pair.linear_out)):
        new.train(old.training)
        for p_old, p_new in zip(old.parameters(), new.parameters(), strict=True):
            p_new.requires_grad_(p_old.requires_grad)  # a frozen layer stays frozen
    ffn.linear1, ffn.linear2 = pair.linear_in, pair.linear_out
    return pair.kept


def count_heads(model: nn.Module) -> list[int]:
    """Heads per self-attention layer, in model order. Introduced in Chapter 12."""
    return [m.n_heads for m in attention_layers(model).values()]
