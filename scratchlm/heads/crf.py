"""A linear-chain conditional random field (CRF), written from scratch.

A token classifier with a softmax picks every tag on its own; a CRF scores the whole tag sequence,
so it can learn that, say, ``I-PER`` never follows ``B-LOC``. With emissions e (B, T, K) from a
model and learned transition scores, the score of a tag path y = (y_1 .. y_L) of a row of length L is

    score(x, y) = start[y_1] + Σ_{t=1..L} e_t(y_t) + Σ_{t=2..L} trans[y_{t-1}, y_t] + end[y_L]

and the model is p(y | x) = exp(score(x, y)) / Z(x), with Z(x) = Σ_{y'} exp(score(x, y')) over all
K^L paths. Training minimises the negative log-likelihood

    NLL(x, y) = log Z(x) − score(x, y),

where log Z comes from the forward algorithm in O(L·K²) instead of O(K^L):

    α_1(j) = start[j] + e_1(j)
    α_t(j) = logsumexp_i(α_{t-1}(i) + trans[i, j]) + e_t(j)
    log Z  = logsumexp_j(α_L(j) + end[j]).

Decoding replaces logsumexp by max (Viterbi) and follows back-pointers to the best path.

Conventions: batch first; ``mask`` (B, T) is bool or 0/1 integers, each row's real positions come
first (left-aligned) and the first position is always real. Tags at padded positions are ignored
(``-100`` is fine there). Everything is vectorised over the batch and loops over time only;
``log_partition``, ``score``, ``nll`` and ``viterbi`` do no host sync (they compile), so value
checks (tags in range, mask shape of the sequence) live in :meth:`CRF.validate`, which
:meth:`CRF.decode` calls. Introduced in Chapter 09.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..constants import IGNORE_INDEX

REDUCTIONS = ("mean", "sum", "none", "token_mean")
FORBIDDEN = -1.0e4
"""Score given to a forbidden start, end or transition (see :class:`CRF`)."""


class CRF(nn.Module):
    """Linear-chain CRF over K tags: start (K,), end (K,) and transition (K, K) scores, i → j.

    Optional constraints forbid transitions (``allowed_transitions[i, j] = False``), start tags or
    end tags (BIO: ``I-X`` may follow only ``B-X`` or ``I-X``). A forbidden score is replaced by
    ``FORBIDDEN`` = −10⁴: exp(−10⁴) underflows to exactly 0, so such paths get no probability and
    are never decoded while another path exists, yet gradients stay finite (a true −inf gives NaN
    gradients once every predecessor of a tag is forbidden). A gold path that uses a forbidden
    step gets an NLL of about 10⁴ — a sign the constraints and the labels disagree. Parameters start uniform in [−0.1, 0.1], like ``torchcrf``. Introduced in Chapter 09.
    """

    def __init__(self, num_tags: int, *, allowed_transitions: Tensor | None = None,
                 allowed_start: Tensor | None = None, allowed_end: Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(num_tags, int) or isinstance(num_tags, bool) or num_tags < 1:
            raise ValueError(f"num_tags must be a positive int; got {num_tags!r}")
        self.num_tags = num_tags
        self.start_transitions = nn.Parameter(torch.empty(num_tags))  # (K,)
        self.end_transitions = nn.Parameter(torch.empty(num_tags))  # (K,)
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))  # (K, K): from i to j
        for name, allowed, shape in (("allowed_transitions", allowed_transitions, (num_tags, num_tags)),
                                     ("allowed_start", allowed_start, (num_tags,)),
                                     ("allowed_end", allowed_end, (num_tags,))):
            if allowed is not None:
                allowed = torch.as_tensor(allowed)
                if allowed.dtype != torch.bool or tuple(allowed.shape) != shape:
                    raise ValueError(f"{name} must be a bool tensor of shape {shape}; "
                                     f"got {allowed.dtype} {tuple(allowed.shape)}")
            self.register_buffer(name, allowed)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in [−0.1, 0.1] (the ``torchcrf`` initialisation): near-zero, no tag preferred."""
        for p in (self.start_transitions, self.end_transitions, self.transitions):
            nn.init.uniform_(p, -0.1, 0.1)

    def extra_repr(self) -> str:
        return f"num_tags={self.num_tags}, constrained={self.allowed_transitions is not None}"

    # ------------------------------------------------------------------ checks

    def _prepare(self, emissions: Tensor, tags: Tensor | None, mask: Tensor | None):
        """Shape/dtype checks (no host sync); returns emissions in a compute dtype and a bool mask."""
        K = self.num_tags
        if not isinstance(emissions, Tensor):
            raise TypeError(f"emissions must be a torch.Tensor (B, T, {K}); got {type(emissions).__name__}")
        if not emissions.is_floating_point():
            raise TypeError(f"emissions must be a floating-point tensor; got {emissions.dtype}")
        if emissions.dim() != 3 or emissions.shape[-1] != K:
            raise ValueError(f"emissions must have shape (B, T, {K}); got {tuple(emissions.shape)}")
        B, T, _ = emissions.shape
        if T == 0:
            raise ValueError("emissions must have at least one time step (T >= 1)")
        if tags is not None:
            if not isinstance(tags, Tensor) or tags.is_floating_point() or tags.is_complex() \
                    or tags.dtype == torch.bool:
                got = tags.dtype if isinstance(tags, Tensor) else type(tags).__name__
                raise TypeError(f"tags must be an integer tensor (B, T); got {got}")
            if tuple(tags.shape) != (B, T):
                raise ValueError(f"tags must have shape (B, T) = {(B, T)}; got {tuple(tags.shape)}")
        if mask is None:
            mask = torch.ones(B, T, dtype=torch.bool, device=emissions.device)  # (B, T)
        else:
            if not isinstance(mask, Tensor) or mask.is_floating_point() or mask.is_complex():
                got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
                raise TypeError(f"mask must be a bool or 0/1 integer tensor (B, T); got {got}")
            if tuple(mask.shape) != (B, T):
                raise ValueError(f"mask must have shape (B, T) = {(B, T)}; got {tuple(mask.shape)}")
            mask = mask.bool()  # (B, T)
        dtype = torch.promote_types(emissions.dtype, self.transitions.dtype)
        if dtype in (torch.float16, torch.bfloat16):
            dtype = torch.float32  # sums of many log-scores need more than 8-11 mantissa bits
        return emissions.to(dtype), mask

    def validate(self, emissions: Tensor, tags: Tensor | None = None, mask: Tensor | None = None) -> None:
        """Value checks the fast paths skip (they sync with the host): call on a batch to check it.

        Raises ValueError when an integer mask holds values other than 0/1, a row's first position
        is padding, a row has holes (a real position after a padded one), or a tag at a real
        position is outside [0, K).
        """
        if mask is not None and isinstance(mask, Tensor) and mask.dtype != torch.bool \
                and not mask.is_floating_point() and bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError("mask must hold only 0 and 1")
        emissions, mask = self._prepare(emissions, tags, mask)
        if not bool(mask[:, 0].all()):
            rows = torch.nonzero(~mask[:, 0]).flatten().tolist()
            raise ValueError(f"the first position of every row must be real (mask[:, 0] on); rows {rows} "
                             "are not (empty rows have no tag path; drop them)")
        holes = mask[:, 1:] & ~mask[:, :-1]  # (B, T-1): real after padding
        if bool(holes.any()):
            rows = torch.nonzero(holes.any(dim=1)).flatten().tolist()
            raise ValueError(f"mask rows {rows} have holes: real positions must come first (left-aligned), "
                             "then padding")
        if tags is not None:
            bad = mask & ((tags < 0) | (tags >= self.num_tags))  # (B, T)
            if bool(bad.any()):
                values = sorted(set(tags[bad].tolist()))
                raise ValueError(f"tags at real positions must be in [0, {self.num_tags}); got {values}")

    # ------------------------------------------------------------------ scores

    def _scores(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """start (K,), end (K,), trans (K, K) in ``dtype``, forbidden entries set to ``FORBIDDEN``."""
        start = self.start_transitions.to(dtype)  # (K,)
        end = self.end_transitions.to(dtype)  # (K,)
        trans = self.transitions.to(dtype)  # (K, K)
        if self.allowed_start is not None:
            start = start.masked_fill(~self.allowed_start, FORBIDDEN)  # (K,)
        if self.allowed_end is not None:
            end = end.masked_fill(~self.allowed_end, FORBIDDEN)  # (K,)
        if self.allowed_transitions is not None:
            trans = trans.masked_fill(~self.allowed_transitions, FORBIDDEN)  # (K, K)
        return start, end, trans

    def score(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None) -> Tensor:
        """Score (B,) of the given tag paths:
        start[y_1] + Σ_{t≤L} e_t(y_t) + Σ_{2≤t≤L} trans[y_{t-1}, y_t] + end[y_L].

        Fully vectorised (no loop at all): gather each position's emission and transition, zero the
        padded ones, sum. Tags at padded positions are ignored (replaced by 0 before indexing).
        """
        emissions, mask = self._prepare(emissions, tags, mask)
        start, end, trans = self._scores(emissions.dtype)
        tags = tags.long().masked_fill(~mask, 0)  # (B, T): padded tags made valid indices
        emit = emissions.gather(2, tags.unsqueeze(-1)).squeeze(-1)  # (B, T): e_t(y_t)
        step = trans[tags[:, :-1], tags[:, 1:]]  # (B, T-1): trans[y_{t-1}, y_t]
        lengths = mask.long().sum(dim=1)  # (B,)
        last = tags.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)  # (B,): y_L
        emit = torch.where(mask, emit, torch.zeros_like(emit))  # (B, T)
        step = torch.where(mask[:, 1:], step, torch.zeros_like(step))  # (B, T-1)
        return start[tags[:, 0]] + emit.sum(dim=1) + step.sum(dim=1) + end[last]  # (B,)

    def log_partition(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        """log Z(x) (B,) by the forward algorithm in log space:
        α_1 = start + e_1;  α_t(j) = logsumexp_i(α_{t-1}(i) + trans[i, j]) + e_t(j);
        log Z = logsumexp_j(α_L(j) + end[j]). Padded steps carry α through unchanged.
        """
        emissions, mask = self._prepare(emissions, None, mask)
        start, end, trans = self._scores(emissions.dtype)
        alpha = start + emissions[:, 0]  # (B, K)
        for t in range(1, emissions.shape[1]):
            nxt = torch.logsumexp(alpha.unsqueeze(2) + trans, dim=1) + emissions[:, t]  # (B, K)
            alpha = torch.where(mask[:, t].unsqueeze(1), nxt, alpha)  # (B, K)
        return torch.logsumexp(alpha + end, dim=1)  # (B,)

    def nll(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None,
            reduction: str = "mean") -> Tensor:
        """Negative log-likelihood log Z(x) − score(x, y), reduced over the batch.

        ``reduction``: "none" → (B,); "sum" → Σ_b; "mean" → Σ_b / B (per sentence);
        "token_mean" → Σ_b / (number of real positions), the ``torchcrf`` convention (its
        log-likelihood is exactly −nll for every reduction).
        """
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
        _, bool_mask = self._prepare(emissions, tags, mask)
        per_row = self.log_partition(emissions, bool_mask) - self.score(emissions, tags, bool_mask)  # (B,)
        if reduction == "none":
            return per_row  # (B,)
        if reduction == "sum":
            return per_row.sum()  # ()
        if reduction == "mean":
            return per_row.mean()  # ()
        return per_row.sum() / bool_mask.sum().clamp(min=1).to(per_row.dtype)  # ()

    def forward(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None,
                reduction: str = "mean") -> Tensor:
        """Same as :meth:`nll` (so the CRF is a loss module: ``crf(emissions, tags, mask)``)."""
        return self.nll(emissions, tags, mask, reduction)

    # ------------------------------------------------------------------ decoding

    def viterbi(self, emissions: Tensor, mask: Tensor | None = None,
                pad_value: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
        """Best paths (B, T) (``pad_value`` at padded positions) and their scores (B,), no host sync.

        δ_1 = start + e_1;  δ_t(j) = max_i(δ_{t-1}(i) + trans[i, j]) + e_t(j), remembering the
        argmax i as back-pointer ψ_t(j); the last tag is argmax_j(δ_L(j) + end[j]), then
        y_{t-1} = ψ_t(y_t) walking back. The walk is vectorised: every row starts at its own last
        position L−1 and follows back-pointers only at its real steps.
        """
        emissions, mask = self._prepare(emissions, None, mask)
        start, end, trans = self._scores(emissions.dtype)
        B, T, _ = emissions.shape
        delta = start + emissions[:, 0]  # (B, K)
        backpointers = []
        for t in range(1, T):
            best, arg = (delta.unsqueeze(2) + trans).max(dim=1)  # (B, K), (B, K)
            backpointers.append(arg)
            delta = torch.where(mask[:, t].unsqueeze(1), best + emissions[:, t], delta)  # (B, K)
        best_score, last_tag = (delta + end).max(dim=1)  # (B,), (B,)
        lengths = mask.long().sum(dim=1)  # (B,)
        path = torch.full((B, T), pad_value, dtype=torch.long, device=emissions.device)  # (B, T)
        tag = last_tag  # (B,)
        for t in range(T - 1, -1, -1):
            if t < T - 1:
                prev = backpointers[t].gather(1, tag.unsqueeze(1)).squeeze(1)  # (B,): ψ_{t+1}(y_{t+1})
                tag = torch.where(lengths - 1 == t, last_tag, prev)  # (B,)
            path[:, t] = torch.where(t < lengths, tag, torch.full_like(tag, pad_value))  # (B,)
        return path, best_score

    def decode(self, emissions: Tensor, mask: Tensor | None = None) -> list[list[int]]:
        """Viterbi paths as one list of tags per row, each of that row's length (validates first)."""
        self.validate(emissions, None, mask)
        path, _ = self.viterbi(emissions, mask)
        lengths = (torch.ones_like(path, dtype=torch.bool) if mask is None else mask.bool()).sum(dim=1)
        return [row[:n] for row, n in zip(path.tolist(), lengths.tolist(), strict=True)]
