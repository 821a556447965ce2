"""Benchmark: fine-tuning all-MiniLM-L6-v2 with our loop and with Hugging Face ``Trainer``, side by side.

    python -m scratchlm.bench.finetune                         # SMS, STS-B (cross-encoder), UD POS; 1 epoch
    python -m scratchlm.bench.finetune --tasks sms --epochs 3 --threads 2
    python -m scratchlm.bench.finetune --tasks pos --limit 200  # a quick look

For each task both loops start from the same files (the MiniLM checkpoint), the same head weights
(ours is created first and its initial classifier copied into the HF model), the same tokenised
split (our :mod:`scratchlm.finetune` task; HF gets its ids), batch size, number of optimizer steps,
AdamW settings (lr, β = (0.9, 0.999), ε = 1e-8, weight decay 0.01 on matrices only), warm-up (10 % of
the steps) + cosine decay to 0, gradient clipping at 1.0, dropout 0.1, and length-grouped batches
(ours: :func:`~scratchlm.finetune.bucketed_batches`; HF: ``train_sampling_strategy="group_by_length"``). The heads are
the ones ``AutoModelFor…`` builds, so ours mirror them: sequence tasks read BERT's pooler output
(``pooling="pooler"``), tagging is a softmax over every token with the loss on first sub-words.

Reported per (task, loop): wall seconds of the training call (``train()`` / ``trainer.train()``,
no evaluation inside), examples per second, and the test metric (accuracy, Spearman ×100, UPOS
accuracy) computed by the same :func:`~scratchlm.finetune.evaluate_task` for both. Differences that
remain: HF's warm-up is lr·s/W, ours lr·(s+1)/(W+1); the data order and dropout masks differ, so
metrics differ by run-to-run noise. A benchmark, not a test: timings depend on the machine and its
load. Introduced in Chapter 09.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data.corpora import UPOS_TAGS, minilm_files
from ..finetune import TaskData, evaluate_task, finetune, sms_spam_task, stsb_task, ud_pos_task
from ..heads import SequenceClassifier, SequenceRegressor, TokenClassifier
from ..models.bert import BertModel
from ..models.outputs import ModelOutput
from ..runtime.context import seed_everything

TASKS = ("sms", "stsb", "pos")
METRIC = {"sms": "accuracy", "stsb": "spearman", "pos": "accuracy"}


@dataclass
class RunResult:
    """One fine-tuning run of the benchmark."""

    task: str
    loop: str  # "scratchlm" or "HF Trainer"
    steps: int
    examples: int  # training examples processed
    seconds: float  # wall time of the training call
    metric_name: str
    metric: float

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.seconds


def build_task(name: str, tokenizer: Any, limit: int | None = None) -> TaskData:
    """The benchmark's version of each task (STS-B as a cross-encoder, like AutoModelForSequenceClassification)."""
    if name == "sms":
        return sms_spam_task(tokenizer, limit=limit, warn=False)
    if name == "stsb":
        return stsb_task(tokenizer, mode="cross", limit=limit, warn=False)
    if name == "pos":
        return ud_pos_task(tokenizer, limit=limit)
    raise ValueError(f"task must be one of {TASKS}; got {name!r}")


def our_head(name: str, directory: str | os.PathLike) -> nn.Module:
    """Our head on the MiniLM encoder, mirroring what AutoModelFor… builds for the task."""
    encoder = BertModel.from_pretrained(directory)
    if name == "sms":
        return SequenceClassifier(encoder, encoder.config.d_model, 2, pooling="pooler")
    if name == "stsb":
        return SequenceRegressor(encoder, encoder.config.d_model, pooling="pooler")
    return TokenClassifier(encoder, encoder.config.d_model, len(UPOS_TAGS), crf=False)


class HFHead(nn.Module):
    """A transformers ``…ForSequenceClassification`` / ``…ForTokenClassification`` seen through our
    contract, so :func:`~scratchlm.finetune.evaluate_task` scores it exactly like our heads."""

    def __init__(self, hf_model: nn.Module, kind: str) -> None:
        super().__init__()
        self.hf = hf_model
        self.kind = kind

    def forward(self, **batch: torch.Tensor) -> ModelOutput:
        out = self.hf(**batch)
        logits = out.logits.squeeze(-1) if self.kind == "regression" else out.logits  # (B,) or (B, K) / (B, T, K)
        return ModelOutput(logits=logits, loss=getattr(out, "loss", None))

    @torch.no_grad()
    def decode(self, *, label_mask: torch.Tensor, **batch: torch.Tensor) -> list[list[int]]:
        tags = self.hf(**batch).logits.argmax(-1)  # (B, T)
        return [row[keep].tolist() for row, keep in zip(tags, label_mask.bool(), strict=True)]


