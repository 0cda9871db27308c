"""What a notebook states: the numbers in its prose and the claims it asserts.

Two helpers that make the notebooks read and run the same in the book and in class
(JupyterLab from ``make lab``):

* :func:`glue` and :func:`glued`: the numbers in the prose. A code cell glues a value
  (``glue("fc-endA-sgd", 97.3)``, MyST-NB's ``glue`` with ``display=False``, so the book can
  paste it) and keeps a copy in this kernel; the prose writes
  ``{eval}`glued("fc-endA-sgd:.1f")```. In JupyterLab, jupyterlab-myst evaluates that inline
  expression in the kernel and shows ``97.3``; in the book, ``_ext/glued_eval.py`` pastes the
  glued value with the same format, exactly as ``{glue:text}`fc-endA-sgd:.1f``` would.
  (MyST-NB's own ``{eval}`` needs a live kernel, ``nb_execution_mode: inline``, which would
  bypass the execution cache.)
* :func:`claim`: the claims a notebook asserts, ``claim(condition, "what it says", detail)``
  in place of ``assert condition, detail``. By default a claim that does not hold raises
  :class:`ClaimFailed`, an ``AssertionError`` (so the book build and the tests fail, exactly
  as with ``assert``). In class mode (environment variable ``EWC_CLASS=1``, which ``make lab``
  sets) nothing is raised: at the end of the cell a table shows which of its claims hold at
  the settings used and which do not, and the notebook goes on. Exploring other settings is
  the point of running a notebook in class, and the claims are only asserted for the
  defaults: every run outside class mode (book build, tests, ``jupyter execute``) is at the
  defaults the files carry. :func:`check` does the same for a block (tests, scripts).

>>> claim(1 + 1 == 2, "one plus one is two")
"""

from __future__ import annotations

import os
import sys

__all__ = ["CLASS_ENV", "class_mode", "glue", "glued", "claim", "check", "ClaimFailed", "Claims"]

#: Environment variable that turns on class mode (``make lab`` sets it to 1).
CLASS_ENV = "EWC_CLASS"

_VALUES: dict = {}


