"""What every model of the book shares: the contract's loading, saving and input checks (Chapter 06).

The model contract (see :mod:`scratchlm.models.outputs`): keyword inputs ``input_ids``,
``attention_mask``, ``labels`` (+ model-specific ones), one :class:`ModelOutput`, unshifted labels
with −100 ignored, ``from_pretrained(dir)`` / ``save_pretrained(dir)`` in Hugging Face format.

Why value checks are not in ``forward``: reading a tensor's values on the host (``int(ids.max())``)
forces a GPU→CPU synchronisation and breaks a ``torch.compile`` graph. ``forward`` checks only
shapes and dtypes (free); :meth:`PreTrainedModel.validate_inputs` checks values once per batch, on
the CPU, and the training loop calls it before every step.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..constants import IGNORE_INDEX
from ..errors import CheckpointError
from .hf import check_tensors, read_config, read_weights, write_pretrained


def token_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean of −log p(label) over positions whose label is not −100.

    L = −(1/N) Σ_{i: y_i ≠ −100} log softmax(z_i)[y_i], N = number of such positions. With no
    supervised position at all the loss is defined as 0 (not 0/0 = NaN), so a batch of padding
    cannot poison the weights; :meth:`PreTrainedModel.validate_inputs` reports such a batch.
    Introduced in Chapter 06.
    """
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")  # scalar
    count = (labels != IGNORE_INDEX).sum().clamp(min=1)  # scalar, no host sync
    return total / count


def sequence_mean_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean over the sequences of each sequence's mean −log p(label): every example weighs the same.

    L = (1/B) Σ_b (1/N_b) Σ_{t: y_bt ≠ −100} −log softmax(z_bt)[y_bt], N_b = labelled positions of row b.
    :func:`token_cross_entropy` averages over all labelled *tokens* of the batch instead, so a row
    with a long target outweighs one with a short target. In a multi-task batch that matters: a
    two-token answer (``spam </s>``) mixed with fifteen-token tag sequences gets a few percent of
    the token mean but its row's share of this one. Rows without any labelled position count as 0
    and are left out of the mean. Introduced in Chapter 08.
    """
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(f"sequence_mean_cross_entropy expects logits (B, T, V) and labels (B, T); got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                ignore_index=IGNORE_INDEX, reduction="none").view(labels.shape)  # (B, T)
    counts = (labels != IGNORE_INDEX).sum(-1)  # (B,)
    per_row = per_token.sum(-1) / counts.clamp(min=1)  # (B,)
    rows = (counts > 0).sum().clamp(min=1)  # scalar, no host sync
    return per_row.sum() / rows


def shift_for_causal_lm(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Position t predicts token t+1: drop the last logit and the first label (HF convention)."""
    return logits[:, :-1], labels[:, 1:]  # (B, T-1, V), (B, T-1)


def shift_right(labels: Tensor, start_id: int) -> Tensor:
    """Decoder input for teacher forcing: ``[start, y_0, ..., y_{T-2}]``; -100 becomes ``start_id`` (pad)."""
    shifted = torch.full_like(labels, start_id)  # (B, T)
    shifted[:, 1:] = labels[:, :-1]  # (B, T-1)
    return shifted.masked_fill(shifted == IGNORE_INDEX, start_id)  # (B, T)


def build_config(config_class: type, values: dict[str, Any], overrides: dict[str, Any], path: str):
    """``config_class(**values, **overrides)`` for ``from_pretrained``: unknown override names are a
    ValueError (the caller's mistake); a config the file describes badly is a CheckpointError."""
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} fields {sorted(unknown)}; expected some of {sorted(names)}")
    try:
        return config_class(**{**{k: v for k, v in values.items() if k in names}, **overrides})
    except (TypeError, ValueError) as err:
        raise CheckpointError(path, f"invalid {config_class.__name__}: {err}") from None


def check_ids_tensor(name: str, ids: Any) -> Tensor:
    """Shape/dtype check (no values read): ``ids`` must be a non-empty (B, T) integer tensor."""
    if not isinstance(ids, Tensor) or ids.dtype not in (torch.int64, torch.int32):
        got = f"{ids.dtype} tensor" if isinstance(ids, Tensor) else type(ids).__name__
        raise TypeError(f"{name} must be an int64 tensor of token ids with shape (B, T); got {got}")
    if ids.dim() != 2:
        raise ValueError(f"{name} must have shape (B, T); got {tuple(ids.shape)}")
    if ids.shape[1] == 0 or ids.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(ids.shape)}): need at least one token per row")
    return ids


def check_same_shape(name: str, tensor: Tensor | None, like: Tensor, like_name: str = "input_ids") -> None:
    if tensor is not None and tuple(tensor.shape) != tuple(like.shape):
        raise ValueError(f"{name} must have the shape of {like_name} {tuple(like.shape)}; got {tuple(tensor.shape)}")


