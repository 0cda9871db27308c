"""One figure style for the whole book."""

from __future__ import annotations

__all__ = ["use_book_style", "COLORS", "BOOK_DPI"]

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


#: Pixels per inch of the PNG figures. The book shows a figure at most one column wide (about
#: 700 CSS pixels on a desktop, 350 on a phone), so a 6.4-inch figure at 200 dpi (1280 pixels)
#: has at least two image pixels per CSS pixel: sharp on high-DPI screens, when zoomed on a
#: phone, and in the PDF.
BOOK_DPI = 200


def use_book_style() -> None:
    """Set matplotlib defaults used by every notebook (size, fonts, grid, PNG output at
    :data:`BOOK_DPI`; the page scales each figure to the width of the column)."""
    import matplotlib as mpl

    mpl.rcParams.update({
        "figure.figsize": (6.4, 4.0),
        "figure.dpi": BOOK_DPI,
        "savefig.dpi": BOOK_DPI,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "font.size": 10,
        "legend.frameon": False,
        "image.cmap": "gray_r",
    })
