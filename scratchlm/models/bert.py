"""BERT: a post-LN Transformer encoder pretrained with masked LM + next-sentence prediction.

Introduced in Chapter 07 (pretraining); Chapter 09 loads real Hugging Face weights into it.

    input_ids, token_type_ids (B, T)
      -> E_word[x] + E_pos[t] + E_type[s] -> LayerNorm -> Dropout                   (B, T, C)
      -> N x post-LN EncoderLayer (GELU FFN)                                           (B, T, C)
      -> pooler: tanh(W_p h_[CLS] + b_p)                                               (B, C)
    heads:  MLM   logits = LayerNorm(GELU(W_t h + b_t)) E_wordᵀ + b                    (B, T, V)
            NSP   logits = W_s pooled + b_s                                             (B, 2)
    L = L_MLM + L_NSP,  L_MLM = mean over masked positions of -log p(x_i | x̃),
                        L_NSP = -log p(IsNext/NotNext | pooled)                         (Devlin et al., 2019)

Design: the transformer layers *are* Chapter 05's :class:`~scratchlm.layers.EncoderLayer` (post-LN,
``activation="gelu"``) — no second implementation of attention or of the block. Everything above
the layers carries the Hugging Face names (``embeddings.word_embeddings``, ``pooler.dense``,
``cls.predictions.transform.dense``, ...); inside a layer the names are Chapter 05's
(``self_attn.q_proj``, ``ffn.linear1``, ``norm1``...) and :data:`HF_LAYER_NAME_MAP` (eight lines)
translates ``attention.self.query`` & co. Why this over HF-named wrapper modules: wrappers would
need their own forward (a second copy of the block that Chapter 05 tests against
``nn.TransformerEncoderLayer``), while a name map is data, is shown in the chapter, and keeps the
adapter hook points Chapter 10 plugs into. Differences from HF that vanish in eval mode: none in
the layout; HF BERT has no dropout on the FFN hidden units and neither have we.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..constants import IGNORE_INDEX
from ..errors import CheckpointError
from ..layers import ACTIVATIONS, Encoder, LayerNorm
from .base import PreTrainedModel, build_config, check_ids_tensor, check_same_shape, token_cross_entropy
from .outputs import ModelOutput

# Our field name -> Hugging Face BertConfig / config.json field name.
HF_CONFIG_NAMES = {
    "vocab_size": "vocab_size", "d_model": "hidden_size", "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads", "d_ff": "intermediate_size", "activation": "hidden_act",
    "dropout": "hidden_dropout_prob", "attention_dropout": "attention_probs_dropout_prob",
    "max_positions": "max_position_embeddings", "type_vocab_size": "type_vocab_size",
    "norm_eps": "layer_norm_eps", "initializer_range": "initializer_range", "pad_id": "pad_token_id",
}


@dataclass
class BertConfig:
    """BERT sizes; ``BertConfig.from_hf`` reads a Hugging Face ``config.json`` (see HF_CONFIG_NAMES)."""

    vocab_size: int = 30522  # V: WordPiece vocabulary size
    d_model: int = 768  # C: width of the residual stream (HF: hidden_size)
    n_layers: int = 12  # N: encoder layers (HF: num_hidden_layers)
    n_heads: int = 12  # H: heads per layer; must divide d_model
    d_ff: int = 3072  # FFN hidden width (4·C) (HF: intermediate_size)
    activation: str = "gelu"  # FFN and MLM-transform non-linearity (exact erf GELU) (HF: hidden_act)
    dropout: float = 0.1  # dropout on embeddings and sublayer outputs (HF: hidden_dropout_prob)
    attention_dropout: float = 0.1  # dropout on attention weights (HF: attention_probs_dropout_prob)
    max_positions: int = 512  # rows of the learned position table (HF: max_position_embeddings)
    type_vocab_size: int = 2  # segment ids: 0 for sentence A, 1 for sentence B
    norm_eps: float = 1e-12  # ε of every LayerNorm (BERT uses 1e-12)
    initializer_range: float = 0.02  # std of the normal initialisation of weights
    pad_id: int = 0  # id of [PAD]

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_positions", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"BertConfig.{name} must be a positive int; got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"BertConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"BertConfig.activation must be one of {sorted(ACTIVATIONS)}; got {self.activation!r}")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"BertConfig.{name} must be in [0, 1); got {getattr(self, name)!r}")

    @classmethod
    def from_hf(cls, data: dict, path: str = "config.json") -> BertConfig:
        """From a Hugging Face ``config.json`` dict (unknown keys are ignored)."""
        if data.get("model_type", "bert") != "bert" or data.get("position_embedding_type", "absolute") != "absolute":
            raise CheckpointError(path, f"expected a BERT config with absolute positions; got model_type="
                                        f"{data.get('model_type')!r}, position_embedding_type="
                                        f"{data.get('position_embedding_type')!r}")
        return cls(**{ours: data[theirs] for ours, theirs in HF_CONFIG_NAMES.items() if theirs in data})

    def to_hf(self) -> dict[str, Any]:
        return {theirs: getattr(self, ours) for ours, theirs in HF_CONFIG_NAMES.items()}


class BertEmbeddings(nn.Module):
    """E_word[x] + E_pos[t] + E_type[s], then LayerNorm and dropout. Introduced in Chapter 07."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.d_model)  # learned, one per position
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.d_model)
        self.LayerNorm = LayerNorm(cfg.d_model, cfg.norm_eps)  # HF name, capital L
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        T = input_ids.shape[1]
        x = self.word_embeddings(input_ids)  # (B, T, C)
        x = x + self.position_embeddings.weight[:T]  # (B, T, C) + (T, C): positions 0..T-1
        x = x + self.token_type_embeddings(token_type_ids)  # (B, T, C)
        return self.dropout(self.LayerNorm(x))  # (B, T, C)


