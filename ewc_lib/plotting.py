"""One figure style for the whole book."""

from __future__ import annotations

__all__ = ["use_book_style", "COLORS"]

#: Method colours, kept across chapters (the paper's: EWC red, L2 green, SGD blue).
COLORS = {
    "ewc": "#d62728",
    "l2": "#2ca02c",
    "sgd": "#1f77b4",
    "dropout": "#1f77b4",
    "exact": "#000000",
    "mc": "#9467bd",
    "empirical": "#ff7f0e",
    "batched_empirical": "#8c564b",
    "fisher": "#1f77b4",
    "ef": "#ff7f0e",
    "gd": "#7f7f7f",
}


def use_book_style() -> None:
    """Set matplotlib defaults used by every notebook (size, fonts, grid, PNG output)."""
    import matplotlib as mpl

    mpl.rcParams.update({
        "figure.figsize": (6.4, 4.0),
        "figure.dpi": 100,
        "savefig.dpi": 100,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "font.size": 10,
        "legend.frameon": False,
        "image.cmap": "gray_r",
    })
