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

Design: the transformer layers *are* Chapter 05's :class:`scratchlm.layers.EncoderLayer` (post-LN,
``activation="gelu"``) — no second implementation of attention or of the block. Everything above
the layers carries the Hugging Face names (``embeddings.word_embeddings``, ``pooler.dense``,
``cls.predictions.transform.dense``, ...); inside a layer the names are Chapter 05's
(``self_attn.q_proj``, ``ffn.linear1``, ``norm1``...) and :data:`HF_LAYER_NAME_MAP` (eight lines)
translates ``attention.self.query`` & co. Why this over HF-named wrapper modules: wrappers would
need their own forward (a second copy of the block that Chapter 05 tests against
``nn.TransformerEncoderLayer``), while a name map is data, is shown in the chapter, and keeps the
adapter slots Chapter 10 plugs into. Differences from HF that vanish in eval mode: the FFN applies
dropout to its hidden units (as ``nn.TransformerEncoderLayer`` does); HF BERT does not.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..constants import IGNORE_INDEX
from ..layers.blocks import EncoderLayer
from ..layers.feedforward import ACTIVATIONS
from ..layers.norms import LayerNorm
from ..layers.positional import LearnedPositionalEmbedding


@dataclass
class BertConfig:
    """BERT sizes. Field names are those of Hugging Face's ``BertConfig`` / ``config.json``."""

    vocab_size: int = 30522  # V: WordPiece vocabulary size
    hidden_size: int = 768  # C: width of the residual stream
    num_hidden_layers: int = 12  # N: encoder layers
    num_attention_heads: int = 12  # H: heads per layer; must divide hidden_size
    intermediate_size: int = 3072  # FFN hidden width (4·C)
    hidden_act: str = "gelu"  # FFN and MLM-transform non-linearity (exact erf GELU)
    hidden_dropout_prob: float = 0.1  # dropout on embeddings and sublayer outputs
    attention_probs_dropout_prob: float = 0.1  # dropout on attention weights
    max_position_embeddings: int = 512  # rows of the learned position table
    type_vocab_size: int = 2  # segment ids: 0 for sentence A, 1 for sentence B
    layer_norm_eps: float = 1e-12  # ε of every LayerNorm (BERT uses 1e-12)
    initializer_range: float = 0.02  # std of the normal initialisation of weights
    pad_token_id: int = 0  # id of [PAD]

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"BertConfig.{name} must be a positive int; got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"BertConfig.hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"BertConfig.hidden_act must be one of {sorted(ACTIVATIONS)}; got {self.hidden_act!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"BertConfig.{name} must be in [0, 1); got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, data: dict) -> BertConfig:
        """Build from a Hugging Face ``config.json`` dict (unknown keys are ignored)."""
        if data.get("model_type", "bert") != "bert" or data.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"expected a BERT config with absolute positions; got model_type="
                             f"{data.get('model_type')!r}, position_embedding_type={data.get('position_embedding_type')!r}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class BertEmbeddings(nn.Module):
    """E_word[x] + E_pos[t] + E_type[s], then LayerNorm and dropout. Introduced in Chapter 07."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = LearnedPositionalEmbedding(cfg.max_position_embeddings, cfg.hidden_size,
                                                              init_std=cfg.initializer_range)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)  # HF name, capital L
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        T = input_ids.shape[1]
        positions = torch.arange(T, device=input_ids.device)  # (T,)
        x = self.word_embeddings(input_ids)  # (B, T, C)
        x = x + self.position_embeddings(positions)  # (B, T, C) + (T, C)
        x = x + self.token_type_embeddings(token_type_ids)  # (B, T, C)
        return self.dropout(self.LayerNorm(x))  # (B, T, C)


class BertEncoder(nn.Module):
    """``layer``: a list of Chapter 05 post-LN encoder layers (HF's attribute name)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList([
            EncoderLayer(cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size,
                         dropout=cfg.hidden_dropout_prob, activation=cfg.hidden_act, norm_first=False,
                         layer_norm_eps=cfg.layer_norm_eps)
            for _ in range(cfg.num_hidden_layers)
        ])
        for layer in self.layer:  # attention-weight dropout has its own rate in BERT
            layer.self_attn.dropout = cfg.attention_probs_dropout_prob