class PreTrainedModel(nn.Module):
    """Base class: ``from_pretrained`` / ``save_pretrained`` and ``validate_inputs`` for every model.

    Subclasses set ``config_class`` and implement four small hooks: ``config_to_hf`` /
    ``config_from_hf`` (the config.json dict) and ``hf_state_dict`` / ``load_hf_state_dict`` (the
    tensor name map), plus ``input_limits`` for validation.
    """

    config_class: ClassVar[type]
    required_hf_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} expects a {self.config_class.__name__}; "
                            f"got {type(config).__name__}")
        self.config = config

    # ---- hooks -------------------------------------------------------------------------------
    def config_to_hf(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any], path: str, **overrides):
        raise NotImplementedError

    def hf_state_dict(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def load_hf_state_dict(self, tensors: dict[str, Tensor]) -> None:
        raise NotImplementedError

    def input_limits(self) -> dict[str, int]:
        """Exclusive upper bounds of the id-valued inputs, and ``max_length`` (positions)."""
        raise NotImplementedError

    # ---- saving and loading -------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (Hugging Face layout, atomic)."""
        return write_pretrained(directory, self.config_to_hf(), self.hf_state_dict())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides):
        """Build the model from a Hugging Face–format directory (safetensors only), in eval mode.

        ``overrides`` change config fields that do not affect the weights (dropout, attention path).
        Every problem with the files raises :class:`~scratchlm.errors.CheckpointError`.
        """
        path = Path(directory)
        hf = read_config(path, cls.required_hf_fields)
        config = cls.config_from_hf(hf, str(path / "config.json"), **overrides)
        model = cls(config)
        tensors = read_weights(path)
        try:
            model.load_hf_state_dict(tensors)
        except CheckpointError:
            raise
        except (KeyError, ValueError, RuntimeError) as err:
            raise CheckpointError(path / "model.safetensors", f"does not fit {cls.__name__}: {err}") from None
        return model.eval()

    def _load_mapped(self, mapped: dict[str, Tensor], path: str = "model.safetensors") -> None:
        """Load tensors already renamed to our parameter names, strictly (names and shapes)."""
        expected = {k: v for k, v in self.state_dict().items() if k not in self._tied_aliases()}
        check_tensors(path, mapped, expected)
        self.load_state_dict({**mapped, **{a: mapped[t] for a, t in self._tied_aliases().items()}}, strict=True)

    def _tied_aliases(self) -> dict[str, str]:
        """Parameter names that are the same tensor as another name (tied weights): alias -> name."""
        seen: dict[int, str] = {}
        aliases: dict[str, str] = {}
        for name, tensor in self.state_dict(keep_vars=True).items():
            key = id(tensor)
            if key in seen:
                aliases[name] = seen[key]
            else:
                seen[key] = name
        return aliases

    # ---- checks -------------------------------------------------------------------------------
    @torch.no_grad()
    def validate_inputs(self, batch: Mapping[str, Any] | tuple) -> None:
        """Check the *values* of a batch once, on the CPU (ids in range, masks 0/1, labels valid).

        ``batch`` is the dict a collator returns (``input_ids``, ``attention_mask``, ``labels``,
        ``token_type_ids``, ``decoder_input_ids``...) or an ``(x, y)`` pair of language-model
        windows. Raises ValueError/TypeError naming the field, the allowed range and what arrived.
        """
        if isinstance(batch, tuple) and len(batch) == 2:
            batch = {"input_ids": batch[0], "targets": batch[1]}
        if not isinstance(batch, Mapping) or "input_ids" not in batch and "decoder_input_ids" not in batch:
            raise TypeError(f"validate_inputs expects a dict with input_ids or an (x, y) pair; got {type(batch).__name__}")
        limits = self.input_limits()
        for name in ("input_ids", "decoder_input_ids", "token_type_ids", "targets"):
            ids = batch.get(name)
            if ids is None:
                continue
            check_ids_tensor(name, ids)
            limit = limits["token_type_ids" if name == "token_type_ids" else
                           "decoder_input_ids" if name == "decoder_input_ids" and "decoder_input_ids" in limits
                           else "input_ids"]
            _check_range(name, ids, 0, limit)
            if name in ("input_ids", "decoder_input_ids") and ids.shape[1] > limits["max_length"]:
                raise ValueError(f"{name} has {ids.shape[1]} positions; the model has {limits['max_length']}")
        mask = batch.get("attention_mask")
        if mask is not None:
            if mask.dtype.is_floating_point or not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
            if not bool(mask.bool().any(dim=-1).all()):
                raise ValueError("attention_mask has a row without any real token (an empty sequence)")
        labels = batch.get("labels")
        if labels is not None and isinstance(labels, Tensor):
            self._validate_labels(labels, limits)
        elif labels is not None:
            raise TypeError(f"labels must be a tensor; got {type(labels).__name__}")

    def _validate_labels(self, labels: Tensor, limits: dict[str, int]) -> None:
        """Token labels: int64, each −100 or in [0, vocab); at least one supervised position."""
        if labels.dtype != torch.int64:
            raise TypeError(f"labels must be int64 token ids (−100 = no loss); got dtype {labels.dtype}")
        supervised = labels != IGNORE_INDEX
        if not bool(supervised.any()):
            raise ValueError("labels has no supervised position (every label is −100): the loss would be 0/0")
        _check_range("labels", labels[supervised], 0, limits.get("labels", limits["input_ids"]))

    def num_params(self, trainable_only: bool = False) -> int:
        """Number of parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def _check_range(name: str, values: Tensor, low: int, high: int) -> None:
    if values.numel() and (int(values.min()) < low or int(values.max()) >= high):
        bad = values[(values < low) | (values >= high)].unique()[:5].tolist()
        raise ValueError(f"{name} must lie in [{low}, {high}); got {bad} (range {int(values.min())}.."
                         f"{int(values.max())})")
