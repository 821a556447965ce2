"""The serving directory: what ``python -m scratchlm.serve --model DIR`` loads (introduced in Chapter 13).

    DIR/
      generator/     config.json + model.safetensors (GPT.save_pretrained) + tokenizer.json
      classifier/    encoder/ (BertModel.save_pretrained) + head.safetensors + head.json + tokenizer.json

Either part may be absent (the server then answers 404 on its endpoint), not both. Everything is
read from safetensors and JSON: nothing is unpickled. A pickle (``pytorch_model.bin``, ``*.pt``)
can run arbitrary code when loaded, so a directory that holds weights only in that form is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError
from ..heads import SequenceClassifier
from ..models import GPT, BertModel
from ..tokenizers import ByteBPETokenizer, CharTokenizer, Tokenizer, WordPieceTokenizer

GENERATOR, CLASSIFIER = "generator", "classifier"
TOKENIZER_FILE, HEAD_WEIGHTS, HEAD_CONFIG = "tokenizer.json", "head.safetensors", "head.json"
TOKENIZERS: dict[str, type[Tokenizer]] = {cls.kind: cls for cls in (CharTokenizer, ByteBPETokenizer, WordPieceTokenizer)}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@dataclass
class Bundle:
    """What a server holds: a generator and/or a classifier, each with its tokenizer."""

    generator: GPT | None = None
    generator_tokenizer: Tokenizer | None = None
    classifier: SequenceClassifier | None = None
    classifier_tokenizer: Tokenizer | None = None
    labels: list[str] = field(default_factory=list)  # class names, index = class id
    classifier_max_length: int = 128  # longest input of the classifier, in tokens


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A tokenizer JSON file of any kind scratchlm writes (its ``kind`` field picks the class)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "missing tokenizer file")
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("kind")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as err:
        raise CheckpointError(path, f"not a tokenizer JSON file: {err}") from None
    if kind not in TOKENIZERS:
        raise CheckpointError(path, f"unknown tokenizer kind {kind!r}; expected one of {sorted(TOKENIZERS)}")
    return TOKENIZERS[kind].load(path)


def _refuse_pickles(directory: Path) -> None:
    """Fail early and clearly if weights exist here only as pickles (they are never opened)."""
    if (directory / "model.safetensors").is_file():
        return
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES) if directory.is_dir() else []
    if pickles:
        raise CheckpointError(directory, f"holds weights only as pickle files {pickles}; the server loads "
                              "safetensors only (unpickling can run arbitrary code). Convert them with "
                              "save_pretrained in a trusted session.")


def save_generator(directory: str | os.PathLike, model: GPT, tokenizer: Tokenizer) -> Path:
    """Write ``directory/generator``: the model (Hugging Face format, safetensors) and its tokenizer."""
    if model.config.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                         f"{model.config.vocab_size}")
    out = Path(directory) / GENERATOR
    model.save_pretrained(out)
    tokenizer.save(out / TOKENIZER_FILE)
    return out


def save_classifier(directory: str | os.PathLike, classifier: SequenceClassifier, tokenizer: Tokenizer,
                    labels: list[str], max_length: int = 128) -> Path:
    """Write ``directory/classifier``: the encoder (safetensors), the head's weights and settings, the tokenizer."""
    if not isinstance(classifier, SequenceClassifier) or not isinstance(classifier.encoder, BertModel):
        raise TypeError("save_classifier expects a SequenceClassifier around a BertModel")
    if len(labels) != classifier.num_labels:
        raise ValueError(f"{len(labels)} label names for a classifier with {classifier.num_labels} classes")
    out = Path(directory) / CLASSIFIER
    classifier.encoder.save_pretrained(out / "encoder")
    head = {k: v.detach().contiguous().cpu() for k, v in classifier.classifier.state_dict().items()}
    save_file(head, str(out / HEAD_WEIGHTS))
    settings = {"num_labels": classifier.num_labels, "labels": list(labels), "pooling": classifier.pooling,
                "hidden_size": classifier.hidden_size, "max_length": max_length}
    (out / HEAD_CONFIG).write_text(json.dumps(settings, indent=1), encoding="utf-8")
    tokenizer.save(out / TOKENIZER_FILE)
    return out


def _load_classifier(directory: Path, bundle: Bundle) -> None:
    _refuse_pickles(directory / "encoder")
    encoder = BertModel.from_pretrained(directory / "encoder")
    try:
        settings = json.loads((directory / HEAD_CONFIG).read_text(encoding="utf-8"))
        clf = SequenceClassifier(encoder, int(settings["hidden_size"]), int(settings["num_labels"]),
                                 pooling=settings["pooling"], dropout=0.0)
        labels = [str(s) for s in settings["labels"]]
        max_length = int(settings.get("max_length", 128))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(directory / HEAD_CONFIG, f"missing or malformed head settings: {err}") from None
    try:
        head = load_file(str(directory / HEAD_WEIGHTS))
    except (OSError, SafetensorError) as err:
        raise CheckpointError(directory / HEAD_WEIGHTS, f"missing or not safetensors: {err}") from None
    try:
        clf.classifier.load_state_dict(head)
    except RuntimeError as err:
        raise CheckpointError(directory / HEAD_WEIGHTS, f"does not fit the head: {err}") from None
    if len(labels) != clf.num_labels:
        raise CheckpointError(directory / HEAD_CONFIG, f"{len(labels)} labels for {clf.num_labels} classes")
    bundle.classifier, bundle.labels, bundle.classifier_max_length = clf.eval(), labels, max_length
    bundle.classifier_tokenizer = load_tokenizer(directory / TOKENIZER_FILE)


def load_bundle(directory: str | os.PathLike, device: torch.device | str = "cpu") -> Bundle:
    """Read a serving directory (see the module docstring) onto ``device``, models in eval mode."""
    root = Path(directory)
    if not root.is_dir():
        raise CheckpointError(root, "no such serving directory")
    bundle = Bundle()
    gen_dir, clf_dir = root / GENERATOR, root / CLASSIFIER
    if not gen_dir.is_dir() and not clf_dir.is_dir():
        raise CheckpointError(root, f"holds neither {GENERATOR}/ nor {CLASSIFIER}/ (see scratchlm.serve.bundle)")
    if gen_dir.is_dir():
        _refuse_pickles(gen_dir)
        bundle.generator = GPT.from_pretrained(gen_dir).to(device).eval()
        bundle.generator_tokenizer = load_tokenizer(gen_dir / TOKENIZER_FILE)
        if bundle.generator_tokenizer.vocab_size > bundle.generator.config.vocab_size:
            raise CheckpointError(gen_dir / TOKENIZER_FILE, "has more tokens than the model's vocabulary")
    if clf_dir.is_dir():
        _load_classifier(clf_dir, bundle)
        bundle.classifier.to(device)
    return bundle


def freeze(module: nn.Module | None) -> None:
    """Serving never trains: no gradients, eval mode."""
    if module is not None:
        module.eval().requires_grad_(False)
