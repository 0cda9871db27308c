"""``{eval}`glued("key:fmt")``` in the book: the glued value, as ``{glue:text}`key:fmt```.

The notebooks write the numbers in their prose as inline expressions,
``{eval}`glued("fc-endA-sgd:.1f")```, so that they render in both places where the
notebooks are read:

* in JupyterLab, jupyterlab-myst evaluates the expression in the kernel
  (``ewc_lib.claims.glued`` returns the value the code cell glued, formatted);
* in the book, this role pastes the value the notebook glued under ``key`` (MyST-NB's glue
  data of the page, from the execution cache), formatted by MyST-NB's own
  ``format_plain_text``: the same text ``{glue:text}`key:fmt``` gives.

MyST-NB's ``{eval}`` role evaluates in a live kernel and so needs
``nb_execution_mode: inline``, which executes every notebook on every build, outside
jupyter-cache (no reuse of the cached results, no ``make test`` cache hand-over). This role
replaces it; the book has no other use of ``{eval}``. An expression other than
``glued("...")`` is a warning (an error with ``-W``), as is a key the page never glued.
"""

from __future__ import annotations

import ast

from docutils import nodes
from myst_nb.core.variables import RetrievalError, format_plain_text
from myst_nb.ext.glue.utils import glue_warning, retrieve_glue_data
from myst_nb.ext.utils import RoleBase


def parse_glued(expression: str) -> tuple[str, str]:
    """``'glued("key:fmt")'`` -> ``("key", "fmt")``; fmt is ``"s"`` without a colon."""
    try:
        call = ast.parse(expression.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"not a Python expression: {expression!r}") from exc
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
            and call.func.id == "glued" and len(call.args) == 1 and not call.keywords
            and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str)):
        raise ValueError(f"the book renders only {{eval}}`glued(\"key:format\")`, "
                         f"got {expression!r}")
    text = call.args[0].value
    if ":" in text:
        key, fmt = text.rsplit(":", 1)
    else:
        key, fmt = text, "s"
    return key, fmt


class GluedEvalRole(RoleBase):
    """Paste a glued value, formatted, for ``{eval}`glued("key:fmt")```."""

    def run(self):
        try:
            key, fmt = parse_glued(self.text)
        except ValueError as exc:
            return [], [glue_warning(str(exc), self.document, self.line)]
        try:
            result = retrieve_glue_data(self.document, key)
        except RetrievalError as exc:
            return [], [glue_warning(f"{exc} (glue it with ewc_lib.claims.glue)",
                                     self.document, self.line)]
        if "text/plain" not in result.data:
            return [], [glue_warning(f"No text/plain found in {key!r} data",
                                     self.document, self.line)]
        try:
            text = format_plain_text(result.data["text/plain"], fmt)
        except Exception as exc:  # noqa: BLE001 - reported as a build warning
            return [], [glue_warning(f"Failed to format {key!r} with {fmt!r}: {exc}",
                                     self.document, self.line)]
        node = nodes.inline(text, text, classes=["pasted-text"])
        self.set_source_info(node)
        return [node], []


def setup(app):
    app.setup_extension("myst_nb")  # registers its own {eval}, which this one overrides
    app.add_role("eval", GluedEvalRole(), override=True)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
