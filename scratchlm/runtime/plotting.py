"""Plotting helpers with one consistent style (introduced in Chapter 01, used by every chapter).

Every figure gets a title, labelled axes with units, and sizes readable on the website.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

BOOK_STYLE = {
    "figure.figsize": (7.0, 4.0),
    "figure.dpi": 110,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.frameon": False,
}


def use_book_style() -> None:
    """Apply the book's matplotlib style (called by every chapter's set-up)."""
    plt.rcParams.update(BOOK_STYLE)


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=float)


def plot_loss_curves(
    curves: Mapping[str, Sequence[float] | tuple[Sequence[float], Sequence[float]]],
    *,
    title: str = "Loss",
    xlabel: str = "step",
    ylabel: str = "loss (nats/token)",
    logy: bool = False,
    ax=None,
):
    """Plot named loss curves. Each value is a list of losses or a ``(steps, losses)`` pair."""
    if not curves:
        raise ValueError("plot_loss_curves needs at least one curve; got an empty mapping")
    if ax is None:
        _, ax = plt.subplots()
    for label, values in curves.items():
        if isinstance(values, tuple) and len(values) == 2:
            xs, ys = _as_numpy(values[0]), _as_numpy(values[1])
        else:
            ys = _as_numpy(values)
            xs = np.arange(len(ys))
        if xs.shape != ys.shape:
            raise ValueError(f"curve {label!r}: steps {xs.shape} and losses {ys.shape} differ in shape")
        ax.plot(xs, ys, label=label, marker="o" if len(ys) < 30 else None, markersize=3)
    if logy:
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.legend()
    return ax


def plot_heatmap(
    matrix,
    *,
    title: str,
    xlabels: Sequence[str] | None = None,
    ylabels: Sequence[str] | None = None,
    xlabel: str = "",
    ylabel: str = "",
    cmap: str = "viridis",
    colorbar_label: str = "",
    annotate: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
    ax=None,
):
    """A 2-D heatmap (attention weights, positional tables, confusion matrices)."""
    data = _as_numpy(matrix)
    if data.ndim != 2:
        raise ValueError(f"plot_heatmap expects a 2-D matrix; got shape {data.shape}")
    if ax is None:
        h, w = data.shape
        _, ax = plt.subplots(figsize=(min(12, 2 + 0.45 * w), min(10, 1.5 + 0.4 * h)) if xlabels else None)
    im = ax.imshow(data, cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax)
    cbar = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if colorbar_label:
        cbar.set_label(colorbar_label)
    if xlabels is not None:
        if len(xlabels) != data.shape[1]:
            raise ValueError(f"{len(xlabels)} x labels for {data.shape[1]} columns")
        ax.set_xticks(range(len(xlabels)), labels=xlabels, rotation=90)
    if ylabels is not None:
        if len(ylabels) != data.shape[0]:
            raise ValueError(f"{len(ylabels)} y labels for {data.shape[0]} rows")
        ax.set_yticks(range(len(ylabels)), labels=ylabels)
    if annotate:
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
    ax.grid(False)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return ax


def plot_attention_heads(
    weights,
    tokens: Sequence[str],
    *,
    title: str = "Attention weights per head",
    max_cols: int = 4,
):
    """One heatmap per head. ``weights`` has shape (H, T, T): rows are queries, columns keys."""
    w = _as_numpy(weights)
    if w.ndim != 3 or w.shape[1] != w.shape[2]:
        raise ValueError(f"plot_attention_heads expects (heads, T, T); got shape {w.shape}")
    if len(tokens) != w.shape[-1]:
        raise ValueError(f"{len(tokens)} tokens for attention over {w.shape[-1]} positions")
    heads = w.shape[0]
    cols = min(max_cols, heads)
    rows = (heads + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for h in range(rows * cols):
        ax = axes[h // cols][h % cols]
        if h >= heads:
            ax.axis("off")
            continue
        ax.imshow(w[h], cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(len(tokens)), labels=tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(len(tokens)), labels=tokens, fontsize=7)
        ax.grid(False)
        ax.set_title(f"head {h}", fontsize=10)
    fig.suptitle(f"{title} (rows: queries, columns: keys)")
    fig.tight_layout()
    return fig