class BertPooler(nn.Module):
    """pooled = tanh(W_p h_[CLS] + b_p): the sentence vector NSP and classifiers read. Chapter 07."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, C) from the [CLS] position


def _init_bert(module: nn.Module, std: float) -> None:
    """BERT's init: N(0, std²) for every matrix and embedding, zero biases (and the padding row)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, 0.0, std)
        if module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()


class _BertBase(PreTrainedModel):
    """Loading, saving and input limits shared by :class:`BertModel` and :class:`BertForPreTraining`."""

    config_class = BertConfig
    required_hf_fields = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                          "intermediate_size")
    prefix = ""  # where the encoder's names start in our state dict ("bert." for the pretraining model)

    def input_limits(self) -> dict[str, int]:
        c = self.config
        return {"input_ids": c.vocab_size, "labels": c.vocab_size, "token_type_ids": c.type_vocab_size,
                "max_length": c.max_positions}

    def config_to_hf(self) -> dict[str, Any]:
        arch = "BertForPreTraining" if self.prefix else "BertModel"
        return {"model_type": "bert", "architectures": [arch], "position_embedding_type": "absolute",
                **self.config.to_hf(), "scratchlm": {"model": type(self).__name__, **asdict(self.config)}}

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any], path: str, **overrides) -> BertConfig:
        return build_config(BertConfig, asdict(BertConfig.from_hf(hf, path)), overrides, path)

    def hf_state_dict(self) -> dict[str, Tensor]:
        aliases = self._tied_aliases()
        return {scratchlm_to_hf_name(k): v for k, v in self.state_dict().items() if k not in aliases}

    def load_hf_state_dict(self, tensors: dict[str, Tensor]) -> None:
        load_hf_state_dict(self, tensors)


class BertModel(_BertBase):
    """The BERT encoder: embeddings, N post-LN layers, pooler. Introduced in Chapter 07."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__(cfg)
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = Encoder(cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_ff, dropout=cfg.dropout,
                               activation=cfg.activation, norm_first=False, layer_norm_eps=cfg.norm_eps,
                               attention_dropout=cfg.attention_dropout, ffn_hidden_dropout=False)
        self.pooler = BertPooler(cfg)
        self.apply(lambda m: _init_bert(m, cfg.initializer_range))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, *, output_attentions: bool = False,
                output_hidden_states: bool = False) -> ModelOutput:
        """input_ids (B, T); attention_mask (B, T) 1 = token, 0 = padding; token_type_ids (B, T) 0/1.

        Returns ``last_hidden_state`` (B, T, C) and ``pooler_output`` (B, C) (and every layer's
        attention weights (B, H, T, T) / outputs when asked).
        """
        check_ids_tensor("input_ids", input_ids)
        T = input_ids.shape[1]
        if T > self.config.max_positions:
            raise ValueError(f"sequence length {T} exceeds max_positions={self.config.max_positions}")
        check_same_shape("attention_mask", attention_mask, input_ids)
        check_same_shape("token_type_ids", token_type_ids, input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)  # (B, T) everything is sentence A
        padding = None if attention_mask is None else attention_mask == 0  # (B, T) True = padding
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, C)
        out = self.encoder(x, key_padding_mask=padding, output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states)
        h = out if isinstance(out, Tensor) else out.last_hidden_state  # (B, T, C)
        return ModelOutput(last_hidden_state=h, pooler_output=self.pooler(h),
                           hidden_states=None if isinstance(out, Tensor) else out.hidden_states,
                           attentions=None if isinstance(out, Tensor) else out.attentions)


class BertPredictionHeadTransform(nn.Module):
    """h -> LayerNorm(GELU(W_t h + b_t)), the MLM head's extra layer (HF name ``transform``)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.act = ACTIVATIONS[cfg.activation]
        self.LayerNorm = LayerNorm(cfg.d_model, cfg.norm_eps)

    def forward(self, h: Tensor) -> Tensor:
        return self.LayerNorm(self.act(self.dense(h)))  # (..., C)


