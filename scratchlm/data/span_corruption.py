"""T5 span corruption and text-to-text batches (introduced in Chapter 08).

Span corruption (Raffel et al., 2020) picks ``round(n * noise_density)`` of the ``n`` tokens of a
sequence, grouped into ``round(noise / mean_span_length)`` contiguous spans. The encoder input keeps
the other tokens and replaces each span by one sentinel; the target lists every sentinel followed by
the tokens it hides, and ends with one more sentinel::

    original : Thank you for inviting me to your party last week .
    input    : Thank you <X> me to your party <Y> week .
    target   : <X> for inviting <Y> last <Z>

The lengths of the noise spans and of the kept spans are random compositions (the algorithm of
T5's ``random_spans_noise_mask``), and spans alternate kept/noise starting with a kept span, so the
first token is never noise. The decoder is trained with teacher forcing on ``L_T5 = - sum_i log
p(y_i | y_<i, x)``; its input is the target shifted right by one with a start token in front.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .collate import seq2seq_collate


def _random_segmentation(num_items: int, num_segments: int, generator: torch.Generator | None) -> torch.Tensor:
    """Split ``num_items`` into ``num_segments`` positive lengths, uniformly over compositions."""
    cut = torch.zeros(num_items - 1, dtype=torch.bool)  # (n-1,) one slot between neighbours
    cut[: num_segments - 1] = True
    cut = cut[torch.randperm(num_items - 1, generator=generator)]  # random cut points
    first_in_segment = torch.cat([torch.zeros(1, dtype=torch.bool), cut])  # (n,)
    segment_id = torch.cumsum(first_in_segment.long(), 0)  # (n,) 0..num_segments-1
    return torch.bincount(segment_id, minlength=num_segments)  # (num_segments,)


def random_spans_noise_mask(
    length: int,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A (length,) bool mask, True at noise tokens, following T5's ``random_spans_noise_mask``.

    Exactly ``num_noise = clamp(round(length * noise_density), 1, length - 1)`` tokens are noise,
    in ``max(1, round(num_noise / mean_span_length))`` spans (fewer if the sequence is too short to
    separate them); a kept span always comes first.
    """
    if not isinstance(length, int) or length < 2:
        raise ValueError(f"length must be an int >= 2 (something to keep and something to hide); got {length!r}")
    if not 0.0 < noise_density < 1.0:
        raise ValueError(f"noise_density must be in (0, 1); got {noise_density!r}")
    if not mean_span_length >= 1.0:
        raise ValueError(f"mean_span_length must be >= 1; got {mean_span_length!r}")
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = max(int(round(num_noise / mean_span_length)), 1)
    num_keep = length - num_noise
    num_spans = min(num_spans, num_keep, num_noise)  # each span needs >= 1 token of either kind
    noise_lengths = _random_segmentation(num_noise, num_spans, generator)  # (S,)
    keep_lengths = _random_segmentation(num_keep, num_spans, generator)  # (S,)
    interleaved = torch.stack([keep_lengths, noise_lengths], dim=1).reshape(-1)  # (2S,) keep, noise, ...
    is_noise = torch.repeat_interleave(torch.arange(2 * num_spans) % 2 == 1, interleaved)  # (length,)
    return is_noise


def corrupt_spans(
    ids: Sequence[int], noise_mask: torch.Tensor | Sequence[bool], sentinel_ids: Sequence[int]
) -> tuple[list[int], list[int]]:
    """Return ``(inputs, targets)``: each noise span replaced by the next sentinel in the input, and
    listed after that sentinel in the target, which ends with one more sentinel."""
    # One .tolist() instead of len(ids) tensor-to-bool conversions (the loop below is plain Python).
    mask = noise_mask.tolist() if isinstance(noise_mask, torch.Tensor) else [bool(m) for m in noise_mask]
    if len(mask) != len(ids):
        raise ValueError(f"noise_mask has {len(mask)} entries for {len(ids)} tokens")
    inputs: list[int] = []
    targets: list[int] = []
    span = -1
    for i, (tok, noisy) in enumerate(zip(ids, mask, strict=True)):
        if noisy:
            if i == 0 or not mask[i - 1]:  # a new span starts here
                span += 1
                if span + 1 >= len(sentinel_ids):
                    raise ValueError(f"{len(sentinel_ids)} sentinels are too few for this many spans")
                inputs.append(sentinel_ids[span])
                targets.append(sentinel_ids[span])
            targets.append(int(tok))
        else:
            inputs.append(int(tok))
    targets.append(sentinel_ids[span + 1])  # closing sentinel, as in the T5 paper's figure
    return inputs, targets


def reconstruct_from_spans(inputs: Sequence[int], targets: Sequence[int], sentinel_ids: Sequence[int]) -> list[int]:
    """Invert :func:`corrupt_spans`: put every span of ``targets`` back in place of its sentinel."""
    sentinel_pos = {s: i for i, s in enumerate(sentinel_ids)}
    spans: dict[int, list[int]] = {}
    current = None
    for tok in targets:
        if tok in sentinel_pos:
            current = sentinel_pos[tok]
            spans[current] = []
        elif current is None:
            raise ValueError("targets must start with a sentinel")
        else:
            spans[current].append(int(tok))
    out: list[int] = []
    for tok in inputs:
        if tok in sentinel_pos:
            if sentinel_pos[tok] not in spans:
                raise ValueError(f"sentinel {tok} appears in the inputs but not in the targets")
            out.extend(spans[sentinel_pos[tok]])
        else:
            out.append(int(tok))
    return out


@dataclass
class SpanCorruptionCollator:
    """Turn token-id sequences into span-corruption batches for an encoder-decoder (Chapter 08)."""

    sentinel_ids: tuple[int, ...]  # sentinel token ids, <extra_id_0>, <extra_id_1>, ...
    pad_id: int  # padding id (also the decoder start token, as in T5)
    eos_id: int  # appended to inputs and targets
    noise_density: float = 0.15  # fraction of tokens hidden
    mean_span_length: float = 3.0  # average length of a hidden span

    def __post_init__(self) -> None:
        if len(self.sentinel_ids) < 2:
            raise ValueError(f"need at least 2 sentinel ids; got {len(self.sentinel_ids)}")
        if not 0.0 < self.noise_density < 1.0:
            raise ValueError(f"noise_density must be in (0, 1); got {self.noise_density!r}")
        if self.mean_span_length < 1.0:
            raise ValueError(f"mean_span_length must be >= 1; got {self.mean_span_length!r}")

    def corrupt(self, ids: Sequence[int], generator: torch.Generator | None = None) -> tuple[list[int], list[int]]:
        """One example: ``(inputs + [eos], targets + [eos])``."""
        mask = random_spans_noise_mask(len(ids), self.noise_density, self.mean_span_length, generator)
        inputs, targets = corrupt_spans(ids, mask, self.sentinel_ids)
        return inputs + [self.eos_id], targets + [self.eos_id]

    def __call__(self, batch: Sequence[Sequence[int]], generator: torch.Generator | None = None) -> dict:
        pairs = [self.corrupt(ids, generator) for ids in batch]
        return seq2seq_collate(pairs, pad_id=self.pad_id, decoder_start_id=self.pad_id)
