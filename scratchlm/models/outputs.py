"""The one output type every model and head returns (the model contract, introduced in Chapter 05).

Every model of the book (the Chapter 05 encoder-decoder, GPT, BERT, T5) and every task head
(Chapter 09) takes keyword inputs ``input_ids``, ``attention_mask`` and ``labels`` (plus its own,
such as ``token_type_ids`` or ``decoder_input_ids``) and returns a :class:`ModelOutput`. Labels are
*unshifted* and ``-100`` (:data:`scratchlm.constants.IGNORE_INDEX`) marks positions without a loss;
causal models shift them inside (the Hugging Face convention), so collators and heads compose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor


@dataclass
class ModelOutput:
    """Logits, loss and optional internals of one forward pass; fields a model does not produce are None."""

    logits: Tensor | None = None  # (B, T, V) token logits, (B, K) class logits or (B,) regression scores
    loss: Tensor | None = None  # scalar, when labels were given
    last_hidden_state: Tensor | None = None  # (B, T, C) final hidden states (the decoder's for seq2seq)
    pooler_output: Tensor | None = None  # (B, C) sentence vector (BERT's pooled [CLS])
    hidden_states: tuple[Tensor, ...] | None = None  # embeddings + every layer's output, each (B, T, C)
    attentions: tuple[Tensor, ...] | None = None  # every layer's attention weights, each (B, H, Tq, Tk)
    past_key_values: Any = None  # the key/value cache to continue generation from
    encoder_last_hidden_state: Tensor | None = None  # (B, S, C) encoder output of an encoder-decoder
