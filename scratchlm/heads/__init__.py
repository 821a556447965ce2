"""Task heads for fine-tuning (Chapter 09): classification, regression, similarity, token tagging.

- :mod:`~scratchlm.heads.pooling` — one vector per sequence: cls, masked mean, last real token.
- :mod:`~scratchlm.heads.sequence` — ``SequenceClassifier`` (cross-entropy), ``SequenceRegressor``
  (MSE), ``BiEncoder`` (cosine similarity of two pooled sentences, MSE).
- :mod:`~scratchlm.heads.token` — ``TokenClassifier``: softmax or CRF over the labelled positions.
- :mod:`~scratchlm.heads.crf` — a linear-chain CRF: forward algorithm, Viterbi, constraints.

Every head wraps an encoder that follows the model contract and returns a ``ModelOutput``; value
checks live in each head's ``validate_inputs(batch)``, so ``forward`` never syncs with the host.
Introduced in Chapter 09.
"""

from .crf import CRF
from .pooling import POOLINGS, pool
from .sequence import BiEncoder, SequenceClassifier, SequenceRegressor
from .token import TokenClassifier, gather_labelled

__all__ = [
    "CRF",
    "POOLINGS",
    "BiEncoder",
    "SequenceClassifier",
    "SequenceRegressor",
    "TokenClassifier",
    "gather_labelled",
    "pool",
]
