"""Instruction data in the Alpaca format, built from the book's datasets (introduced in Chapter 11).

An example is (instruction, input, response), shown to the model as one text::

    ### Instruction:
    Classify this text message as spam or ham.

    ### Input:
    WINNER!! You have been selected to receive a £900 prize ...

    ### Response:
    spam<end>

This is the Alpaca layout (Taori et al., 2023) without its fixed one-sentence preamble (the same
~170 characters in front of every example teach a character-level model nothing and cost context).
The loss is computed on the response only: every prompt position gets the label −100
(:data:`~scratchlm.constants.IGNORE_INDEX`), so the model is not trained to reproduce instructions
and inputs, only to answer them (:func:`encode_example`).

Tasks come from the datasets of Chapter 09 and from templated string operations; every task has
four phrasings of its instruction, the last one never used for training (**held-out phrasings**),
and two whole tasks are never trained at all (**held-out tasks**). Inputs of the evaluation sets
are disjoint from the training inputs.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..constants import IGNORE_INDEX
from .collate import pad_sequences

PROMPT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"

PHRASINGS: dict[str, tuple[str, ...]] = {  # the last phrasing of each task is held out
    "sms": ("Classify this text message as spam or ham.", "Is this SMS spam or ham?",
            "Label the message: spam or ham.", "Decide whether the following text is spam or ham."),
    "pos": ("Tag each word with its part of speech.", "Give the POS tag of every word.",
            "Write the part-of-speech tags of the sentence.", "List the word classes of this sentence."),
    "sts": ("Rate how similar the two sentences are, from 0 to 5.", "How similar are these sentences (0-5)?",
            "Score the similarity of the pair from 0 to 5.", "On a scale of 0 to 5, how close in meaning are they?"),
    "reverse": ("Reverse the word.", "Write the word backwards.", "Spell the word in reverse order.",
                "Give the letters of the word from last to first."),
    "upper": ("Write the word in capital letters.", "Uppercase the word.", "Convert the word to upper case.",
              "Rewrite the word using only capitals."),
    "count": ("How many letters does the word have?", "Count the letters of the word.",
              "Give the length of the word.", "What is the number of characters in the word?"),
    "copy": ("Repeat the word.", "Write the word again.", "Copy the word.", "Say the word once more."),
    "first": ("What is the first letter of the word?", "Give the initial letter of the word.",
              "Write the word's first letter.", "Which letter does the word start with?"),
}
TRAIN_TASKS = ("sms", "pos", "sts", "reverse", "upper", "count")
HELD_OUT_TASKS = ("copy", "first")


@dataclass(frozen=True)
class InstructionExample:
    """One (instruction, input, response) triple and the task it belongs to."""

    task: str
    instruction: str
    input: str
    output: str

    @property
    def prompt(self) -> str:
        return format_prompt(self.instruction, self.input)


def format_prompt(instruction: str, input: str = "") -> str:  # noqa: A002 (the Alpaca field name)
    """The text in front of the response (everything the model conditions on)."""
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"instruction must be a non-empty string; got {instruction!r}")
    return PROMPT_TEMPLATE.format(instruction=instruction, input=input)


def encode_example(example: InstructionExample, encode: Callable[[str], list[int]], end_id: int, *,
                   mask_prompt: bool = True) -> tuple[list[int], list[int]]:
    """Token ids of prompt + response + end token, and labels (−100 on the prompt when ``mask_prompt``).

    Labels are unshifted (the model shifts them): position t is scored on predicting ids[t + 1], so
    the first supervised prediction is the response's first token, made from the prompt's last one.
    """
    prompt, response = encode(example.prompt), encode(example.output) + [end_id]
    ids = prompt + response
    labels = ([IGNORE_INDEX] * len(prompt) if mask_prompt else list(prompt)) + response
    return ids, labels


def instruction_collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad (ids, labels) rows: ``input_ids``, ``attention_mask``, ``labels`` (−100 at padding)."""
    ids, mask = pad_sequences([r[0] for r in rows], pad_id)  # (B, T) each
    labels, _ = pad_sequences([r[1] for r in rows], IGNORE_INDEX)  # (B, T)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pack_examples(rows: Sequence[tuple[list[int], list[int]]], block_size: int) -> dict[str, torch.Tensor]:
    """Concatenate (ids, labels) rows end to end and cut into (N, block_size) rows: no padding at all.

    Packing wastes no compute on padding; the price is that an example may attend to the end of the
    previous one (they are separated by the end token, and the loss never asks to predict across the
    boundary: the first token of each example is labelled from the previous end token, which the
    prompt mask sets to −100). The last, incomplete row is dropped.
    """
    if not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"block_size must be an int >= 2; got {block_size!r}")
    ids = [t for r in rows for t in r[0]]
    labels = [t for r in rows for t in r[1]]
    n = len(ids) // block_size
    if n == 0:
        raise ValueError(f"{len(ids)} tokens do not fill one row of block_size={block_size}")
    x = torch.tensor(ids[: n * block_size]).view(n, block_size)  # (N, T)
    y = torch.tensor(labels[: n * block_size]).view(n, block_size)  # (N, T)
    return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": y}


