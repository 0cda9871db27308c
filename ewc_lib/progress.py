"""Progress bars for long loops in the library and the notebooks."""

from __future__ import annotations

import warnings

__all__ = ["progress_bar"]


def progress_bar(iterable=None, **kwargs):
    """A ``tqdm.auto`` progress bar, imported on first use.

    Without ipywidgets (not part of the book's environment) ``tqdm.auto`` falls back to the
    text bar and warns "IProgress not found" once, at import; that one warning is silenced
    here so that it does not appear in notebook output. The import is lazy so that
    ``import ewc_lib`` alone never imports tqdm. Arguments are passed to ``tqdm``.

    >>> for _ in progress_bar(range(3), disable=True):
    ...     pass
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        from tqdm.auto import tqdm
    return tqdm(iterable, **kwargs)
