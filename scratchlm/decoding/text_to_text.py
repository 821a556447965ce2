"""Text-to-text answers from an encoder-decoder: decode many sources, or score fixed answers.

Introduced in Chapter 08. A T5-style model answers a task by writing text. Two ways to read its
answer for a batch of sources:

* **decode** (:func:`decode_batch`): greedy decoding, optionally constrained to a grammar
  (:class:`~scratchlm.decoding.constrained.ItemSequenceConstraint`); the answer is whatever the
  model writes, which may be none of the expected labels;
* **score** (:func:`score_targets`): for a closed set of answers (``spam`` / ``ham``) compute the
  log-likelihood of each candidate target under teacher forcing,

      log p(y | x) = Σ_t log p_θ(y_t | y_<t, x),

  and pick the most likely one ("rank classification", as GPT-3 answered multiple-choice tasks;
  Brown et al., 2020). The decision is still made by the text-to-text model — it is the
  argmax of p(y | x) over the allowed targets — but it can never be an unparsable string.

Both work in chunks so that thousands of sources fit in memory, and run the model in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..constants import IGNORE_INDEX
from ..data.collate import seq2seq_collate
from .sampling import generate

__all__ = ["decode_batch", "score_targets"]


def _check_sources(sources: Sequence[Sequence[int]], name: str = "sources") -> None:
    if isinstance(sources, (str, bytes)) or not isinstance(sources, Sequence):
        raise TypeError(f"{name} must be a sequence of token-id lists; got {type(sources).__name__}")
    for i, s in enumerate(sources):
        if isinstance(s, (str, bytes)) or not isinstance(s, (Sequence, Tensor)) or len(s) == 0:
            raise ValueError(f"{name}[{i}] must be a non-empty list of token ids; got {s!r}")


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        raise ValueError("the model has no parameters") from None


def _config_id(model: nn.Module, given: int | None, field: str) -> int:
    if given is not None:
        return given
    value = getattr(getattr(model, "config", None), field, None)
    if value is None:
        raise ValueError(f"pass {field} (the model's config has none)")
    return int(value)


@torch.no_grad()
def decode_batch(
    model: nn.Module,
    sources: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    pad_id: int | None = None,
    eos_id: int | None = None,
    decoder_start_id: int | None = None,
    batch_size: int = 64,
    constraint: Callable[[int, int], Callable[[Tensor], Tensor]] | None = None,
) -> list[list[int]]:
    """Greedy answers of an encoder-decoder for ``sources`` (token-id lists), in order.

    Each answer is the generated ids up to (not including) ``eos_id`` and without padding.
    ``constraint(start, stop)`` — optional — returns the ``allowed_tokens`` callable of
    :func:`~scratchlm.decoding.generate` for the chunk ``sources[start:stop]`` (e.g. an
    :class:`~scratchlm.decoding.constrained.ItemSequenceConstraint` built with that chunk's tag
    counts). ``pad_id`` / ``eos_id`` / ``decoder_start_id`` default to the model's config.
    """
    _check_sources(sources)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    if not getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        raise TypeError(f"decode_batch needs an encoder-decoder model (config.is_encoder_decoder); "
                        f"got {type(model).__name__}")
    pad = _config_id(model, pad_id, "pad_id")
    eos = _config_id(model, eos_id, "eos_id")
    start_id = _config_id(model, decoder_start_id, "decoder_start_id")
    device = _model_device(model)
    answers: list[list[int]] = []
    for start in range(0, len(sources), batch_size):
        chunk = [list(map(int, s)) for s in sources[start: start + batch_size]]
        batch = seq2seq_collate([(s, [eos]) for s in chunk], pad_id=pad, decoder_start_id=start_id)
        allowed = None if constraint is None else constraint(start, start + len(chunk))
        out = generate(model, batch["input_ids"].to(device), max_new_tokens,
                       attention_mask=batch["attention_mask"].to(device), greedy=True, pad_id=pad,
                       stop_tokens=[eos], decoder_start_id=start_id, allowed_tokens=allowed)  # (b, max_new_tokens)
        for row in out.tolist():
            answer = []
            for t in row:
                if t == eos:
                    break
                if t != pad:
                    answer.append(t)
            answers.append(answer)
    return answers


@torch.no_grad()
def score_targets(
    model: nn.Module,
    sources: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[int]],
    *,
    pad_id: int | None = None,
    decoder_start_id: int | None = None,
    batch_size: int = 64,
    normalize: bool = False,
) -> Tensor:
    """Log-likelihoods (N, K) of each of K candidate targets for each of N sources.

    ``scores[n, k] = Σ_t log p(c_k,t | c_k,<t, x_n)`` under teacher forcing (each candidate should end
    with the end-of-sequence id, so that "spam" and "spam offer" are different answers); with
    ``normalize=True`` the sum is divided by the candidate's length (a per-token average, which
    removes the bias towards short answers when candidates differ in length). The encoder runs once
    per source; all K candidates are scored against its output.
    """
    _check_sources(sources)
    _check_sources(candidates, "candidates")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    if not hasattr(model, "encode"):
        raise TypeError(f"score_targets needs an encoder-decoder with .encode(); got {type(model).__name__}")
    pad = _config_id(model, pad_id, "pad_id")
    start_id = _config_id(model, decoder_start_id, "decoder_start_id")
    device = _model_device(model)
    K = len(candidates)
    was_training = model.training
    model.eval()
    rows = []
    try:
        cand = seq2seq_collate([([pad], list(map(int, c))) for c in candidates], pad_id=pad,
                               decoder_start_id=start_id)
        labels = cand["labels"].to(device)  # (K, T)
        dec_in = cand["decoder_input_ids"].to(device)  # (K, T)
        lengths = (labels != IGNORE_INDEX).sum(-1)  # (K,)
        for start in range(0, len(sources), batch_size):
            chunk = [list(map(int, s)) for s in sources[start: start + batch_size]]
            b = len(chunk)
            enc = seq2seq_collate([(s, [pad]) for s in chunk], pad_id=pad, decoder_start_id=start_id)
            ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)  # (b, S)
            memory = model.encode(ids, mask)  # (b, S, C)
            memory = memory if isinstance(memory, Tensor) else memory.last_hidden_state
            memory = memory.repeat_interleave(K, dim=0)  # (b·K, S, C): source n, then its K candidates
            out = model(attention_mask=mask.repeat_interleave(K, dim=0), encoder_outputs=memory,
                        decoder_input_ids=dec_in.repeat(b, 1))  # logits (b·K, T, V)
            log_probs = torch.log_softmax(out.logits.float(), dim=-1)  # (b·K, T, V)
            tgt = labels.repeat(b, 1)  # (b·K, T)
            picked = log_probs.gather(-1, tgt.clamp(min=0)[..., None]).squeeze(-1)  # (b·K, T)
            total = picked.masked_fill(tgt == IGNORE_INDEX, 0.0).sum(-1).view(b, K)  # (b, K)
            rows.append(total / lengths if normalize else total)
    finally:
        model.train(was_training)
    return torch.cat(rows).cpu()  # (N, K)
