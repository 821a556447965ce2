"""Fine-tuning (Chapter 09): task data, batching, freezing strategies, evaluation.

- :mod:`~scratchlm.finetune.data` — :class:`TaskData` and the generic builders (text / pair /
  tagging) through 🤗 ``datasets``, with their checks.
- :mod:`~scratchlm.finetune.tasks` — SMS spam (Raschka's balanced protocol, or the full data),
  STS-B (cross- or bi-encoder), UD English EWT POS.
- :mod:`~scratchlm.finetune.batching` — dynamic padding, length bucketing, a pure ``get_batch``.
- :mod:`~scratchlm.finetune.freezing` — linear probe, top-k, full, gradual unfreezing, layer-wise
  learning-rate decay: :func:`configure_finetuning`.
- :mod:`~scratchlm.finetune.evaluate` — predictions, task metrics, :func:`finetune` (train + evaluate).
"""

from .batching import (
    bucketed_batches,
    collate_rows,
    make_task_get_batch,
    padding_share,
    random_batches,
    sorted_batches,
)
from .data import KINDS, TaskData, align_first_subword, check_task_fits, pair_task, tagging_task, text_task
from .evaluate import (
    FinetuneResult,
    evaluate_task,
    finetune,
    gold,
    model_loss,
    predict,
    tag_bigrams,
    unseen_transition_share,
)
from .freezing import STRATEGIES, EncoderBlocks, FinetunePlan, configure_finetuning, encoder_blocks
from .tasks import RASBT_SEED, SMS_LABELS, rasbt_balanced_split, sms_spam_task, stsb_task, ud_pos_task

__all__ = [
    "STRATEGIES",
    "EncoderBlocks",
    "FinetunePlan",
    "FinetuneResult",
    "configure_finetuning",
    "encoder_blocks",
    "evaluate_task",
    "finetune",
    "gold",
    "model_loss",
    "predict",
    "tag_bigrams",
    "unseen_transition_share",
    "KINDS",
    "RASBT_SEED",
    "SMS_LABELS",
    "TaskData",
    "align_first_subword",
    "bucketed_batches",
    "check_task_fits",
    "collate_rows",
    "make_task_get_batch",
    "padding_share",
    "pair_task",
    "random_batches",
    "rasbt_balanced_split",
    "sms_spam_task",
    "sorted_batches",
    "stsb_task",
    "tagging_task",
    "text_task",
    "ud_pos_task",
]
