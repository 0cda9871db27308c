"""One figure style for the whole book."""

from __future__ import annotations

__all__ = ["use_book_style", "COLORS", "BOOK_DPI", "precision_ellipse"]

#: Method colours, kept across chapters (the paper's, EWC red, L2 green, SGD blue).
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

    mpl.rcParams.update(
        {
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
        }
    )
    from .claims import class_mode

    if class_mode():
        use_class_style()


#: In the projector style (``make lab``) every figure is shown within this box (inches at
#: :data:`CLASS_DPI`, i.e. 900 x 600 screen pixels: the notebook area of JupyterLab at
#: 1440 x 900 with the file browser open), with text at :data:`CLASS_FONT_SIZE` points.
CLASS_BOX = (9.0, 6.0)
CLASS_DPI = 100
CLASS_FONT_SIZE = 15


def use_class_style() -> None:
    """The figure style for class (JupyterLab on a projector, 1440 x 900): larger text and
    lines, and every figure made by pyplot rescaled to fit :data:`CLASS_BOX` (small ones grow,
    large ones shrink, the aspect ratio is kept; the text does not shrink with them).
    ``use_book_style`` calls it when ``EWC_CLASS=1`` (set by ``make lab``)."""
    import matplotlib as mpl

    mpl.rcParams.update(
        {
            "figure.dpi": CLASS_DPI,
            "savefig.dpi": CLASS_DPI,
            "font.size": CLASS_FONT_SIZE,
            "axes.titlesize": "medium",
            "axes.labelsize": "medium",
            "xtick.labelsize": "small",
            "ytick.labelsize": "small",
            "legend.fontsize": "small",
            "lines.linewidth": 2.2,
            "lines.markersize": 8,
            "figure.hooks": ["ewc_lib.plotting:fit_class_box"],
        }
    )


def fit_class_box(fig) -> None:
    """Rescale ``fig`` (keeping its aspect ratio) to fill :data:`CLASS_BOX`, at most 1.6 times
    its size; called by pyplot for every new figure in the class style (``figure.hooks``)."""
    w, h = fig.get_size_inches()
    scale = min(CLASS_BOX[0] / w, CLASS_BOX[1] / h, 1.6)
    fig.set_size_inches(w * scale, h * scale, forward=False)


def precision_ellipse(ax, mean, prec, *, n_std=(1,), alphas=None, **kwargs):
    r"""Draw the Gaussian ``N(mean, prec^{-1})`` in two dimensions as ellipses; return the patches.

    One unfilled ellipse per entry of ``n_std``: the contour at ``k`` standard deviations,
    ``(theta - mean)^T prec (theta - mean) = k^2``, whose half-axes are ``k sqrt(eigenvalues of
    prec^{-1})`` along its eigenvectors. ``alphas`` (one per ``k``) sets each ellipse's
    opacity; other keyword arguments (``color``, ``lw``, ``ls``, ``label``) go to
    ``matplotlib.patches.Ellipse``, with ``label`` on the first ellipse only. Posteriors and
    penalties of the linear-Gaussian model (:mod:`ewc_lib.linear_gaussian`) are drawn this way
    in :ref:`sec-bayes-two-tasks-check` and :ref:`sec-diagonal-and-multitask`.

    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> fig, ax = plt.subplots()
    >>> [float(e.width) for e in precision_ellipse(ax, [0, 0], [[4.0, 0], [0, 1.0]], n_std=(1, 2))]
    [2.0, 4.0]
    >>> plt.close(fig)
    """
    import numpy as np
    from matplotlib.patches import Ellipse

    cov = np.linalg.inv(np.asarray(prec, dtype=float))
    vals, vecs = np.linalg.eigh(cov)  # ascending: vecs[:, 1] is the long axis
    angle = np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1]))
    alphas = [None] * len(n_std) if alphas is None else list(alphas)
    if len(alphas) != len(n_std):
        raise ValueError(f"alphas: expected {len(n_std)} values (one per n_std), got {len(alphas)}")
    patches = []
    for k, alpha in zip(n_std, alphas):
        extra = {} if alpha is None else {"alpha": alpha}
        patch = Ellipse(
            np.asarray(mean, dtype=float),
            2 * k * np.sqrt(vals[1]),
            2 * k * np.sqrt(vals[0]),
            angle=angle,
            fill=False,
            **extra,
            **kwargs,
        )
        ax.add_patch(patch)
        patches.append(patch)
        kwargs.pop("label", None)
    return patches
