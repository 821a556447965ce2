"""What every chapter's set-up uses: profiles, device and seeding, source display, plotting
(introduced in the Introduction and Chapter 01), and Chapter 01's PyTorch tools."""

from .context import ChapterContext, get_device, seed_everything, setup_chapter
from .env import env_flag
from .plotting import plot_attention_heads, plot_heatmap, plot_loss_curves, use_book_style
from .profiles import PROFILES, by_profile, current_profile, default_profile
from .source import get_source, show_source

__all__ = [
    "PROFILES",
    "ChapterContext",
    "by_profile",
    "current_profile",
    "default_profile",
    "env_flag",
    "get_device",
    "get_source",
    "plot_attention_heads",
    "plot_heatmap",
    "plot_loss_curves",
    "seed_everything",
    "setup_chapter",
    "show_source",
    "use_book_style",
]