class BertLMPredictionHead(nn.Module):
    """MLM logits = transform(h) E_wordᵀ + b: ``decoder`` is an nn.Linear whose weight *is* the word
    embedding matrix (tied, as in HF), so wrappers of Linear layers see it too."""

    def __init__(self, cfg: BertConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(cfg)
        self.decoder = nn.Linear(cfg.d_model, cfg.vocab_size)  # b: one bias per vocabulary entry
        self.decoder.weight = word_embeddings.weight  # (V, C), shared

    def forward(self, h: Tensor) -> Tensor:
        return self.decoder(self.transform(h))  # (..., V)


class BertPreTrainingHeads(nn.Module):
    """HF ``cls``: ``predictions`` (MLM) and ``seq_relationship`` (NSP, 2 classes)."""

    def __init__(self, cfg: BertConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(cfg, word_embeddings)
        self.seq_relationship = nn.Linear(cfg.d_model, 2)  # logits (IsNext, NotNext)


@dataclass
class BertPreTrainingOutput(ModelOutput):
    """:class:`ModelOutput` (``logits`` = MLM logits (B, T, V)) plus the NSP head and the two loss parts."""

    nsp_logits: Tensor | None = None  # (B, 2)
    mlm_loss: Tensor | None = None  # mean -log p over masked positions
    nsp_loss: Tensor | None = None  # mean -log p of the right IsNext/NotNext label


class BertForPreTraining(_BertBase):
    """BERT with the MLM and NSP heads. Introduced in Chapter 07."""

    prefix = "bert."

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__(cfg)
        self.bert = BertModel(cfg)
        self.cls = BertPreTrainingHeads(cfg, self.bert.embeddings.word_embeddings)
        for module in self.cls.modules():  # not the decoder: its weight is the (initialised) embedding
            if module is not self.cls.predictions.decoder:
                _init_bert(module, cfg.initializer_range)
        nn.init.zeros_(self.cls.predictions.decoder.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, labels: Tensor | None = None,
                next_sentence_label: Tensor | None = None, *, logits_only_at_labels: bool = False,
                output_attentions: bool = False, output_hidden_states: bool = False) -> BertPreTrainingOutput:
        """``labels`` (B, T): original ids at masked positions, -100 elsewhere; ``next_sentence_label``
        (B,): 0 IsNext, 1 NotNext. With ``logits_only_at_labels`` the V-way decoder runs only at the
        ~15 % labelled positions (same loss, ~7x less work in the largest matmul; ``logits`` is None).
        That option selects positions by value, so it reads the labels on the host: leave it off
        where forward must compile into one graph."""
        out = self.bert(input_ids, attention_mask, token_type_ids, output_attentions=output_attentions,
                        output_hidden_states=output_hidden_states)
        h = out.last_hidden_state  # (B, T, C)
        nsp_logits = self.cls.seq_relationship(out.pooler_output)  # (B, 2)
        logits = mlm_loss = nsp_loss = loss = None
        check_same_shape("labels", labels, input_ids)
        if labels is not None and logits_only_at_labels:
            selected = labels != IGNORE_INDEX  # (B, T)
            mlm_loss = token_cross_entropy(self.cls.predictions(h[selected]), labels[selected])  # (M, V) rows
        else:
            logits = self.cls.predictions(h)  # (B, T, V)
            if labels is not None:
                mlm_loss = token_cross_entropy(logits, labels)
        if next_sentence_label is not None:
            nsp_loss = F.cross_entropy(nsp_logits, next_sentence_label)
        parts = [p for p in (mlm_loss, nsp_loss) if p is not None]
        loss = sum(parts[1:], parts[0]) if parts else None
        return BertPreTrainingOutput(logits=logits, loss=loss, last_hidden_state=h, pooler_output=out.pooler_output,
                                     hidden_states=out.hidden_states, attentions=out.attentions,
                                     nsp_logits=nsp_logits, mlm_loss=mlm_loss, nsp_loss=nsp_loss)

    def validate_inputs(self, batch) -> None:
        super().validate_inputs(batch)
        nsp = batch.get("next_sentence_label") if isinstance(batch, dict) else None
        if nsp is not None and (nsp.dtype != torch.int64 or not bool(((nsp == 0) | (nsp == 1)).all())):
            raise ValueError(f"next_sentence_label must be int64 0 (IsNext) or 1 (NotNext); got {nsp.dtype} "
                             f"{nsp.unique()[:5].tolist()}")


# ---------------------------------------------------------------------------------------------
# Hugging Face checkpoints: a name map
# ---------------------------------------------------------------------------------------------
HF_LAYER_NAME_MAP: dict[str, str] = {  # inside encoder.layer.N: Hugging Face name -> Chapter 05 name
    "attention.self.query": "self_attn.q_proj",
    "attention.self.key": "self_attn.k_proj",
    "attention.self.value": "self_attn.v_proj",
    "attention.output.dense": "self_attn.out_proj",
    "attention.output.LayerNorm": "norm1",
    "intermediate.dense": "ffn.linear1",
    "output.dense": "ffn.linear2",
    "output.LayerNorm": "norm2",
}
_HF_LAYER = re.compile(r"^(.*)encoder\.layer\.(\d+)\.(.+)\.(weight|bias|gamma|beta)$")
_OUR_LAYER = re.compile(r"^(.*)encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_SKIP = ("position_ids", "cls.predictions.decoder.weight")  # a buffer; the tied decoder = word embeddings


def hf_to_scratchlm_name(name: str) -> str | None:
    """Translate one Hugging Face BERT parameter name to ours; None for names we do not store."""
    if name.endswith(_SKIP):
        return None
    name = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", name))  # TF-era checkpoints
    if name.endswith("cls.predictions.bias"):
        return name.replace("cls.predictions.bias", "cls.predictions.decoder.bias")
    m = _HF_LAYER.match(name)
    if m:
        prefix, index, module, kind = m.groups()
        if module not in HF_LAYER_NAME_MAP:
            raise KeyError(f"unknown BERT layer parameter {name!r}")
        return f"{prefix}encoder.layers.{index}.{HF_LAYER_NAME_MAP[module]}.{kind}"
    return name


def scratchlm_to_hf_name(name: str) -> str:
    """The inverse map: our parameter name -> the Hugging Face BERT name."""
    if name.endswith("cls.predictions.decoder.bias"):
        return name.replace("cls.predictions.decoder.bias", "cls.predictions.bias")
    m = _OUR_LAYER.match(name)
    if m:
        prefix, index, module, kind = m.groups()
        inverse = {v: k for k, v in HF_LAYER_NAME_MAP.items()}
        return f"{prefix}encoder.layer.{index}.{inverse[module]}.{kind}"
    return name


def load_hf_state_dict(model: BertModel | BertForPreTraining, hf_state: dict[str, Tensor]) -> list[str]:
    """Copy a Hugging Face BERT state dict into ``model`` by name; return the HF names not used.

    Works for ``BertModel`` checkpoints (no ``bert.`` prefix) and ``BertForPreTraining`` ones, in
    either direction where it makes sense (a pretraining checkpoint loads into a ``BertModel``; its
    heads are then unused). Every parameter of ``model`` must be found and every shape must match.
    """
    ours = {k for k in model.state_dict() if k not in model._tied_aliases()}
    wants_prefix = isinstance(model, BertForPreTraining)
    translated: dict[str, Tensor] = {}
    unused = []
    for name, tensor in hf_state.items():
        new = hf_to_scratchlm_name(name)
        if new is None:
            continue
        has_prefix = new.startswith("bert.")
        if wants_prefix and not has_prefix and not new.startswith("cls."):
            new = "bert." + new
        elif not wants_prefix and has_prefix:
            new = new[len("bert."):]
        if new not in ours:
            unused.append(name)
            continue
        translated[new] = tensor
    if wants_prefix and "cls.predictions.decoder.bias" not in translated:
        unused_bias = hf_state.get("cls.predictions.decoder.bias")
        if unused_bias is not None:
            translated["cls.predictions.decoder.bias"] = unused_bias
    model._load_mapped(translated)
    return unused
