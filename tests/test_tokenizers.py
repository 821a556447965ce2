"""Tests for scratchlm.tokenizers (Chapter 02).

References: round trips (decode(encode(s)) == s, save/load), a brute-force BPE trainer and encoder
written independently below, and Hugging Face's BERT tokenizers (pure-Python legacy and Rust) on
the real all-MiniLM-L6-v2 vocabulary.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scratchlm.data.corpora import load_conllu_texts, load_shakespeare, load_sms_spam, minilm_files
from scratchlm.tokenizers import ByteBPETokenizer, CharTokenizer, WordPieceTokenizer
from scratchlm.tokenizers.bpe import GPT2_PATTERN, GPT4_PATTERN, SIMPLE_PATTERN

SPECIALS = ["<pad>", "<|endoftext|>", "[MASK]"]


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return load_shakespeare()


@pytest.fixture(scope="module")
def bpe(shakespeare) -> ByteBPETokenizer:
    return ByteBPETokenizer().train(shakespeare[:100_000], 400, special_tokens=SPECIALS)


# --- CharTokenizer -------------------------------------------------------------------------------


def test_char_matches_nanogpt_vocab_and_round_trips(shakespeare):
    tok = CharTokenizer(shakespeare)
    chars = sorted(set(shakespeare))  # nanoGPT's prepare.py
    assert tok.vocab_size == len(chars) == 65
    assert tok.encode(shakespeare[:2000]) == [chars.index(c) for c in shakespeare[:2000]]
    assert tok.decode(tok.encode(shakespeare)) == shakespeare
    assert tok.pad_id is None and tok.unk_id is None


def test_char_special_tokens_and_unknowns():
    tok = CharTokenizer("hello world", special_tokens=["<pad>", "[MASK]"], unk_token="<unk>")
    assert (tok.pad_id, tok.mask_id, tok.unk_id) == (0, 1, 2)
    assert tok.cls_id is None
    ids = tok.encode("he[MASK]lo<pad>?")
    assert ids == [tok.token_to_id("h"), tok.token_to_id("e"), 1, tok.token_to_id("l"), tok.token_to_id("o"), 0, 2]
    assert tok.decode(ids) == "he[MASK]lo<pad><unk>"
    assert tok.decode(ids, skip_special_tokens=True) == "helo"
    # Without allow_special the brackets are characters: '[' is unknown here.
    assert tok.encode("[MASK]", allow_special=False)[0] == tok.unk_id


def test_char_unknown_character_is_a_clear_error():
    tok = CharTokenizer("abc")
    with pytest.raises(ValueError, match=r"'z'.*position 2"):
        tok.encode("abz")


def test_char_save_load(tmp_path):
    tok = CharTokenizer("to be or not to be", special_tokens={"pad": "<pad>", "bos": "<s>"}, unk_token="<unk>")
    path = tok.save(tmp_path / "char.json")
    again = CharTokenizer.load(path)
    assert again.itos == tok.itos and again.pad_id == tok.pad_id and again.bos_id == tok.bos_id
    assert again.encode("not <s>?") == tok.encode("not <s>?")


def test_char_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        CharTokenizer("")
    with pytest.raises(TypeError, match="str"):
        CharTokenizer(123)
    with pytest.raises(ValueError, match="exactly one"):
        CharTokenizer()
    with pytest.raises(TypeError, match="single string"):
        CharTokenizer("abc", special_tokens="<pad>")
    with pytest.raises(ValueError, match="ordinary character"):
        CharTokenizer("abc", special_tokens=["a"])
    tok = CharTokenizer("abc")
    with pytest.raises(TypeError, match="str"):
        tok.encode(b"abc")
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([0, 3])
    with pytest.raises(TypeError, match="ints"):
        tok.decode([0.0])
    with pytest.raises(TypeError, match="sequence of int"):
        tok.decode("abc")


# --- ByteBPETokenizer ----------------------------------------------------------------------------


def naive_bpe_train(text: str, n_merges: int, pattern: str) -> list[tuple[int, int]]:
    """Reference: recount every pair over every chunk for each merge (slow, obviously correct)."""
    import regex

    chunks = [list(c.encode("utf-8")) for c in regex.findall(pattern, text)]
    merges = []
    for k in range(n_merges):
        counts: Counter = Counter()
        for ids in chunks:
            counts.update(zip(ids, ids[1:], strict=False))
        if not counts or max(counts.values()) < 2:
            break
        best = min(counts, key=lambda p: (-counts[p], p))  # most frequent, then smallest pair
        merges.append(best)
        new_chunks = []
        for ids in chunks:
            out, i = [], 0
            while i < len(ids):
                if i + 1 < len(ids) and (ids[i], ids[i + 1]) == best:
                    out.append(256 + k)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            new_chunks.append(out)
        chunks = new_chunks
    return merges


def naive_bpe_encode(text: str, merges: list[tuple[int, int]], pattern: str) -> list[int]:
    """Reference encoder: apply every merge, in training order, to every chunk."""
    import regex

    out = []
    for chunk in regex.findall(pattern, text):
        ids = list(chunk.encode("utf-8"))
        for k, pair in enumerate(merges):
            merged, i = [], 0
            while i < len(ids):
                if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
                    merged.append(256 + k)
                    i += 2
                else:
                    merged.append(ids[i])
                    i += 1
            ids = merged
        out.extend(ids)
    return out


@pytest.mark.parametrize("pattern_name", ["gpt2", "gpt4"])
def test_bpe_training_matches_brute_force(shakespeare, pattern_name):
    text = shakespeare[:20_000] + " naïve café 東京 🙂🙂🙂 ok"
    pattern = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}[pattern_name]
    tok = ByteBPETokenizer(pattern_name).train(text, 256 + 60)
    assert tok.merges == naive_bpe_train(text, 60, pattern)
    probe = shakespeare[50_000:53_000]
    assert tok.encode(probe) == naive_bpe_encode(probe, tok.merges, pattern)
    # The token count tracked during training equals the length of the encoded training text.
    assert tok.train_token_counts[-1] == len(tok.encode(text))
    assert tok.train_token_counts[0] == len(text.encode("utf-8"))


def test_bpe_vocab_layout_and_specials(bpe):
    assert bpe.vocab_size == 400
    assert len(bpe.merges) == 400 - 256 - len(SPECIALS)
    assert bpe.pad_id == 256 + len(bpe.merges) and bpe.eos_id == bpe.pad_id + 1 and bpe.mask_id == bpe.pad_id + 2
    assert bpe.unk_id is None and bpe.cls_id is None
    for i in range(bpe.vocab_size):
        assert bpe.token_to_id(bpe.id_to_token(i)) == i
    # Merged tokens spell the concatenation of their parts.
    for k, (a, b) in enumerate(bpe.merges):
        assert bpe.token_bytes(256 + k) == bpe.token_bytes(a) + bpe.token_bytes(b)
    assert bpe.id_to_token(bpe.encode(" the")[0]) == "Ġthe"
    ids = bpe.encode("to be<|endoftext|>[MASK]")
    assert ids[-2:] == [bpe.eos_id, bpe.mask_id]
    plain = bpe.encode("<|endoftext|>", allow_special=False)
    assert bpe.eos_id not in plain and bpe.decode(plain) == "<|endoftext|>"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_bpe_round_trip_arbitrary_unicode(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text
    assert "".join(bpe.pretokenize(text)) == text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.text(max_size=30), st.sampled_from(SPECIALS)), max_size=8))
def test_bpe_round_trip_with_special_tokens(bpe, parts):
    text = "".join(parts)
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert bpe.decode(bpe.encode(text, allow_special=False)) == text


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_pretokenize_patterns_cover_every_character(text):
    for source in (GPT2_PATTERN, GPT4_PATTERN):
        import regex

        assert "".join(regex.findall(source, text)) == text
    assert "".join(re.findall(SIMPLE_PATTERN, text)) == text


def test_bpe_handles_hard_strings(bpe):
    hard = [
        "", "\x00\x01\x7f", "e\u0301\u0327", "👩‍👩‍👧‍👦 🇫🇷", "東京タワー", "\r\n\t  \u2028x", "a" * 5000, "\ufeffBOM",
        "Ω≈ç√∫", "'s 'll 'VE", "0123456789" * 3,
    ]
    for text in hard:
        assert bpe.decode(bpe.encode(text)) == text
    # A cut through a multi-byte character decodes to U+FFFD instead of raising.
    ids = ByteBPETokenizer().encode("é")
    assert ids == [0xC3, 0xA9] and ByteBPETokenizer().decode(ids[:1]) == "\ufffd"


def test_bpe_simple_pattern_and_no_pattern_round_trip(shakespeare):
    text = shakespeare[:10_000]
    for pattern in ("simple", None):
        tok = ByteBPETokenizer(pattern).train(text, 300)
        assert tok.decode(tok.encode(text)) == text
        assert tok.train_token_counts[-1] == len(tok.encode(text))


def test_bpe_compresses_and_save_load(bpe, shakespeare, tmp_path):
    held_out = shakespeare[200_000:230_000]
    ids = bpe.encode(held_out)
    assert len(held_out.encode()) / len(ids) > 1.5  # 144 merges already give > 1.5 bytes per token
    path = bpe.save(tmp_path / "bpe.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["kind"] == "byte_bpe" and len(data["merges"]) == len(bpe.merges)
    again = ByteBPETokenizer.load(path)
    assert again.merges == bpe.merges and again.vocab_size == bpe.vocab_size
    assert again.encode(held_out + "<pad>") == bpe.encode(held_out + "<pad>")
    assert (again.pad_id, again.eos_id, again.mask_id) == (bpe.pad_id, bpe.eos_id, bpe.mask_id)


def test_bpe_bad_input(bpe, tmp_path):
    with pytest.raises(ValueError, match="at least 256"):
        ByteBPETokenizer().train("abc", 100)
    with pytest.raises(ValueError, match=r"256 \(bytes\) \+ 2"):
        ByteBPETokenizer().train("abc", 257, special_tokens=["<pad>", "<eos>"])
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        ByteBPETokenizer().train("abc", 300.0)
    with pytest.raises(TypeError, match="str"):
        ByteBPETokenizer().train(["abc"], 300)
    with pytest.raises(TypeError, match="pattern"):
        ByteBPETokenizer(pattern=3)
    with pytest.raises(ValueError, match="out of range"):
        bpe.decode([bpe.vocab_size])
    with pytest.raises(ValueError, match="1-D"):
        bpe.decode(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(KeyError, match="not a token"):
        bpe.token_to_id("definitely-not-a-token")
    wrong = CharTokenizer("abc").save(tmp_path / "char.json")
    with pytest.raises(ValueError, match="expected kind 'byte_bpe'"):
        ByteBPETokenizer.load(wrong)
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not a JSON"):
        ByteBPETokenizer.load(tmp_path / "broken.json")


def test_bpe_decode_accepts_tensor(bpe):
    ids = bpe.encode("O Romeo, Romeo!")
    assert bpe.decode(torch.tensor(ids)) == "O Romeo, Romeo!"


# --- WordPieceTokenizer --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_vocab():
    return minilm_files().vocab


@pytest.fixture(scope="module")
def wordpiece(minilm_vocab) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_vocab_file(minilm_vocab)


@pytest.fixture(scope="module")
def real_sentences() -> list[str]:
    ewt = load_conllu_texts("dev")
    sms = [text for _, text in load_sms_spam()]
    return ewt[::5] + sms[::10]  # ~400 + ~560 real sentences, with URLs, emoticons, £, accents


def test_wordpiece_matches_hf_legacy_python_tokenizer(wordpiece, minilm_vocab, real_sentences):
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    reference = BertTokenizerLegacy(vocab_file=str(minilm_vocab))  # the slow, pure-Python BertTokenizer
    mismatches = [t for t in real_sentences if wordpiece.encode(t) != reference(t)["input_ids"]]
    assert not mismatches, f"{len(mismatches)} sentences differ, e.g. {mismatches[:3]}"


def test_wordpiece_matches_hf_rust_tokenizer_including_pairs(wordpiece, minilm_vocab, real_sentences):
    from transformers import BertTokenizer

    reference = BertTokenizer(vocab=str(minilm_vocab))  # transformers 5: tokenizers (Rust) backend
    assert [wordpiece.encode(t) for t in real_sentences] == reference(real_sentences)["input_ids"]
    firsts, seconds = real_sentences[:150], real_sentences[150:300]
    for max_length in (None, 24):
        kwargs = {} if max_length is None else {"max_length": max_length, "truncation": "longest_first"}
        ref = reference(firsts, seconds, **kwargs)
        ours = [wordpiece.encode_pair(a, b, max_length=max_length) for a, b in zip(firsts, seconds, strict=True)]
        assert [o["input_ids"] for o in ours] == ref["input_ids"]
        assert [o["token_type_ids"] for o in ours] == ref["token_type_ids"]
    batch = wordpiece.batch_encode(firsts[:8], seconds[:8], max_length=32)
    ref = reference(firsts[:8], seconds[:8], max_length=32, truncation=True, padding=True, return_tensors="pt")
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert torch.equal(batch[key], ref[key]), key


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(codec="latin-1"), max_size=60))
def test_wordpiece_matches_legacy_on_random_latin1(wordpiece, minilm_vocab, text):
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    reference = _legacy(str(minilm_vocab), BertTokenizerLegacy)
    assert wordpiece.tokenize(text) == reference.tokenize(text)


_LEGACY_CACHE: dict = {}


def _legacy(path, cls):
    if path not in _LEGACY_CACHE:
        _LEGACY_CACHE[path] = cls(vocab_file=path)
    return _LEGACY_CACHE[path]


def test_wordpiece_special_tokens_and_details(wordpiece):
    assert (wordpiece.pad_id, wordpiece.unk_id, wordpiece.cls_id, wordpiece.sep_id, wordpiece.mask_id) == (
        0, 100, 101, 102, 103,
    )
    assert wordpiece.vocab_size == 30522
    assert wordpiece.tokenize("The Naïve CAFÉ [MASK] jurists!") == [
        "the", "naive", "cafe", "[MASK]", "jurist", "##s", "!",
    ]
    assert wordpiece.tokenize("x" * 101) == ["[UNK]"]  # longer than max_input_chars_per_word
    assert wordpiece.encode("hello", add_special_tokens=False) == [wordpiece.token_to_id("hello")]
    assert len(wordpiece.encode("one two three four five", max_length=4)) == 4
    ids = wordpiece.encode("Unaffable jurists")
    assert wordpiece.decode(ids, skip_special_tokens=True) == "unaffable jurists"


def test_wordpiece_save_load_and_bad_input(wordpiece, tmp_path):
    again = WordPieceTokenizer.load(wordpiece.save(tmp_path / "wp.json"))
    assert again.encode("Tokenizers, save and load!") == wordpiece.encode("Tokenizers, save and load!")
    with pytest.raises(ValueError, match="missing"):
        WordPieceTokenizer(["[PAD]", "[UNK]", "a"])
    with pytest.raises(TypeError, match="list of token strings"):
        WordPieceTokenizer("[PAD] [UNK]")
    with pytest.raises(FileNotFoundError, match="no vocabulary file"):
        WordPieceTokenizer.from_vocab_file(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="max_length"):
        wordpiece.encode_pair("a", "b", max_length=3)
    with pytest.raises(TypeError, match="str"):
        wordpiece.encode(None)
    with pytest.raises(ValueError, match="same length"):
        wordpiece.batch_encode(["a", "b"], ["c"])


def test_bpe_with_merges_equals_training_fewer_merges(shakespeare):
    text = shakespeare[:30_000]
    big = ByteBPETokenizer().train(text, 360, special_tokens=["<pad>"])
    small = ByteBPETokenizer().train(text, 300, special_tokens=["<pad>"])
    cut = big.with_merges(len(small.merges))
    assert cut.merges == small.merges and cut.pad_id == small.pad_id == 256 + len(small.merges)
    assert cut.encode(shakespeare[40_000:42_000]) == small.encode(shakespeare[40_000:42_000])
    with pytest.raises(ValueError, match="n_merges"):
        big.with_merges(len(big.merges) + 1)


def test_token_display(bpe, wordpiece):
    from scratchlm.tokenizers import token_pieces, tokens_html

    text = "Thou art 🙂\n"
    pieces = token_pieces(bpe, text)
    assert [i for i, _ in pieces] == bpe.encode(text)
    # Joining the readable pieces recovers the text wherever no character was cut.
    assert "".join(p for _, p in pieces).startswith("Thou art ")
    page = tokens_html(wordpiece, "<b>naïve</b>")
    assert "&lt;" in page and "<b>naïve" not in page  # token text is escaped
    assert page.count("<span") == len(wordpiece.encode("<b>naïve</b>"))
    with pytest.raises(TypeError, match="scratchlm Tokenizer"):
        token_pieces("not a tokenizer", "x")


def test_bpe_retraining_the_same_object_resets_everything(shakespeare):
    tok = ByteBPETokenizer()
    tok.train(shakespeare[:20_000], 300)
    first_token = tok.id_to_token(299)
    assert tok.token_to_id(first_token) == 299
    tok.train("abababab cdcdcdcd " * 50, 300, min_frequency=2)
    fresh = ByteBPETokenizer().train("abababab cdcdcdcd " * 50, 300, min_frequency=2)
    assert tok.merges == fresh.merges and tok.vocab_size == fresh.vocab_size
    for i in range(tok.vocab_size):
        assert tok.token_to_id(tok.id_to_token(i)) == i
    assert tok.encode("abab cdcd") == fresh.encode("abab cdcd")
