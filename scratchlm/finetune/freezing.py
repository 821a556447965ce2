"""Which parameters learn, and how fast: five fine-tuning strategies behind one function.

A pretrained encoder is a stack: embeddings at the bottom, layers 0..L−1, sometimes a top module
(BERT's pooler, GPT's final norm); a task head sits above it. Number each part by its *depth from
the top*: the head and the top modules have depth 0, layer i has depth L − i, the embeddings L + 1.

=================  =============================================================================
strategy           what trains
=================  =============================================================================
``linear_probe``   the head only; the whole encoder is frozen, its pooler too (features as they are)
``top_k``          the head, the top modules and the top ``k`` layers
``full``           everything, one learning rate
``gradual``        ULMFiT's gradual unfreezing (Howard & Ruder, 2018): the head first, then one
                   more block from the top every ``unfreeze_every`` steps (the top modules with
                   layer L−1, then L−2, …, the embeddings last)
``llrd``           everything, layer-wise learning-rate decay (Clark et al., 2020; Sun et al.,
                   2019): lr_d = lr · decay^d for depth d, so the embeddings, which hold the most
                   general knowledge, move least
=================  =============================================================================

:func:`configure_finetuning` sets ``requires_grad`` and returns a :class:`FinetunePlan` whose
``param_groups`` (one per depth, each with an ``lr_scale``) and ``on_step`` hook go to
:func:`scratchlm.training.train` (``train(..., **plan.train_kwargs())``). Frozen parameters need
no gradient, so a frozen lower stack also skips its backward pass: a linear probe costs a forward
pass, top-k a forward pass and k layers of backward. Works for :class:`~scratchlm.models.BertModel`
(``embeddings``, ``encoder.layers[i]``, ``pooler``) and :class:`~scratchlm.models.GPT`
(``transformer.wte``/``wpe``, ``transformer.h[i]``, ``ln_f``), bare or inside a head (``.encoder``).
Introduced in Chapter 09.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

STRATEGIES = ("linear_probe", "top_k", "full", "gradual", "llrd")


@dataclass
class EncoderBlocks:
    """An encoder cut into embeddings (bottom), layers (bottom → top) and top modules."""

    embeddings: list[nn.Module]
    layers: list[nn.Module]
    top: list[nn.Module]


def encoder_blocks(encoder: nn.Module) -> EncoderBlocks:
    """The blocks of a BertModel or GPT (see the module docstring); other models raise."""
    if hasattr(encoder, "embeddings") and hasattr(getattr(encoder, "encoder", None), "layers"):
        top = [encoder.pooler] if getattr(encoder, "pooler", None) is not None else []
        return EncoderBlocks([encoder.embeddings], list(encoder.encoder.layers), top)
    transformer = getattr(encoder, "transformer", None)
    if isinstance(transformer, nn.ModuleDict) and "h" in transformer:
        emb = [transformer[k] for k in ("wte", "wpe") if k in transformer]
        top = [transformer[k] for k in transformer if k not in ("wte", "wpe", "h", "drop")]
        if getattr(encoder, "lm_head", None) is not None:
            top.append(encoder.lm_head)  # tied to wte in the book's GPT: counted once, with the embeddings
        return EncoderBlocks(emb, list(transformer.h), top)
    raise TypeError(f"configure_finetuning knows BertModel (embeddings, encoder.layers, pooler) and GPT "
                    f"(transformer.wte/h/ln_f); got {type(encoder).__name__}")


def _find_encoder(model: nn.Module) -> tuple[nn.Module, bool]:
    """(encoder, is_head): the model's ``.encoder`` when it is a head, else the model itself."""
    inner = getattr(model, "encoder", None)
    if isinstance(inner, nn.Module) and (hasattr(inner, "embeddings") or hasattr(inner, "transformer")):
        return inner, True
    return model, False


@dataclass
class FinetunePlan:
    """The result of :func:`configure_finetuning`: parameter groups, an unfreezing hook, a summary.

    ``param_groups``: ``{"name", "depth", "params", "lr_scale"}`` dicts — "head", "top" (the
    encoder's pooler / final norm), "layer L−1" … "layer 0", "embeddings" — top first;
    :func:`scratchlm.training.train` builds AdamW from them (matrices decay, biases and gains
    don't, inside each group) and sets each group's lr to the schedule's lr × ``lr_scale``.
    ``on_step(step)`` (``gradual`` only) sets ``requires_grad`` from the step alone, so a resumed
    run lands in the same state. ``schedule``: ``(step, number of blocks unfrozen)`` pairs.
    """

    strategy: str
    param_groups: list[dict[str, Any]]
    schedule: list[tuple[int, int]] = field(default_factory=list)
    _blocks: list[tuple[str, list[nn.Parameter]]] = field(default_factory=list, repr=False)  # gradual order

    def on_step(self, step: int) -> None:
        """Gradual unfreezing: before step ``step`` (0-based) exactly the scheduled blocks train."""
        if self.strategy != "gradual":
            return
        unfrozen = 0
        for at, n in self.schedule:
            if step >= at:
                unfrozen = n
        for k, (_, params) in enumerate(self._blocks):
            for p in params:
                p.requires_grad_(k < unfrozen)

    def train_kwargs(self) -> dict[str, Any]:
        """``param_groups`` and (for ``gradual``) ``on_step`` for :func:`scratchlm.training.train`."""
        kwargs: dict[str, Any] = {"param_groups": self.param_groups}
        if self.strategy == "gradual":
            kwargs["on_step"] = self.on_step
        return kwargs

    def trainable_parameters(self) -> int:
        """Parameters that require grad now (tied tensors once)."""
        seen: set[int] = set()
        total = 0
        for g in self.param_groups:
            for p in g["params"]:
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
        return total

    def table(self) -> list[dict[str, Any]]:
        """One row per group: name, depth, lr_scale, parameters, trainable now."""
        return [{"group": g["name"], "depth": g["depth"], "lr_scale": g["lr_scale"],
                 "parameters": sum(p.numel() for p in g["params"]),
                 "trainable": all(p.requires_grad for p in g["params"])} for g in self.param_groups]


