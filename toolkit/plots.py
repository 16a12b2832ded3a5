"""Pictures as files: matplotlib on its headless Agg backend, written atomically, and the two generic pictures
(a confusion matrix, a grid of images) that the artifact report and others draw. A leaf: it imports only fsio."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit import fsio


def pyplot():
    """matplotlib's pyplot on the Agg backend: every plot is a file, and no machine here has a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, target: Path, dpi: int = 100) -> Path:
    """Write the figure atomically and free it (pyplot keeps every open figure otherwise)."""
    with fsio.atomic_path(Path(target)) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(fig)
    return Path(target)


def confusion_matrix_png(matrix, labels: list[str], title: str, target: Path) -> Path:
    plt = pyplot()
    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(7, 6))
    shown = np.where(matrix > 0, matrix, np.nan)
    im = ax.imshow(np.log10(shown), cmap="Blues")
    for i in range(len(labels)):
        for j in range(len(labels)):
            if matrix[i, j]:
                ax.text(
                    j,
                    i,
                    str(matrix[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if i == j else ("red" if matrix[i, j] else "black"),
                )
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="log10(count)")
    fig.tight_layout()
    return save_png(fig, target)


def image_grid_png(
    images, captions: list[str], title: str, target: Path, cols: int = 10, colours: list[str] | None = None
) -> Path:
    plt = pyplot()
    n = len(images)
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.8 + 0.4))
    for k, ax in enumerate(getattr(axes, "flat", [axes])):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k], cmap="gray", vmin=0, vmax=255)
            ax.set_title(captions[k], fontsize=7, color=(colours[k] if colours else "black"))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_png(fig, target)
