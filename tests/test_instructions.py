"""Instruction data (Chapter 11): the Alpaca layout, loss masked to the response, padding vs
packing, held-out phrasings and tasks, scoring."""

from __future__ import annotations

import pytest
import torch

from scratchlm.constants import IGNORE_INDEX
from scratchlm.data.corpora import Sentence
from scratchlm.data.instructions import (
    HELD_OUT_TASKS,
    PHRASINGS,
    TRAIN_TASKS,
    InstructionExample,
    build_instruction_data,
    encode_example,
    format_prompt,
    instruction_collate,
    pack_examples,
    score,
)
from scratchlm.models import GPT, GPTConfig

END = 0


def _encode(text: str) -> list[int]:
    return [ord(c) % 97 + 1 for c in text]  # any deterministic char -> id map that avoids END


def _data(seed: int = 0):
    words = [f"w{a}{b}{c}" for a in "abcdefgh" for b in "ijklmnop" for c in "qrst"]
    # Repeated inputs, as in the real data (the SMS collection repeats messages): they must not leak.
    sms = [("spam", f"WIN {i} prizes now") for i in range(40)] + [("ham", f"see you at {i % 50}") for i in range(200)]
    sents = [Sentence(["the", f"cat{i % 20}", "sat"], ["DET", "NOUN", "VERB"]) for i in range(50)]
    sts = [(i % 6 * 1.0, f"a man runs {i % 30}", f"a man is running {i % 30}") for i in range(60)]
    return build_instruction_data(words, sms, sents, sts, n_train=20, n_eval=10, seed=seed)


def test_prompt_layout_and_the_loss_mask():
    ex = InstructionExample("upper", "Uppercase the word.", "cat", "CAT")
    assert ex.prompt == "### Instruction:\nUppercase the word.\n\n### Input:\ncat\n\n### Response:\n"
    ids, labels = encode_example(ex, _encode, END)
    n_prompt = len(ex.prompt)
    assert ids == _encode(ex.prompt) + _encode("CAT") + [END]
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt  # nothing is learned from the prompt
    assert labels[n_prompt:] == _encode("CAT") + [END]  # ... the response and its end token are
    _, unmasked = encode_example(ex, _encode, END, mask_prompt=False)
    assert unmasked == ids
    with pytest.raises(ValueError, match="instruction must be a non-empty string"):
        format_prompt("  ")


def test_the_masked_loss_is_the_mean_over_response_tokens_only():
    """Against a brute-force loss: only the response positions enter the mean."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=100, block_size=128, n_layers=1, n_heads=2, d_model=16)).eval()
    rows = [encode_example(InstructionExample("upper", "Uppercase the word.", w, w.upper()), _encode, END)
            for w in ("cat", "horse")]
    batch = instruction_collate(rows, pad_id=END)
    with torch.no_grad():
        loss = model(**batch).loss
        logp = torch.log_softmax(model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)
    terms = [-logp[b, t - 1, batch["labels"][b, t]] for b in range(2) for t in range(1, batch["labels"].shape[1])
             if batch["labels"][b, t] != IGNORE_INDEX]
    assert len(terms) == len("CAT") + 1 + len("HORSE") + 1
    torch.testing.assert_close(loss, torch.stack(terms).mean())


def test_padding_and_packing_keep_every_supervised_token():
    rows = [encode_example(InstructionExample("count", "Count the letters.", w, str(len(w))), _encode, END)
            for w in ("a", "word", "longerword")]
    padded = instruction_collate(rows, pad_id=END)
    assert padded["input_ids"].shape == (3, max(len(r[0]) for r in rows))
    assert (padded["labels"] != IGNORE_INDEX).sum(1).tolist() == [2, 2, 3]  # the digits + the end token
    assert (padded["labels"][padded["attention_mask"] == 0] == IGNORE_INDEX).all()
    total = sum(len(r[0]) for r in rows)
    packed = pack_examples(rows, block_size=total // 2)
    assert packed["input_ids"].shape == (2, total // 2) and packed["attention_mask"].all()
    flat = [t for r in rows for t in r[0]]
    assert packed["input_ids"].flatten().tolist() == flat[: 2 * (total // 2)]
    with pytest.raises(ValueError, match="do not fill one row"):
        pack_examples(rows, block_size=10 * total)


def test_held_out_phrasings_tasks_and_inputs_are_never_trained():
    data = _data()
    assert {e.task for e in data.train} == set(TRAIN_TASKS)
    assert len(data.train) == 20 * len(TRAIN_TASKS)
    held_out = {PHRASINGS[t][-1] for t in TRAIN_TASKS}
    assert not held_out & {e.instruction for e in data.train}
    assert {e.instruction for e in data.eval_new_phrasing} == held_out
    assert {e.task for e in data.eval_new_task} == set(HELD_OUT_TASKS)
    assert not set(HELD_OUT_TASKS) & {e.task for e in data.train}
    train_inputs = {e.input for e in data.train}
    for split in (data.eval_seen_phrasing, data.eval_new_phrasing, data.eval_new_task):
        assert not train_inputs & {e.input for e in split}, "an evaluation input was trained on"
    sms = [e.output for e in data.train if e.task == "sms"]
    assert sms.count("spam") == sms.count("ham")  # balanced: always "ham" scores 50 %
    assert [e.input for e in _data().train] == [e.input for e in data.train]  # deterministic
    assert [e.input for e in _data(seed=1).train] != [e.input for e in data.train]
    rev = next(e for e in data.train if e.task == "reverse")
    assert rev.output == rev.input[::-1]
    with pytest.raises(ValueError, match="n_train must be a positive int"):
        build_instruction_data(["abc"], [], [], [], n_train=0, n_eval=1)


def test_scoring():
    assert score("upper", " CAT ", "CAT") == 1.0 and score("upper", "CA", "CAT") == 0.0
    assert score("pos", "DET NOUN NOUN", "DET NOUN VERB") == pytest.approx(2 / 3)
    assert score("pos", "", "DET NOUN") == 0.0


def test_respond_equals_one_prompt_at_a_time_and_stops_at_the_end_token():
    from scratchlm.decoding import generate, respond

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=100, block_size=64, n_layers=1, n_heads=2, d_model=16)).eval()
    decode = lambda ids: "".join(chr(96 + i) for i in ids)  # noqa: E731
    prompts = ["abc", "a much longer prompt", "xy"]
    batched = respond(model, prompts, _encode, decode, END, max_new_tokens=6, batch_size=2)
    for prompt, answer in zip(prompts, batched, strict=True):
        ids = torch.tensor([_encode(prompt)])
        new = generate(model, ids, 6, greedy=True)[0, ids.shape[1]:].tolist()
        new = new[: new.index(END)] if END in new else new
        assert answer == decode(new)
    ids = torch.tensor([_encode("abc")])
    first, second = generate(model, ids, 2, greedy=True)[0, -2:].tolist()
    assert respond(model, ["abc"], _encode, decode, first, max_new_tokens=6) == [""]  # stops at once
    if second != first:
        assert respond(model, ["abc"], _encode, decode, second, max_new_tokens=6) == [decode([first])]
    with pytest.raises(TypeError, match="list of prompts"):
        respond(model, "abc", _encode, decode, END)