def _params(modules: list[nn.Module], seen: set[int]) -> list[nn.Parameter]:
    out = []
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def configure_finetuning(model: nn.Module, strategy: str = "full", *, k: int = 2, lr_decay: float = 0.8,
                         unfreeze_every: int = 10) -> FinetunePlan:
    """Freeze / group ``model``'s parameters for ``strategy`` (see the module docstring); return the plan.

    ``model`` is a head with an ``.encoder`` (its other parameters are the head, depth 0) or a bare
    encoder. ``k``: layers trained by ``top_k``. ``lr_decay``: the factor per depth of ``llrd``
    (lr_d = lr · lr_decay^d). ``unfreeze_every``: steps between two unfreezings in ``gradual``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}; got {strategy!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
    encoder, is_head = _find_encoder(model)
    blocks = encoder_blocks(encoder)
    L = len(blocks.layers)
    if strategy == "top_k" and (not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= L):
        raise ValueError(f"k must be an int in [0, {L}] (the encoder has {L} layers); got {k!r}")
    if strategy == "llrd" and (not isinstance(lr_decay, (int, float)) or isinstance(lr_decay, bool)
                               or not 0.0 < lr_decay <= 1.0):
        raise ValueError(f"lr_decay must be a number in (0, 1]; got {lr_decay!r}")
    if strategy == "gradual" and (not isinstance(unfreeze_every, int) or isinstance(unfreeze_every, bool)
                                  or unfreeze_every < 1):
        raise ValueError(f"unfreeze_every must be a positive int; got {unfreeze_every!r}")

    seen: set[int] = set()
    embed = _params(blocks.embeddings, seen)  # first: a tied lm_head lands here, with wte
    layers = [_params([layer], seen) for layer in blocks.layers]
    top = _params(blocks.top, seen)
    encoder_ids = {id(p) for p in encoder.parameters()}
    head = [p for p in model.parameters() if id(p) not in encoder_ids] if is_head else []
    # (name, depth, params), top first; the head and the top modules (pooler, final norm) share depth 0
    named: list[tuple[str, int, list[nn.Parameter]]] = [("head", 0, head), ("top", 0, top)]
    named += [(f"layer {i}", L - i, layers[i]) for i in reversed(range(L))]
    named.append(("embeddings", L + 1, embed))
    named = [(n, d, ps) for n, d, ps in named if ps]
    if not named:
        raise ValueError("the model has no parameters to fine-tune")

    def trains(name: str, depth: int) -> bool:
        if strategy in ("full", "llrd"):
            return True
        if strategy == "top_k":
            return name in ("head", "top") or depth <= k
        return name == "head"  # linear_probe, and gradual at step 0

    for name, depth, ps in named:
        for p in ps:
            p.requires_grad_(trains(name, depth))
    if not any(trains(n, d) for n, d, _ in named):
        raise ValueError(f"strategy {strategy!r} leaves nothing to train: a bare encoder has no head "
                         f"(wrap it in a head, or use 'full')")
    groups = [{"name": n, "depth": d, "params": ps,
               "lr_scale": float(lr_decay) ** d if strategy == "llrd" else 1.0}
              for n, d, ps in named if strategy == "gradual" or trains(n, d)]
    plan = FinetunePlan(strategy, groups)
    if strategy == "gradual":
        # unfreezing order: the head; then the top modules with the last layer; then layer by layer down
        order = [(n, ps) for n, _, ps in named]
        blocks_in_order: list[tuple[str, list[nn.Parameter]]] = []
        while order:
            n, ps = order.pop(0)
            if n == "top" and order:
                n2, ps2 = order.pop(0)
                n, ps = f"top + {n2}", ps + ps2
            blocks_in_order.append((n, ps))
        plan._blocks = blocks_in_order
        plan.schedule = [(i * unfreeze_every, i + 1) for i in range(len(blocks_in_order))]
        plan.on_step(0)
    return plan

