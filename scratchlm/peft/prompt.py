"""Prompt tuning (Lester et al., 2021): trainable input embeddings prepended to the tokens. Chapter 10.

    x̃ = [p_1, ..., p_P, E[w_1], ..., E[w_T]],     p_j ∈ R^C trainable, everything else frozen

Only P·C numbers train. Unlike prefix-tuning (:mod:`scratchlm.peft.prefix`), nothing is inserted
inside the layers: the virtual tokens enter at the bottom like words, every frozen layer computes
their keys and values, and they take position slots 0..P-1 (the real tokens move to P..P+T-1).

Mechanics. The models of the book embed ``input_ids`` by *calling* their embedding module
(GPT's ``transformer.wte``, BERT's ``embeddings.word_embeddings``). :class:`PromptEmbedding`
replaces that module: ids below the vocabulary size V look up the frozen table, ids V..V+P-1 look
up the trainable prompt. :class:`PromptTuningModel` wraps the model: it prepends the ids
V..V+P-1 (and ones to the attention mask, −100 to the labels, zeros to ``token_type_ids``), runs
the model, and strips the P virtual positions from the per-token outputs, so the wrapped model
returns the shapes its callers expect (a Chapter 09 head wraps it unchanged). BERT's
``pooler_output`` reads position 0, which is now the first virtual token (as in Hugging Face
``peft``); the heads' ``cls``/``mean`` pooling read the stripped hidden states instead.

With a KV cache (generation) the prompt is fed once, on the first call; later calls only extend
the attention mask by the P prompt positions the cache already holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..constants import IGNORE_INDEX
from ..models.outputs import ModelOutput

EMBEDDING_PATHS = ("transformer.wte", "embeddings.word_embeddings", "shared", "embed_tokens")


def find_input_embedding(model: nn.Module) -> str:
    """Dotted name of the model's token-embedding module (GPT, BERT, T5 layouts), or a clear error."""
    modules = dict(model.named_modules())
    for path in EMBEDDING_PATHS:
        if isinstance(modules.get(path), (nn.Embedding, PromptEmbedding)):
            return path
    raise ValueError(f"prompt tuning: found no token embedding in {type(model).__name__} at any of "
                     f"{EMBEDDING_PATHS}")


class PromptEmbedding(nn.Module):
    """A frozen ``nn.Embedding`` (V, C) plus P trainable rows for the ids V..V+P-1. Chapter 10."""

    def __init__(self, base: nn.Embedding, num_virtual_tokens: int, init: Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(base, nn.Embedding):
            raise TypeError(f"PromptEmbedding wraps an nn.Embedding; got {type(base).__name__}")
        if not isinstance(num_virtual_tokens, int) or isinstance(num_virtual_tokens, bool) or num_virtual_tokens <= 0:
            raise ValueError(f"num_virtual_tokens must be a positive int; got {num_virtual_tokens!r}")
        self.base = base
        self.vocab_size, self.num_virtual_tokens = base.num_embeddings, num_virtual_tokens
        if init is None:
            init = torch.randn(num_virtual_tokens, base.embedding_dim, device=base.weight.device) * base.weight.std()
        if tuple(init.shape) != (num_virtual_tokens, base.embedding_dim):
            raise ValueError(f"prompt init must have shape (P, C) = {(num_virtual_tokens, base.embedding_dim)}; "
                             f"got {tuple(init.shape)}")
        self.prompt = nn.Parameter(init.detach().clone().to(base.weight.dtype))  # (P, C)

    @property
    def weight(self) -> Tensor:
        """The frozen vocabulary table (a tied output layer keeps pointing at it)."""
        return self.base.weight

    def forward(self, ids: Tensor) -> Tensor:
        V, P = self.vocab_size, self.num_virtual_tokens
        real = self.base(ids.clamp(max=V - 1))  # (B, T, C): virtual ids borrow row V-1, replaced below
        virtual = self.prompt[(ids - V).clamp(0, P - 1)]  # (B, T, C)
        return torch.where((ids >= V)[..., None], virtual, real)  # (B, T, C)


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


class PromptTuningModel(nn.Module):
    """Wraps a model of the book so that P trainable embeddings precede every input. Chapter 10.

    ``init="vocab"`` starts the prompt from the embeddings of P random vocabulary tokens (Lester et
    al.'s best initialisation besides class labels); ``"random"`` from N(0, std(E)²).
    """

    def __init__(self, model: nn.Module, num_virtual_tokens: int, init: str = "vocab",
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if init not in ("vocab", "random"):
            raise ValueError(f"prompt init must be 'vocab' or 'random'; got {init!r}")
        if isinstance(model, PromptTuningModel):
            raise ValueError("prompt tuning is already applied to this model")
        path = find_input_embedding(model)
        base = model.get_submodule(path)
        if isinstance(base, PromptEmbedding):
            raise ValueError("prompt tuning is already applied to this model")
        start = None
        if init == "vocab":
            rows = torch.randint(0, base.num_embeddings, (num_virtual_tokens,), generator=generator)  # (P,)
            start = base.weight.detach()[rows.to(base.weight.device)]  # (P, C)
        self.model = model
        self.embedding = PromptEmbedding(base, num_virtual_tokens, start)
        _set_submodule(model, path, self.embedding)  # the model now calls the prompt-aware embedding
        self.num_virtual_tokens = num_virtual_tokens
        self.embedding_path = path
        config = getattr(model, "config", None)
        if dataclasses.is_dataclass(config) and hasattr(config, "block_size"):  # generate crops to what is left
            config = dataclasses.replace(config, block_size=config.block_size - num_virtual_tokens)
        self.config = config

    def _prepend(self, x: Tensor | None, value: int) -> Tensor | None:
        if x is None:
            return None
        return torch.cat([x.new_full((x.shape[0], self.num_virtual_tokens), value), x], dim=1)  # (B, P + T)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None,
                **kwargs: Any) -> ModelOutput:
        P = self.num_virtual_tokens
        cache = kwargs.get("past_key_values")
        continuing = cache is not None and len(cache) > 0  # the prompt is already in the cache
        if attention_mask is not None:
            attention_mask = self._prepend(attention_mask, 1)  # (B, P + T_past + T)
        if labels is not None:
            kwargs["labels"] = labels if continuing else self._prepend(labels, IGNORE_INDEX)
        if continuing:
            return self.model(input_ids, attention_mask=attention_mask, **kwargs)
        B = input_ids.shape[0]
        virtual = torch.arange(P, device=input_ids.device) + self.embedding.vocab_size  # (P,) ids V..V+P-1
        ids = torch.cat([virtual.expand(B, P), input_ids], dim=1)  # (B, P + T)
        if kwargs.get("token_type_ids") is not None:
            kwargs["token_type_ids"] = self._prepend(kwargs["token_type_ids"], 0)
        out = self.model(ids, attention_mask=attention_mask, **kwargs)
        strip = lambda t: None if t is None else t[:, P:]  # noqa: E731  (B, P + T, ...) -> (B, T, ...)
        return dataclasses.replace(
            out, logits=strip(out.logits) if out.logits is not None and out.logits.dim() == 3 else out.logits,
            last_hidden_state=strip(out.last_hidden_state),
            hidden_states=None if out.hidden_states is None else tuple(strip(h) for h in out.hidden_states))

    def validate_inputs(self, batch: Mapping[str, Any]) -> None:
        """The wrapped model's value checks, on the batch as the caller gives it."""
        self.model.validate_inputs(batch)

    def input_limits(self) -> dict[str, int]:
        limits = dict(self.model.input_limits())
        limits["max_length"] -= self.num_virtual_tokens
        return limits
