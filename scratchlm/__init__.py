"""scratchlm: the package every chapter of the book imports.

Each module says which chapter introduced it. Nothing here reaches the network at import time.
"""

from .data import dataset_info, dataset_path, read_text
from .plotting import plot_attention_heads, plot_heatmap, plot_loss_curves, use_book_style
from .profiles import by_profile, current_profile
from .runtime import ChapterContext, get_device, seed_everything, setup_chapter
from .source import get_source, show_source

__version__ = "0.1.0"

__all__ = [
    "ChapterContext",
    "by_profile",
    "current_profile",
    "dataset_info",
    "dataset_path",
    "get_device",
    "get_source",
    "plot_attention_heads",
    "plot_heatmap",
    "plot_loss_curves",
    "read_text",
    "seed_everything",
    "setup_chapter",
    "show_source",
    "use_book_style",
]