def class_mode() -> bool:
    """True when the notebook runs in class (``EWC_CLASS=1``): claims are reported, not
    asserted; figures use the projector style; progress bars are JupyterLab widgets."""
    return os.environ.get(CLASS_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def glue(key: str, value, display: bool = False):
    """MyST-NB's ``glue(key, value, display=False)``, keeping a copy for :func:`glued`.

    The book pastes the value with ``{eval}`glued("key:fmt")``` (or ``{glue:text}``), exactly
    as if MyST-NB's ``glue`` had been called.
    """
    _VALUES[key] = value
    try:
        from myst_nb import glue as nb_glue
    except ImportError:  # pragma: no cover - myst-nb is part of the pinned set
        return None
    return nb_glue(key, value, display=display)


def glued(key_fmt: str) -> str:
    """The glued value ``key`` formatted with ``fmt`` (``"key:fmt"``, the mini-language of
    ``format``; MyST-NB's ``{glue:text}`` syntax). Without ``:fmt``: ``str(value)``.

    The formatting is MyST-NB's (``format_plain_text``): ``s`` formats ``str(value)``,
    ``d``/``x``/... ``int(value)``, ``f``/``e``/``g``/``%`` ``float(value)``.

    A key not glued yet (its cell has not run) gives a readable placeholder, not an error, so
    that a Markdown cell rendered before the code above it still reads as text.

    >>> _ = glue("doc-example", 0.12345)
    >>> glued("doc-example:.2f"), glued("doc-example:.1%")
    ('0.12', '12.3%')
    """
    key, _, fmt = key_fmt.rpartition(":") if ":" in key_fmt else (key_fmt, "", "s")
    if key not in _VALUES:
        return f"[{key}: run the cells above]"
    value = _VALUES[key]
    if type(value).__module__.startswith("IPython.") and isinstance(getattr(value, "data", None), str):
        value = value.data  # IPython.display.Markdown and friends
    return _format_like_myst_nb(value, fmt)


def _format_like_myst_nb(value, fmt: str) -> str:
    """``myst_nb.core.variables.format_plain_text`` applied to the value itself."""
    if fmt == "":
        return str(value)
    kind = fmt[-1]
    if kind == "s":
        value = str(value)
    elif kind in "bcdoxX":
        value = int(value)
    elif kind in "eEfFgGn%":
        value = float(value)
    return format(value, fmt)


class ClaimFailed(AssertionError):
    """Raised when a claim does not hold outside class mode."""


class Claims:
    """Collects the claims of one cell; see :func:`check`."""

    def __init__(self, title: str | None = None, strict: bool | None = None):
        self.title = title
        self.strict = (not class_mode()) if strict is None else strict
        self.rows: list[tuple[bool, str, str]] = []

    def __call__(self, holds, claim: str, detail="") -> bool:
        """Record one claim; return whether it holds."""
        ok = bool(holds)
        self.rows.append((ok, str(claim), "" if detail is None else str(detail)))
        return ok

    @property
    def failed(self) -> list[tuple[bool, str, str]]:
        return [r for r in self.rows if not r[0]]

    def table(self) -> str:
        """The claims as a Markdown table (holds / does not hold)."""
        lines = ["| | claim | detail |", "| --- | --- | --- |"]
        for ok, claim, detail in self.rows:
            mark = "holds" if ok else "**does not hold**"
            lines.append(f"| {mark} | `{_cell(claim)}` | {_cell(detail)} |")
        head = f"**{self.title}**\n\n" if self.title else ""
        n_bad = len(self.failed)
        summary = f"{len(self.rows) - n_bad} of {len(self.rows)} claims hold at these settings" + (
            "" if not n_bad else " (reported, not asserted: class mode)"
        )
        return head + summary + "\n\n" + "\n".join(lines)

    def finish(self) -> None:
        """Raise if a claim failed (default), or show the table (class mode)."""
        if self.strict:
            if self.failed:
                msg = "; ".join(f"{c}" + (f" ({d})" if d else "") for _, c, d in self.failed)
                raise ClaimFailed(f"{len(self.failed)} claim(s) do not hold: {msg}")
            return
        _show_markdown(self.table())

    def __enter__(self) -> Claims:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.finish()
        return False


def check(title: str | None = None, strict: bool | None = None) -> Claims:
    """A context manager that collects the claims of a cell and checks them at its end.

    ``claim(condition, "what it says", detail)`` records one claim. When the block ends:
    outside class mode, ``ClaimFailed`` (an ``AssertionError``) names every claim that does
    not hold (silent when all hold); in class mode (``EWC_CLASS=1``) a table of all claims is
    shown and the notebook goes on. ``strict=True`` / ``False`` forces either behaviour.

    >>> with check(strict=True) as claim:
    ...     claim(2 > 1, "two exceeds one")
    True
    """
    return Claims(title, strict)


_PENDING: list = []  # class mode: claims of the running cell, shown when it ends
_HOOKED: list = []


def claim(holds, text: str | None = None, detail="") -> None:
    """Assert one claim of the notebook.

    ``claim(condition, detail=message)`` replaces ``assert condition, message``. ``text``
    names the claim; by default it is the source of the ``holds`` argument, read from the
    calling code (``executing``, which IPython uses for its tracebacks).

    Default: ``ClaimFailed`` (an ``AssertionError``) when ``holds`` is false, with ``text`` and
    ``detail`` as the message. Class mode (``EWC_CLASS=1``): never raises; in a Jupyter kernel
    the claims of a cell are shown as one table when the cell ends, elsewhere each is printed.
    Returns ``None``, like ``assert``: a cell that ends with a claim displays nothing.

    >>> claim(2 > 1, "two exceeds one", "2 vs 1")
    >>> claim(1 > 2)
    Traceback (most recent call last):
    ...
    ewc_lib.claims.ClaimFailed: 1 > 2
    """
    if text is None:
        text = _argument_source(sys._getframe(1))
    ok = bool(holds)
    detail = "" if detail is None else str(detail)
    if not class_mode():
        if not ok:
            raise ClaimFailed(str(text) + (f" ({detail})" if detail else ""))
        return None
    ip = _kernel_shell()
    if ip is None:
        print(("holds: " if ok else "DOES NOT HOLD: ") + str(text) + (f" ({detail})" if detail else ""))
        return None
    if not _HOOKED or _HOOKED[0] is not ip:
        ip.events.register("post_run_cell", _show_pending)
        _HOOKED[:] = [ip]
    _PENDING.append((ok, str(text), detail))
    return None


def _argument_source(frame) -> str:
    """The source text of the first argument of the ``claim(...)`` call running in ``frame``."""
    try:
        import ast

        import executing

        node = executing.Source.executing(frame).node
        source = executing.Source.for_frame(frame)
        if isinstance(node, ast.Call) and node.args:
            return " ".join(source.asttokens().get_text(node.args[0]).split())
    except Exception:  # noqa: BLE001 - a name for the claim is a convenience
        pass
    return "claim"


def _show_pending(*_args) -> None:
    if not _PENDING:
        return
    report = Claims(strict=False)
    report.rows = list(_PENDING)
    _PENDING.clear()
    _show_markdown(report.table())


def _kernel_shell():
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return None
    ip = get_ipython()
    return ip if getattr(ip, "kernel", None) is not None else None


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _show_markdown(text: str) -> None:
    if _kernel_shell() is None:
        print(text)
        return
    from IPython.display import Markdown, display

    display(Markdown(text))
