"""Figures: matplotlib without a display, written atomically like every rnnkit file."""

from __future__ import annotations


def new_figure(width: float = 7, height: float = 4):
    """A (figure, axes) pair on matplotlib's file-only Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def save_figure(fig, path, dpi: int = 120) -> None:
    """Write ``fig`` as PNG to ``path`` (temporary file, then rename) and close it."""
    import matplotlib.pyplot as plt

    from rnnkit.checkpoint import atomic_write

    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    plt.close(fig)
