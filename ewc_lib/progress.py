"""Progress bars for long loops in the library and the notebooks."""

from __future__ import annotations

__all__ = ["progress_bar"]


def progress_bar(iterable=None, **kwargs):
    """A ``tqdm`` progress bar, imported on first use; arguments are passed to ``tqdm``.

    * In class (``EWC_CLASS=1``, set by ``make lab``; see :func:`ewc_lib.claims.class_mode`):
      tqdm's JupyterLab widget bar (``tqdm.notebook``, needs ``ipywidgets``), which draws no
      stderr box and, with ``leave=False`` (the default here), disappears when the loop ends.
      Outside a Jupyter kernel, or without ``ipywidgets``, the text bar is used instead.
    * Otherwise (the book build, the tests, scripts): tqdm's text bar on stderr, as before;
      the notebooks' cells with bars carry ``remove-stderr`` so the book shows none.

    The import is lazy so that ``import ewc_lib`` alone never imports tqdm.

    >>> for _ in progress_bar(range(3), disable=True):
    ...     pass
    """
    from .claims import class_mode

    if class_mode() and _in_kernel():
        try:
            from tqdm.notebook import tqdm as notebook_tqdm

            kwargs.setdefault("leave", False)
            return notebook_tqdm(iterable, **kwargs)
        except ImportError:  # no ipywidgets: fall back to the text bar
            pass
    from tqdm.std import tqdm

    return tqdm(iterable, **kwargs)


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return False
    return getattr(get_ipython(), "kernel", None) is not None
