"""The book's models, one file per model: ``transformer`` (the Chapter 05 encoder-decoder),
``char_lm`` (the Chapter 05 character LM), ``gpt`` (Chapter 06), ``bert`` (Chapter 07), ``t5`` (Chapter 08), and Chapter 04's position probe
(``probes``). All follow one contract
(:mod:`~scratchlm.models.outputs`, :class:`~scratchlm.models.base.PreTrainedModel`)."""

from .base import PreTrainedModel, sequence_mean_cross_entropy, shift_right, token_cross_entropy
from .bert import BertConfig, BertForPreTraining, BertModel, BertPreTrainingOutput
from .char_lm import CharLM, CharLMRun, LayerGradNorms, train_char_lm
from .gpt import GPT, GPTConfig
from .outputs import ModelOutput
from .probes import OrderProbe, order_task_batch, with_swapped_twins
from .t5 import T5, T5Config
from .transformer import EncoderDecoderConfig, EncoderDecoderTransformer

__all__ = [
    "GPT",
    "T5",
    "BertConfig",
    "BertForPreTraining",
    "BertModel",
    "BertPreTrainingOutput",
    "CharLM",
    "CharLMRun",
    "EncoderDecoderConfig",
    "EncoderDecoderTransformer",
    "GPTConfig",
    "LayerGradNorms",
    "ModelOutput",
    "OrderProbe",
    "PreTrainedModel",
    "T5Config",
    "sequence_mean_cross_entropy",
    "order_task_batch",
    "shift_right",
    "token_cross_entropy",
    "train_char_lm",
    "with_swapped_twins",
]
