"""scratchlm: the package every chapter of the book imports.

Grouped by role: ``layers`` (attention, positions, norms, feed-forward, blocks), ``models`` (the
Chapter 05 Transformer, GPT, BERT, T5), ``tokenizers``, ``data`` (registry, corpora, collators),
``training`` (loop, optimizer, checkpoints), ``decoding`` (sampling, constrained), ``peft`` (LoRA,
adapters, prefixes, prompts, BitFit), ``runtime``
(profiles, device, source display, plotting) and ``bench`` (commands that print figures).
Each module says which chapter introduced it. Nothing here reaches the network at import time.
"""

from .data.registry import dataset_info, dataset_path, read_text
from .runtime import (
    ChapterContext,
    by_profile,
    capped,
    check_metric,
    current_profile,
    dry_run,
    explorer,
    get_device,
    get_source,
    plot_attention_heads,
    plot_heatmap,
    plot_loss_curves,
    report_training,
    seed_everything,
    setup_chapter,
    show_source,
    use_book_style,
)

__version__ = "0.1.0"

__all__ = [
    "ChapterContext",
    "by_profile",
    "capped",
    "check_metric",
    "current_profile",
    "dataset_info",
    "dataset_path",
    "dry_run",
    "explorer",
    "get_device",
    "get_source",
    "plot_attention_heads",
    "plot_heatmap",
    "plot_loss_curves",
    "read_text",
    "report_training",
    "seed_everything",
    "setup_chapter",
    "show_source",
    "use_book_style",
]
