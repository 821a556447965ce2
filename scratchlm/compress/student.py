"""Building a smaller student from a teacher: keep some layers, trim the vocabulary (Chapter 12).

* :func:`keep_layers` — a copy of the model with only some of its transformer layers, initialised
  from the teacher's (DistilBERT took every second layer of BERT, Sanh et al., 2019).
* :func:`trim_vocabulary` — keep only the rows of the token-embedding table that a task uses
  (Abdaoui et al., 2020, for multilingual BERT). In a small encoder the table is a large share of
  the model (11.7 M of all-MiniLM-L6-v2's 22.7 M parameters), so removing layers alone cannot make
  it much smaller. Ids outside the kept set become [UNK]; a :class:`TrimmedVocabulary` wrapper maps
  the original tokenizer's ids to the new rows, so the tokenizer and the data stay as they are.

Introduced in Chapter 12.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..layers.blocks import DecoderLayer, EncoderLayer


def _layer_stack(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """The one ``nn.ModuleList`` of transformer layers in ``model`` (its parent and attribute name)."""
    stacks = []
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, nn.ModuleList) and len(child) and all(
                    isinstance(c, (EncoderLayer, DecoderLayer)) for c in child):
                stacks.append((module, child_name, child, f"{name}.{child_name}".lstrip(".")))
    if len(stacks) != 1:
        raise ValueError(f"keep_layers needs a model with exactly one stack of transformer layers; found "
                         f"{[s[3] for s in stacks]}")
    return stacks[0][:3]


def keep_layers(model: nn.Module, keep: Sequence[int]) -> nn.Module:
    """A deep copy of ``model`` whose layer stack holds only the layers ``keep`` (in that order).

    Works for BERT (``encoder.layers``), GPT (``transformer.h``) and heads that wrap them. A
    ``config.n_layers`` found on the model or a submodule is updated, so the copy describes itself.
    The teacher is not modified. Introduced in Chapter 12.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"keep_layers expects an nn.Module; got {type(model).__name__}")
    keep = list(keep)
    _, _, stack = _layer_stack(model)
    n = len(stack)
    if not keep or any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n for i in keep):
        raise ValueError(f"keep must be a non-empty list of layer indices in [0, {n}); got {keep!r}")
    if len(set(keep)) != len(keep):
        raise ValueError(f"keep lists a layer twice: {keep!r}")
    student = copy.deepcopy(model)
    parent, attr, stack = _layer_stack(student)
    setattr(parent, attr, nn.ModuleList([stack[i] for i in keep]))
    for module in student.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "n_layers"):
            cfg.n_layers = len(keep)
    return student


class TrimmedVocabulary(nn.Module):
    """Call ``model`` with input ids mapped to a trimmed embedding table: ids ↦ ``old_to_new[ids]``.

    ``old_to_new`` (V_old,) int32 holds the new row of every original id ([UNK]'s row for the ids
    that were dropped). Every other argument is passed through unchanged; attributes the wrapper
    does not have are read from the wrapped model. Introduced in Chapter 12.
    """

    def __init__(self, model: nn.Module, old_to_new: Tensor) -> None:
        super().__init__()
        if not isinstance(old_to_new, Tensor) or old_to_new.dim() != 1 or old_to_new.is_floating_point():
            raise TypeError("old_to_new must be a 1-d integer tensor (one new id per original id)")
        self.model = model
        self.register_buffer("old_to_new", old_to_new.to(torch.int32).clone())  # (V_old,)

    def __getattr__(self, name: str):
        """Attributes the wrapper lacks come from the wrapped model (``config``, ``embeddings``,
        ``encoder``...), so code that inspects an encoder (freezing strategies) sees through it."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)

    def forward(self, input_ids: Tensor, *args, **kwargs):
        return self.model(*args, input_ids=self.old_to_new[input_ids].long(), **kwargs)  # ids (B, T) → new ids (B, T)


def trim_vocabulary(encoder: nn.Module, keep_ids: Sequence[int] | Tensor, unk_id: int,
                    embedding: str = "embeddings.word_embeddings") -> TrimmedVocabulary:
    """Keep only the embedding rows ``keep_ids`` of ``encoder`` (in place) and wrap it.

    The table ``encoder.<embedding>`` (V, C) becomes (V', C) with the rows of ``keep_ids`` (sorted,
    ``unk_id`` and the padding row added if missing); ``config.vocab_size`` and ``config.pad_id``
    follow. Returns a :class:`TrimmedVocabulary` that maps original ids, so a text whose tokens are
    all kept gives exactly the outputs it gave before, and any other token reads [UNK]'s row. A
    table tied to an output layer (GPT's ``lm_head``) is refused: its rows are also the output
    classes. Introduced in Chapter 12.
    """
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"trim_vocabulary expects an nn.Module; got {type(encoder).__name__}")
    try:
        table = encoder.get_submodule(embedding)
    except AttributeError:
        raise ValueError(f"{type(encoder).__name__} has no submodule {embedding!r}") from None
    if not isinstance(table, nn.Embedding):
        raise TypeError(f"{embedding} must be an nn.Embedding; got {type(table).__name__}")
    if sum(p is table.weight for _, p in encoder.named_parameters(remove_duplicate=False)) > 1 or any(
            isinstance(m, nn.Linear) and m.weight is table.weight for m in encoder.modules()):
        raise ValueError(f"{embedding} is tied to another layer (an output layer?); trimming it would change outputs")
    V = table.num_embeddings
    keep = torch.as_tensor(keep_ids, dtype=torch.long).reshape(-1)  # (n,)
    if not isinstance(unk_id, int) or not 0 <= unk_id < V:
        raise ValueError(f"unk_id must be an id in [0, {V}); got {unk_id!r}")
    if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= V):
        raise ValueError(f"keep_ids must lie in [0, {V}); got [{int(keep.min())}, {int(keep.max())}]")
    extra = [unk_id] + ([table.padding_idx] if table.padding_idx is not None else [])
    keep = torch.unique(torch.cat([keep, torch.tensor(extra)]))  # (V',) sorted
    old_to_new = torch.full((V,), -1, dtype=torch.long)  # (V,)
    old_to_new[keep] = torch.arange(keep.numel())  # (V',)
    old_to_new[old_to_new < 0] = old_to_new[unk_id]  # dropped ids read [UNK]
    new_pad = None if table.padding_idx is None else int(old_to_new[table.padding_idx])
    new = nn.Embedding(keep.numel(), table.embedding_dim, padding_idx=new_pad, device=table.weight.device,
                       dtype=table.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(table.weight[keep.to(table.weight.device)])  # (V', C)
    new.weight.requires_grad_(table.weight.requires_grad)
    parent_name, _, child = embedding.rpartition(".")
    setattr(encoder.get_submodule(parent_name) if parent_name else encoder, child, new)
    cfg = getattr(encoder, "config", None)
    if cfg is not None and hasattr(cfg, "vocab_size"):
        cfg.vocab_size = keep.numel()
        if hasattr(cfg, "pad_id") and new_pad is not None:
            cfg.pad_id = new_pad
    return TrimmedVocabulary(encoder, old_to_new)