def hf_model_like(name: str, ours: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """The transformers model for the task from the same files, with our head's initial weights copied."""
    import transformers

    transformers.logging.set_verbosity_error()  # "some weights were newly initialised": we set them below
    if name == "pos":
        hf = transformers.AutoModelForTokenClassification.from_pretrained(str(directory), num_labels=len(UPOS_TAGS))
    else:
        kwargs = {"num_labels": 1, "problem_type": "regression"} if name == "stsb" else {"num_labels": 2}
        hf = transformers.AutoModelForSequenceClassification.from_pretrained(str(directory), **kwargs)
    linear = ours.regressor if name == "stsb" else ours.classifier
    with torch.no_grad():
        hf.classifier.weight.copy_(linear.weight)
        hf.classifier.bias.copy_(linear.bias)
    return hf


def hf_trainer_finetune(hf_model: nn.Module, task: TaskData, *, steps: int, batch_size: int, learning_rate: float,
                        seed: int, vocab_file: str | os.PathLike) -> tuple[float, int]:
    """Fine-tune with Hugging Face ``Trainer`` — the usual recipe — and return (seconds, examples).

    The data are the task's own token ids; ``DataCollatorWithPadding`` (or
    ``DataCollatorForTokenClassification``) pads each batch to its longest row; ``"group_by_length"``
    groups similar lengths. Nothing is logged, saved or evaluated during training.
    """
    import transformers

    tokenizer = transformers.BertTokenizerFast(vocab_file=str(vocab_file))  # only used to pad
    columns = ["input_ids", "labels"] + (["token_type_ids"] if "token_type_ids" in task.splits["train"].column_names
                                         else [])
    train_ds = task.splits["train"].select_columns(columns + ["length"]).with_format(None)
    collator = (transformers.DataCollatorForTokenClassification(tokenizer) if task.kind == "tagging"
                else transformers.DataCollatorWithPadding(tokenizer))
    args = transformers.TrainingArguments(
        output_dir=os.path.join(os.environ.get("TMPDIR", "/tmp"), "scratchlm-hf-trainer"),
        per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=learning_rate,
        lr_scheduler_type="cosine", warmup_steps=int(0.1 * steps), weight_decay=0.01, adam_beta1=0.9,
        adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0, train_sampling_strategy="group_by_length", length_column_name="length",
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True,
        dataloader_num_workers=0, seed=seed, data_seed=seed, use_cpu=not torch.cuda.is_available(),
    )
    trainer = transformers.Trainer(model=hf_model, args=args, train_dataset=train_ds, data_collator=collator)
    trainer.remove_callback(transformers.PrinterCallback)  # no end-of-training metrics dict on stdout
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    n = len(train_ds)
    per_epoch = -(-n // batch_size)  # the Trainer drops no batch: the last of an epoch may be smaller
    return seconds, (steps // per_epoch) * n + min((steps % per_epoch) * batch_size, n)


def run_task(name: str, *, epochs: float = 1.0, batch_size: int = 16, learning_rate: float = 5e-5, seed: int = 1337,
             limit: int | None = None, loops: Sequence[str] = ("scratchlm", "HF Trainer")) -> list[RunResult]:
    """Fine-tune task ``name`` with each loop in ``loops``; return their results (see the module docstring)."""
    from ..tokenizers import WordPieceTokenizer

    files = minilm_files()
    tok = WordPieceTokenizer.from_vocab_file(files.vocab)
    task = build_task(name, tok, limit)
    seed_everything(seed)
    ours = our_head(name, files.directory)
    initial = copy.deepcopy(ours.state_dict())
    hf = hf_model_like(name, ours, files.directory) if "HF Trainer" in loops else None
    metric = METRIC[name]
    results = []
    steps = None
    for loop in loops:
        seed_everything(seed)
        if loop == "scratchlm":
            ours.load_state_dict(initial)
            res = finetune(ours, task, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                           seed=seed, eval_splits=(), progress=False)
            steps = res.steps
            value = evaluate_task(ours, task, "test")[metric]
            results.append(RunResult(name, loop, res.steps, res.examples_seen, res.train_seconds, metric, value))
        elif loop == "HF Trainer":
            n_steps = steps or max(1, round(epochs * -(-len(task.splits["train"]) // batch_size)))
            seconds, examples = hf_trainer_finetune(hf, task, steps=n_steps, batch_size=batch_size,
                                                    learning_rate=learning_rate, seed=seed, vocab_file=files.vocab)
            kind = "regression" if name == "stsb" else task.kind
            value = evaluate_task(HFHead(hf, kind), task, "test")[metric]
            results.append(RunResult(name, loop, n_steps, examples, seconds, metric, value))
        else:
            raise ValueError(f"loop must be 'scratchlm' or 'HF Trainer'; got {loop!r}")
    return results


def format_table(results: Sequence[RunResult]) -> str:
    lines = [f"{'task':<6} {'loop':<11} {'steps':>6} {'examples':>9} {'wall s':>8} {'examples/s':>11} {'test metric':>22}"]
    for r in results:
        shown = f"{r.metric_name} {r.metric:.4f}" if r.metric_name == "accuracy" else f"{r.metric_name} {r.metric:.2f}"
        lines.append(f"{r.task:<6} {r.loop:<11} {r.steps:>6} {r.examples:>9} {r.seconds:>8.1f} "
                     f"{r.examples_per_second:>11.1f} {shown:>22}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[RunResult]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {TASKS}")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--limit", type=int, default=None, help="at most this many examples per split")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for t in names:
        if t not in TASKS:
            parser.error(f"unknown task {t!r}; choose from {TASKS}")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"torch {torch.__version__} | threads {torch.get_num_threads()} | load average {load} | "
          f"epochs {args.epochs} | batch {args.batch_size} | lr {args.lr} | seed {args.seed} | limit {args.limit}")
    results: list[RunResult] = []
    for name in names:
        results += run_task(name, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                            seed=args.seed, limit=args.limit)
        print(format_table([r for r in results if r.task == name]), flush=True)
    print()
    print(format_table(results))
    return results


if __name__ == "__main__":
    main()


