"""A small decoder-only character LM built from Chapter 05's parts, and its training run.

Introduced in Chapter 05 (post-LN versus pre-LN at a high learning rate); Chapter 06 trains the same
model again with a learning-rate warm-up.

    ids (B, T) ─ embed·√C + sinusoidal PE ─ causal Encoder (N × EncoderLayer) ─ Linear ─ logits (B, T, V)

The stack is :class:`~scratchlm.layers.Encoder` with ``is_causal=True`` — an encoder layer whose
attention may only look back is exactly a GPT block without cross-attention. ``norm_first`` picks
the arrangement: post-LN ``x ← LN(x + F(x))`` (Vaswani et al., 2017) or pre-LN ``x ← x + F(LN(x))``
(Xiong et al., 2020; with a final LayerNorm).

:func:`train_char_lm` trains it with :func:`scratchlm.training.train` — Adam without weight decay
(AdamW with decay 0), a constant learning rate after an optional linear warm-up, no clipping — and
records the gradient norm of every layer at every step (:class:`LayerGradNorms`), the measurement
Xiong et al. base their argument on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..data.lm import make_lm_get_batch
from ..layers import Encoder
from ..layers.positional import SinusoidalPositionalEncoding
from ..runtime.profiles import capped
from .base import shift_for_causal_lm, token_cross_entropy
from .outputs import ModelOutput
from .transformer import init_transformer_weights

if TYPE_CHECKING:  # the training package imports scratchlm.models: import it lazily at run time
    from ..training import TrainHistory

__all__ = ["CharLM", "CharLMRun", "LayerGradNorms", "train_char_lm"]


class CharLM(nn.Module):
    """Decoder-only character LM: embed·√C + sinusoidal PE → causal :class:`Encoder` → Linear.

    Follows the model contract: ``forward(input_ids, labels=None)`` returns a :class:`ModelOutput`
    whose ``loss`` (when unshifted ``labels`` are given) is the next-token cross-entropy, the labels
    shifted inside. Weights: :func:`init_transformer_weights` (Xavier-uniform, embeddings N(0, 1/C)).
    """

    def __init__(self, vocab_size: int, d_model: int, n_heads: int, n_layers: int, block_size: int,
                 *, norm_first: bool = True, d_ff: int | None = None) -> None:
        super().__init__()
        for name, value in [("vocab_size", vocab_size), ("d_model", d_model), ("n_heads", n_heads),
                            ("n_layers", n_layers), ("block_size", block_size)]:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"CharLM {name} must be a positive int; got {value!r}")
        if d_model % n_heads:
            raise ValueError(f"CharLM d_model={d_model} must be divisible by n_heads={n_heads}")
        self.vocab_size, self.block_size, self.norm_first = vocab_size, block_size, norm_first
        self.embed = nn.Embedding(vocab_size, d_model)
        self.positions = SinusoidalPositionalEncoding(d_model, block_size)
        self.stack = Encoder(n_layers, d_model, n_heads, d_ff or 4 * d_model, norm_first=norm_first)
        self.head = nn.Linear(d_model, vocab_size)
        self.scale = math.sqrt(d_model)
        self.apply(lambda m: init_transformer_weights(m, d_model))

    def forward(self, input_ids: Tensor, labels: Tensor | None = None) -> ModelOutput:
        if input_ids.dim() != 2 or input_ids.dtype != torch.long:
            raise ValueError(f"CharLM expects int64 input_ids of shape (B, T); got {input_ids.dtype} "
                             f"{tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.block_size:
            raise ValueError(f"CharLM got {input_ids.shape[1]} positions; block_size is {self.block_size}")
        x = self.positions(self.embed(input_ids) * self.scale)  # (B, T, C)
        logits = self.head(self.stack(x, is_causal=True))  # (B, T, V)
        loss = None if labels is None else token_cross_entropy(*shift_for_causal_lm(logits, labels))
        return ModelOutput(logits=logits, loss=loss)


class LayerGradNorms:
    """Record ‖∇θ_l‖₂ of each layer l (all its parameters together) at every backward pass.

    Uses ``Tensor.register_post_accumulate_grad_hook``: the hook of each parameter fires when its
    gradient is complete, before any clipping or optimizer step, so nothing in the training loop
    has to change. A row is completed once every parameter of every layer has reported; the values
    stay on the device until :meth:`as_tensor` (no host sync per step). Call :meth:`remove` when done.
    With gradient accumulation a row is recorded per micro-batch (the gradient accumulated so far).
    """

    def __init__(self, layers: nn.ModuleList | list[nn.Module]) -> None:
        self._params = [[p for p in layer.parameters() if p.requires_grad] for layer in layers]
        if not self._params or any(not ps for ps in self._params):
            raise ValueError("LayerGradNorms needs layers that each have trainable parameters")
        self._total = sum(len(ps) for ps in self._params)
        self._squares: list[Tensor | float] = [0.0] * len(self._params)
        self._seen = 0
        self.rows: list[Tensor] = []
        self._handles = []
        for index, params in enumerate(self._params):
            for p in params:
                self._handles.append(p.register_post_accumulate_grad_hook(self._hook(index)))

    def _hook(self, index: int):
        def record(p: Tensor) -> None:
            self._squares[index] = self._squares[index] + p.grad.detach().float().pow(2).sum()  # ()
            self._seen += 1
            if self._seen == self._total:
                self.rows.append(torch.stack([torch.as_tensor(s) for s in self._squares]).sqrt())  # (L,)
                self._squares = [0.0] * len(self._params)
                self._seen = 0
        return record

    def as_tensor(self) -> Tensor:
        """(steps, L) gradient norms, on the CPU."""
        if not self.rows:
            return torch.zeros(0, len(self._params))
        return torch.stack(self.rows).cpu()  # (steps, L)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@dataclass
class CharLMRun:
    """What :func:`train_char_lm` returns."""

    history: TrainHistory  # per-step train loss, learning rate, global grad norm
    layer_grads: Tensor  # (steps, L) gradient norm of each layer at each step
    val_loss: float  # mean loss over the validation batches after training
    losses: list[float] = field(default_factory=list)  # = history.train_loss, for convenience


def train_char_lm(model: CharLM, data: dict[str, Tensor], *, steps: int, batch_size: int, learning_rate: float,
                  warmup_steps: int = 0, seed: int = 1337, eval_batches: int = 20, beta2: float = 0.98,
                  progress: bool = False) -> CharLMRun:
    """Train ``model`` on random windows of ``data["train"]`` and measure ``data["val"]``.

    The batches are a pure function of (seed, split, step) (:func:`make_lm_get_batch`), so two
    models trained with the same seed see the same batches. Optimiser: AdamW with weight decay 0
    (= Adam), betas (0.9, ``beta2``), a linear warm-up over ``warmup_steps`` and then a *constant*
    ``learning_rate``, no gradient clipping — the setting in which post-LN's large output-side
    gradients show. The validation loss is the mean over ``eval_batches`` fixed validation batches.
    Under a step cap (``SCRATCHLM_MAX_STEPS``, a dry run) both the steps and the validation batches are capped.
    """
    from ..training import TrainConfig, causal_lm_loss, evaluate, train

    if "train" not in data or "val" not in data:
        raise ValueError(f"data must hold 'train' and 'val' id tensors; got keys {sorted(data)}")
    device = next(model.parameters()).device
    get_batch = make_lm_get_batch(data, batch_size=batch_size, block_size=model.block_size, seed=seed,
                                  device=device)
    cfg = TrainConfig(max_steps=steps, learning_rate=learning_rate, min_lr=learning_rate,
                      warmup_steps=warmup_steps, weight_decay=0.0, beta1=0.9, beta2=beta2, grad_clip=0.0,
                      eval_every=0, eval_at_start=False, progress=progress, nonfinite="off")
    recorder = LayerGradNorms(model.stack.layers)
    try:
        history = train(model, get_batch, causal_lm_loss, cfg)
    finally:
        recorder.remove()
    val = evaluate(model, get_batch, causal_lm_loss, "val", range(capped(eval_batches)))  # a dry run: fewer
    return CharLMRun(history=history, layer_grads=recorder.as_tensor(), val_loss=val,
                     losses=list(history.train_loss))
