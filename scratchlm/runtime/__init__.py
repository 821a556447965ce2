"""What every chapter's set-up uses: profiles, device and seeding, source display, plotting
(introduced in the Introduction and Chapter 01), and Chapter 01's PyTorch tools."""

from .checks import CheckResult, check_metric, report_training
from .context import ChapterContext, get_device, seed_everything, setup_chapter, threads_override
from .env import env_flag, env_int
from .plotting import plot_attention_heads, plot_heatmap, plot_loss_curves, use_book_style
from .profiles import PROFILES, by_profile, capped, current_profile, default_profile, dry_run, step_cap
from .source import get_source, show_source
from .widgets import explorer

__all__ = [
    "PROFILES",
    "ChapterContext",
    "CheckResult",
    "by_profile",
    "capped",
    "check_metric",
    "current_profile",
    "default_profile",
    "dry_run",
    "env_flag",
    "env_int",
    "explorer",
    "get_device",
    "get_source",
    "plot_attention_heads",
    "plot_heatmap",
    "plot_loss_curves",
    "report_training",
    "seed_everything",
    "setup_chapter",
    "show_source",
    "step_cap",
    "threads_override",
    "use_book_style",
]
