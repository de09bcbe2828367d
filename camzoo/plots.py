"""Figures: map overlays and explanation grids (matplotlib, Agg backend)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def overlay(image01: np.ndarray, saliency: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a ``[H,W]`` map in [0,1] (jet colour map) over an ``[H,W,3]`` image in [0,1]."""
    from matplotlib import colormaps

    heat = colormaps["jet"](np.clip(saliency, 0, 1))[..., :3]
    return np.clip((1 - alpha) * image01 + alpha * heat, 0, 1)


def explanation_grid(
    image01: np.ndarray,
    maps: Sequence[np.ndarray],
    titles: Sequence[str],
    path: str,
    suptitle: Optional[str] = None,
) -> None:
    """Save a one-row PNG: the input, then one overlay per map with its title."""
    plt = _plt()
    n = len(maps) + 1
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9), squeeze=False)
    axes = axes[0]
    axes[0].imshow(image01)
    axes[0].set_title("input", fontsize=8)
    for ax, m, t in zip(axes[1:], maps, titles):
        ax.imshow(overlay(image01, m))
        ax.set_title(t, fontsize=7)
    for ax in axes:
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