class BertPooler(nn.Module):
    """pooled = tanh(W_p h_[CLS] + b_p): the sentence vector NSP and classifiers read. Chapter 07."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, C) from the [CLS] position


@dataclass
class BertOutput:
    """What :class:`BertModel` returns."""

    last_hidden_state: Tensor  # (B, T, C)
    pooler_output: Tensor  # (B, C)
    attentions: list[Tensor] | None = None  # per layer (B, H, T, T) when need_weights=True


class BertModel(nn.Module):
    """The BERT encoder: embeddings, N post-LN layers, pooler. Introduced in Chapter 07."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        if not isinstance(cfg, BertConfig):
            raise TypeError(f"BertModel expects a BertConfig; got {type(cfg).__name__}")
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.pooler = BertPooler(cfg)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range  # BERT: N(0, 0.02²) for every matrix, zero biases
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()

    def _check_inputs(self, input_ids: Tensor, token_type_ids: Tensor | None,
                      attention_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if not isinstance(input_ids, Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"input_ids must be an int64 tensor of shape (B, T); got "
                            f"{getattr(input_ids, 'dtype', type(input_ids).__name__)}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (B, T); got {tuple(input_ids.shape)}")
        T = input_ids.shape[1]
        if T > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {T} exceeds max_position_embeddings={self.config.max_position_embeddings}")
        if int(input_ids.max()) >= self.config.vocab_size or int(input_ids.min()) < 0:
            raise ValueError(f"input_ids must lie in [0, vocab_size={self.config.vocab_size}); got "
                             f"{int(input_ids.min())}..{int(input_ids.max())}")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)  # (B, T) everything is sentence A
        elif token_type_ids.shape != input_ids.shape:
            raise ValueError(f"token_type_ids must have shape {tuple(input_ids.shape)}; got {tuple(token_type_ids.shape)}")
        padding = None
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"attention_mask must have shape {tuple(input_ids.shape)}; "
                                 f"got {tuple(attention_mask.shape)}")
            padding = attention_mask == 0  # (B, T) True = padding, the EncoderLayer convention
        return token_type_ids, padding

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, *, need_weights: bool = False) -> BertOutput:
        """input_ids (B, T); token_type_ids (B, T) of 0/1; attention_mask (B, T) 1 = token, 0 = padding.

        ``need_weights=True`` also returns every layer's attention weights (B, H, T, T) (for plots):
        each layer's attention is re-run on the reference path for its weights.
        """
        token_type_ids, padding = self._check_inputs(input_ids, token_type_ids, attention_mask)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, C)
        attentions = [] if need_weights else None
        for layer in self.encoder.layer:
            if need_weights:  # post-LN: the attention sublayer sees the layer input x itself
                _, w = layer.self_attn(x, key_padding_mask=padding, need_weights=True)
                attentions.append(w)  # (B, H, T, T)
            x = layer(x, key_padding_mask=padding)  # (B, T, C)
        return BertOutput(x, self.pooler(x), attentions)


class BertPredictionHeadTransform(nn.Module):
    """h -> LayerNorm(GELU(W_t h + b_t)), the MLM head's extra layer (HF name ``transform``)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.LayerNorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, h: Tensor) -> Tensor:
        return self.LayerNorm(self.act(self.dense(h)))  # (..., C)


class BertLMPredictionHead(nn.Module):
    """MLM logits = transform(h) E_wordᵀ + b: the decoder matrix *is* the word embedding (tied)."""

    def __init__(self, cfg: BertConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(cfg)
        self.word_embeddings = [word_embeddings]  # a list, so it is not registered twice
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))  # b: one bias per vocabulary entry

    def forward(self, h: Tensor) -> Tensor:
        return F.linear(self.transform(h), self.word_embeddings[0].weight, self.bias)  # (..., V)


class BertPreTrainingHeads(nn.Module):
    """HF ``cls``: ``predictions`` (MLM) and ``seq_relationship`` (NSP, 2 classes)."""

    def __init__(self, cfg: BertConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(cfg, word_embeddings)
        self.seq_relationship = nn.Linear(cfg.hidden_size, 2)  # logits (IsNext, NotNext)


@dataclass
class BertPreTrainingOutput:
    """What :class:`BertForPreTraining` returns; losses are None without labels."""

    prediction_logits: Tensor | None  # (B, T, V), or None when only the loss was asked for
    seq_relationship_logits: Tensor  # (B, 2)
    loss: Tensor | None = None  # L_MLM + L_NSP
    mlm_loss: Tensor | None = None  # mean -log p over masked positions
    nsp_loss: Tensor | None = None  # mean -log p of the right IsNext/NotNext label
    attentions: list[Tensor] | None = None


class BertForPreTraining(nn.Module):
    """BERT with the MLM and NSP heads. Introduced in Chapter 07."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.bert = BertModel(cfg)
        self.cls = BertPreTrainingHeads(cfg, self.bert.embeddings.word_embeddings)
        self.cls.apply(self.bert._init_weights)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, labels: Tensor | None = None,
                next_sentence_label: Tensor | None = None, *, logits_only_at_labels: bool = False,
                need_weights: bool = False) -> BertPreTrainingOutput:
        """``labels`` (B, T): original ids at masked positions, -100 elsewhere; ``next_sentence_label``
        (B,): 0 IsNext, 1 NotNext. With ``logits_only_at_labels`` the V-way decoder runs only at the
        ~15 % labelled positions (same loss, ~7x less work in the largest matmul) and
        ``prediction_logits`` is None."""
        out = self.bert(input_ids, token_type_ids, attention_mask, need_weights=need_weights)
        h = out.last_hidden_state  # (B, T, C)
        nsp_logits = self.cls.seq_relationship(out.pooler_output)  # (B, 2)
        logits = None
        mlm_loss = nsp_loss = loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(f"labels must have shape {tuple(input_ids.shape)}; got {tuple(labels.shape)}")
            selected = labels != IGNORE_INDEX  # (B, T)
            if logits_only_at_labels:
                masked_logits = self.cls.predictions(h[selected])  # (M, V) only the masked positions
                mlm_loss = F.cross_entropy(masked_logits, labels[selected])
            else:
                logits = self.cls.predictions(h)  # (B, T, V)
                mlm_loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
            loss = mlm_loss
        elif not logits_only_at_labels:
            logits = self.cls.predictions(h)  # (B, T, V)
        if next_sentence_label is not None:
            nsp_loss = F.cross_entropy(nsp_logits, next_sentence_label)
            loss = nsp_loss if loss is None else loss + nsp_loss
        return BertPreTrainingOutput(logits, nsp_logits, loss, mlm_loss, nsp_loss, out.attentions)


