"""Tests for scratchlm.models.bert against Hugging Face transformers with shared weights."""

import json

import pytest
import torch
import torch.nn.functional as F

from scratchlm.errors import CheckpointError
from scratchlm.models.bert import (
    HF_LAYER_NAME_MAP,
    BertConfig,
    BertForPreTraining,
    BertModel,
    hf_to_scratchlm_name,
    load_hf_state_dict,
    scratchlm_to_hf_name,
)

transformers = pytest.importorskip("transformers")

HF_SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                max_position_embeddings=64, type_vocab_size=2)
SMALL = dict(vocab_size=99, d_model=32, n_layers=2, n_heads=4, d_ff=37, max_positions=64, type_vocab_size=2)


def _batch(seed=0, B=3, T=11, V=99):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (B, T), generator=g)  # (B, T)
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, T // 2:] = 1
    attn = torch.ones(B, T, dtype=torch.long)
    attn[1, 7:] = 0  # padded rows
    attn[2, 4:] = 0
    return ids, types, attn


@pytest.fixture(scope="module")
def hf_pretraining_dir(tmp_path_factory):
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(transformers.BertConfig(**HF_SMALL)).eval()
    with torch.no_grad():  # make biases and LayerNorm gains non-trivial so a misplaced one shows
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("hf_bert")
    hf.save_pretrained(path)
    return path, hf


def test_pretraining_logits_match_transformers(hf_pretraining_dir):
    path, hf = hf_pretraining_dir
    ours = BertForPreTraining.from_pretrained(path)
    ids, types, attn = _batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, token_type_ids=types, attention_mask=attn)
        out = ours(ids, attn, types)
    keep = attn.bool()  # HF and we both compute padded positions, but only real tokens matter
    torch.testing.assert_close(out.logits[keep], ref.prediction_logits[keep], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.nsp_logits, ref.seq_relationship_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_cls", [BertModel, BertForPreTraining])
def test_save_pretrained_loads_in_transformers_with_equal_outputs(model_cls, tmp_path):
    torch.manual_seed(4)
    ours = model_cls(BertConfig(**SMALL)).eval()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    ours.save_pretrained(tmp_path)
    ids, types, attn = _batch(seed=5)
    keep = attn.bool()
    with torch.no_grad():
        out = ours(ids, attn, types)
        if model_cls is BertModel:
            hf = transformers.BertModel.from_pretrained(tmp_path).eval()
            ref = hf(input_ids=ids, token_type_ids=types, attention_mask=attn)
            torch.testing.assert_close(out.last_hidden_state[keep], ref.last_hidden_state[keep], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out.pooler_output, ref.pooler_output, atol=1e-5, rtol=1e-5)
        else:
            hf = transformers.BertForPreTraining.from_pretrained(tmp_path).eval()
            ref = hf(input_ids=ids, token_type_ids=types, attention_mask=attn)
            torch.testing.assert_close(out.logits[keep], ref.prediction_logits[keep], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out.nsp_logits, ref.seq_relationship_logits, atol=1e-5, rtol=1e-5)
        again = model_cls.from_pretrained(tmp_path)
        assert again.config == ours.config
        torch.testing.assert_close(again(ids, attn, types).last_hidden_state, out.last_hidden_state, rtol=0, atol=0)


def test_pretraining_loss_matches_transformers(hf_pretraining_dir):
    path, hf = hf_pretraining_dir
    ours = BertForPreTraining.from_pretrained(path)
    ids, types, attn = _batch(seed=1)
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    labels[0, 5] = ids[0, 5]
    nsp = torch.tensor([0, 1, 0])
    with torch.no_grad():
        ref = hf(input_ids=ids, token_type_ids=types, attention_mask=attn, labels=labels, next_sentence_label=nsp)
        full = ours(ids, attn, types, labels=labels, next_sentence_label=nsp)
        sparse = ours(ids, attn, types, labels=labels, next_sentence_label=nsp, logits_only_at_labels=True)
    torch.testing.assert_close(full.loss, ref.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sparse.loss, ref.loss, atol=1e-5, rtol=1e-5)
    assert sparse.logits is None
    torch.testing.assert_close(full.mlm_loss + full.nsp_loss, full.loss)


def test_decoder_is_tied_to_word_embeddings():
    model = BertForPreTraining(BertConfig(**SMALL))
    names = [n for n, _ in model.named_parameters()]
    assert "bert.embeddings.word_embeddings.weight" in names
    assert not any("decoder.weight" in n for n in names)  # stored once
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    ids, types, attn = _batch()
    out = model(ids, attn, types)
    out.logits.sum().backward()
    assert model.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_attention_weights_are_rows_of_a_softmax_and_ignore_padding():
    model = BertModel(BertConfig(**SMALL)).eval()
    ids, types, attn = _batch()
    out = model(ids, attn, types, output_attentions=True)
    assert len(out.attentions) == SMALL["n_layers"]
    w = out.attentions[0]  # (B, H, T, T)
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
    assert (w[2, :, :, 4:] == 0).all()  # nothing attends to padding
    plain = model(ids, attn, types)
    torch.testing.assert_close(out.last_hidden_state, plain.last_hidden_state)


def test_name_map_covers_every_layer_parameter():
    hf = transformers.BertModel(transformers.BertConfig(**HF_SMALL))
    for name in hf.state_dict():
        ours = hf_to_scratchlm_name(name)
        assert ours is None or "attention.self" not in ours
        assert ours is None or scratchlm_to_hf_name(ours) == name  # the map inverts exactly
    assert len(HF_LAYER_NAME_MAP) == 8
    assert hf_to_scratchlm_name("encoder.layer.3.attention.output.LayerNorm.gamma") == "encoder.layers.3.norm1.weight"


def _minilm_dir():
    from scratchlm.data.corpora import minilm_files

    try:
        return minilm_files().directory
    except FileNotFoundError as err:  # the optional checkpoint package is not installed
        pytest.skip(str(err))


def test_real_minilm_hidden_states_match_transformers():
    directory = _minilm_dir()
    from scratchlm.tokenizers import WordPieceTokenizer

    tok = WordPieceTokenizer.from_vocab_file(directory / "vocab.txt")
    sentences = ["The cat sat on the mat.", "Transformers learn contextual representations of words!",
                 "I'm going to the bank to deposit my paycheck."]
    rows = [tok.encode(s) for s in sentences]  # [CLS] ... [SEP]
    T = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_id] * (T - len(r)) for r in rows])  # (B, T)
    attn = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])  # (B, T)
    ours = BertModel.from_pretrained(directory)
    ref_model = transformers.BertModel.from_pretrained(directory, add_pooling_layer=True).eval()
    with torch.no_grad():
        ref = ref_model(input_ids=ids, attention_mask=attn)
        out = ours(ids, attention_mask=attn)
    keep = attn.bool()
    torch.testing.assert_close(out.last_hidden_state[keep], ref.last_hidden_state[keep], atol=1e-4, rtol=1e-4)


