"""Let the single-page HTML builder (``make pdf``) render every node the HTML builder can.

Extensions such as sphinx-proof register their node visitors for the ``html`` builder only
(``app.add_node(node, html=...)``). Sphinx looks translator handlers up by builder name, and
once any extension registers a handler for ``singlehtml`` the ``html`` ones are no longer
used there, so the single-page build stops at the first ``assumption_node``. This copies every
``html`` handler that ``singlehtml`` lacks, after all extensions are set up.
"""

from __future__ import annotations


def _copy_html_handlers(app, config):
    handlers = app.registry.translation_handlers
    single = handlers.setdefault("singlehtml", {})
    for node_name, visitors in handlers.get("html", {}).items():
        single.setdefault(node_name, visitors)


def setup(app):
    app.connect("config-inited", _copy_html_handlers, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