# ---------------------------------------------------------------------------------------------
# Loading Hugging Face checkpoints: a name map
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
_LAYER_RE = re.compile(r"^(.*encoder\.layer\.\d+\.)(.+)\.(weight|bias|gamma|beta)$")
_SKIP = ("position_ids", "cls.predictions.decoder.weight")  # a buffer; the tied decoder = word embeddings


def hf_to_scratchlm_name(name: str) -> str | None:
    """Translate one Hugging Face BERT parameter name to ours; None for names we do not store."""
    if any(name.endswith(s) for s in _SKIP):
        return None
    name = name.replace(".gamma", ".weight").replace(".beta", ".bias")  # TF-era checkpoints
    if name.endswith("cls.predictions.decoder.bias"):
        return name.replace("cls.predictions.decoder.bias", "cls.predictions.bias")
    m = _LAYER_RE.match(name)
    if m:
        prefix, module, kind = m.groups()
        if module not in HF_LAYER_NAME_MAP:
            raise KeyError(f"unknown BERT layer parameter {name!r}")
        return f"{prefix}{HF_LAYER_NAME_MAP[module]}.{kind.replace('gamma', 'weight').replace('beta', 'bias')}"
    return name


def load_hf_state_dict(model: BertModel | BertForPreTraining, hf_state: dict[str, Tensor]) -> list[str]:
    """Copy a Hugging Face BERT state dict into ``model`` by name; return the HF names not used.

    Works for ``BertModel`` checkpoints (no ``bert.`` prefix) and ``BertForPreTraining`` ones, in
    either direction where it makes sense. Every parameter of ``model`` must be found (a missing
    one raises), and every shape must match.
    """
    ours = model.state_dict()
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
        if ours[new].shape != tensor.shape:
            raise ValueError(f"shape mismatch for {name!r} -> {new!r}: checkpoint {tuple(tensor.shape)}, "
                             f"model {tuple(ours[new].shape)}")
        translated[new] = tensor
    missing = sorted(set(ours) - set(translated))
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} parameters of {type(model).__name__}, e.g. {missing[:4]}")
    model.load_state_dict(translated, strict=True)
    return unused


def from_pretrained(directory: str | Path, model_cls: type = BertModel) -> BertModel | BertForPreTraining:
    """Build ``model_cls`` from a local Hugging Face directory (``config.json`` + ``model.safetensors``).

    Only safetensors are read (never a pickled ``pytorch_model.bin``). Chapter 09 uses it for
    all-MiniLM-L6-v2.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    config_file, weights_file = directory / "config.json", directory / "model.safetensors"
    for f in (config_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"expected {f.name} in {directory} (a Hugging Face BERT checkpoint directory)")
    if model_cls not in (BertModel, BertForPreTraining):
        raise TypeError(f"model_cls must be BertModel or BertForPreTraining; got {model_cls!r}")
    cfg = BertConfig.from_dict(json.loads(config_file.read_text()))
    model = model_cls(cfg)
    load_hf_state_dict(model, load_file(str(weights_file)))
    return model.eval()
