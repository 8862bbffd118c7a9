"""Layer x head heatmaps of head scores (PNG, matplotlib Agg)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..utils import save_figure_atomic


def score_heatmap(scores: torch.Tensor, path: str | Path, title: str = "", circuit: set[tuple[int, int]] = (),
                  label: str = "score") -> Path:
    """Diverging heatmap centred at 0 (sign kept); circuit heads boxed; NaN (not measured) grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = torch.as_tensor(scores, dtype=torch.float32).numpy()
    L, H = grid.shape
    finite = grid[np.isfinite(grid)]
    vmax = float(np.abs(finite).max()) if finite.size else 1.0
    vmax = vmax or 1.0
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * H + 2.5), max(3.0, 0.26 * L + 1.5)))
    cmap = plt.get_cmap("RdBu").with_extremes(bad="#cccccc")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=-vmax, vmax=vmax, aspect="auto",
                   interpolation="nearest", origin="upper")
    for l, h in circuit:
        ax.add_patch(plt.Rectangle((h - 0.5, l - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.6))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(H))
    ax.set_yticks(range(0, L, 1 if L <= 16 else 2))
    ax.set_title(title or f"{label} per head (boxed: circuit)", fontsize=9)
    fig.colorbar(im, ax=ax, label=label)
    fig.tight_layout()
    try:
        return save_figure_atomic(fig, path, dpi=120)
    finally:
        plt.close(fig)