# ---- building the tasks ----------------------------------------------------------------------------
def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@dataclass
class InstructionData:
    """Training examples and the three evaluation sets (all with inputs unseen in training)."""

    train: list[InstructionExample]
    eval_seen_phrasing: list[InstructionExample]  # trained tasks and phrasings, new inputs
    eval_new_phrasing: list[InstructionExample]  # trained tasks, the held-out phrasing
    eval_new_task: list[InstructionExample]  # tasks never trained

    def all_texts(self) -> list[str]:
        sets = (self.train, self.eval_seen_phrasing, self.eval_new_phrasing, self.eval_new_task)
        return [e.prompt + e.output for s in sets for e in s]


def _sources(rng: random.Random, words: Sequence[str], sms, sentences, stsb, max_input: int):
    """Each task's candidate (input, output) pairs, split 80/20 into train and evaluation pools."""
    ham = [(_clean(t), "ham") for lab, t in sms if lab == "ham" and len(_clean(t)) <= max_input]
    spam = [(_clean(t), "spam") for lab, t in sms if lab == "spam" and len(_clean(t)) <= max_input]
    pos = [(" ".join(s.words), " ".join(s.upos)) for s in sentences
           if 2 <= len(s.words) <= 6 and len(" ".join(s.words)) <= 40]
    sts = [(f"{_clean(a)}\n{_clean(b)}", str(round(score))) for score, a, b in stsb
           if len(_clean(a)) <= max_input // 2 and len(_clean(b)) <= max_input // 2]
    ops = {"reverse": lambda w: w[::-1], "upper": str.upper, "count": lambda w: str(len(w)),
           "copy": lambda w: w, "first": lambda w: w[0]}
    pools: dict[str, tuple[list, list]] = {}
    for name, items in (("ham", ham), ("spam", spam), ("pos", pos), ("sts", sts), ("words", list(words))):
        # One entry per distinct input (the SMS collection repeats messages, UD repeats "Thank you ."),
        # so no evaluation input can also be a training input.
        items = list({(item if isinstance(item, str) else item[0]): item for item in items}.values())
        rng.shuffle(items)
        cut = int(0.8 * len(items))
        pools[name] = (items[:cut], items[cut:])
    return pools, ops


def build_instruction_data(words: Sequence[str], sms: Sequence[tuple[str, str]], sentences: Sequence,
                           stsb: Sequence[tuple[float, str, str]], *, n_train: int, n_eval: int, seed: int = 0,
                           max_input: int = 100) -> InstructionData:
    """``n_train`` training examples per trained task, ``n_eval`` per evaluation set and task.

    ``words``: the vocabulary of the string tasks; ``sms``: (label, text) pairs; ``sentences``: UD
    sentences with ``words``/``upos``; ``stsb``: (score, a, b). SMS examples are balanced (half spam)
    so that always answering "ham" scores 50 %, not 87 %.
    """
    for name, value in (("n_train", n_train), ("n_eval", n_eval)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    rng = random.Random(seed)
    pools, ops = _sources(rng, words, sms, sentences, stsb, max_input)

    def draw(task: str, split: int, k: int) -> list[tuple[str, str]]:
        if task == "sms":
            half = [rng.choice(pools["spam"][split]) for _ in range(k // 2)]
            return half + [rng.choice(pools["ham"][split]) for _ in range(k - k // 2)]
        if task in ops:
            return [(w, ops[task](w)) for w in (rng.choice(pools["words"][split]) for _ in range(k))]
        return [rng.choice(pools[task][split]) for _ in range(k)]

    def make(task: str, pairs, phrasings) -> list[InstructionExample]:
        return [InstructionExample(task, rng.choice(phrasings), i, o) for i, o in pairs]

    train = [e for t in TRAIN_TASKS for e in make(t, draw(t, 0, n_train), PHRASINGS[t][:-1])]
    rng.shuffle(train)
    seen = [e for t in TRAIN_TASKS for e in make(t, draw(t, 1, n_eval), PHRASINGS[t][:-1])]
    new_phrasing = [e for t in TRAIN_TASKS for e in make(t, draw(t, 1, n_eval), PHRASINGS[t][-1:])]
    new_task = [e for t in HELD_OUT_TASKS for e in make(t, draw(t, 1, n_eval), PHRASINGS[t])]
    return InstructionData(train, seen, new_phrasing, new_task)


def score(task: str, prediction: str, target: str) -> float:
    """1.0 for an exact match; POS tagging scores the fraction of tags right, position by position."""
    prediction, target = prediction.strip(), target.strip()
    if task == "pos":
        pred, gold = prediction.split(), target.split()
        return sum(p == g for p, g in zip(pred, gold, strict=False)) / len(gold)
    return float(prediction == target)