def test_real_minilm_tokenizer_agrees_with_reference_ids():
    """Our WordPiece ids equal the ones in the checkpoint's own tokenizer.json vocabulary."""
    directory = _minilm_dir()
    from scratchlm.tokenizers import WordPieceTokenizer

    tok = WordPieceTokenizer.from_vocab_file(directory / "vocab.txt")
    vocab = json.loads((directory / "tokenizer.json").read_text())["model"]["vocab"]
    assert tok.token_to_id("[MASK]") == vocab["[MASK]"] and tok.mask_id == vocab["[MASK]"]


def test_loader_rejects_bad_directories_and_mismatches(tmp_path, hf_pretraining_dir):
    with pytest.raises(CheckpointError, match="config.json"):
        BertModel.from_pretrained(tmp_path)
    path, hf = hf_pretraining_dir
    small = BertModel(BertConfig(**(SMALL | {"d_model": 16, "n_heads": 2})))
    with pytest.raises(CheckpointError, match="shape"):
        load_hf_state_dict(small, hf.state_dict())
    bigger = BertModel(BertConfig(**(SMALL | {"n_layers": 3})))
    with pytest.raises(CheckpointError, match="missing"):
        load_hf_state_dict(bigger, hf.state_dict())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", **HF_SMALL}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="BERT config"):
        BertModel.from_pretrained(tmp_path)


def test_config_and_input_validation():
    with pytest.raises(ValueError, match="divisible"):
        BertConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="activation"):
        BertConfig(activation="swish")
    with pytest.raises(TypeError, match="BertConfig"):
        BertModel(dict(SMALL))
    model = BertForPreTraining(BertConfig(**SMALL))
    with pytest.raises(TypeError, match="int64"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="max_positions"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 4))
    ids = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 99\)"):
        model.validate_inputs({"input_ids": torch.full((1, 3), 99)})
    with pytest.raises(ValueError, match=r"token_type_ids must lie in \[0, 2\)"):
        model.validate_inputs({"input_ids": ids, "token_type_ids": torch.full((1, 3), 2)})
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 99\)"):
        model.validate_inputs({"input_ids": ids, "labels": torch.tensor([[-100, 150, -100]])})
    with pytest.raises(ValueError, match="no supervised position"):
        model.validate_inputs({"input_ids": ids, "labels": torch.full((1, 3), -100)})
    with pytest.raises(TypeError, match="int64"):
        model.validate_inputs({"input_ids": ids, "labels": torch.zeros(1, 3)})
    with pytest.raises(ValueError, match="next_sentence_label"):
        model.validate_inputs({"input_ids": ids, "next_sentence_label": torch.tensor([2])})


def test_mlm_loss_is_mean_over_masked_positions_only():
    model = BertForPreTraining(BertConfig(**SMALL)).eval()
    ids, types, attn = _batch()
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 1] = 5, 7
    with torch.no_grad():
        out = model(ids, attn, types, labels=labels)
    logp = F.log_softmax(out.logits, -1)
    manual = -(logp[0, 3, 5] + logp[1, 1, 7]) / 2
    torch.testing.assert_close(out.mlm_loss, manual)
