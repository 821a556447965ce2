"""The book's models, one file per model: ``transformer`` (the Chapter 05 encoder-decoder),
``gpt`` (Chapter 06), ``bert`` (Chapter 07), ``t5`` (Chapter 08)."""

from .bert import BertConfig, BertForPreTraining, BertModel
from .gpt import GPT, GPTConfig
from .t5 import T5, T5Config
from .transformer import EncoderDecoderConfig, EncoderDecoderTransformer

__all__ = [
    "GPT",
    "T5",
    "BertConfig",
    "BertForPreTraining",
    "BertModel",
    "EncoderDecoderConfig",
    "EncoderDecoderTransformer",
    "GPTConfig",
    "T5Config",
]
