"""Search excerpts that work when the book is opened from ``file://`` (issue 13).

Sphinx's search page lists the matching pages from ``searchindex.js`` and then fetches each
page to cut an excerpt around the search words. Browsers refuse ``fetch`` of ``file://``
URLs, so a reader who opens the built book from disk gets titles without excerpts.

After the build this extension reads every page back and writes
``_static/ewc-search-texts.js`` next to the HTML: for every page, its ``role="main"`` content
with the text and the element ids kept (so that anchored results still find their section)
and all other markup dropped. ``_static/ewc-search-offline.js``, loaded on the
search page only, answers Sphinx's ``fetch`` of a page of the book from that file when the
page is opened from ``file://``; over ``http(s)`` nothing changes.
"""

from __future__ import annotations

import html
import html.parser
import json
import pathlib

#: Tags whose content is not text a reader searches (code stays: it is part of the pages).
_SKIP = {"script", "style", "mjx-container", "svg"}
_KEEP_ID_TAGS = {"section", "div", "span", "dl", "dt", "figure", "table", "p", "li"}


class _TextWithIds(html.parser.HTMLParser):
    """The ``role="main"`` element of a page as text, keeping the elements that carry an
    ``id`` (as ``<div id=...>``) so that Sphinx finds anchored sections in it."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.stack: list[bool] = []   # per open tag inside main: did we emit a <div> for it?
        self.inside = 0               # depth inside the role="main" element (0: outside)
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in {"br", "img", "hr", "input", "meta", "link", "wbr", "col", "source"}:
            if self.inside:
                self.out.append(" ")
            return
        attrs = dict(attrs)
        if not self.inside:
            if attrs.get("role") == "main":
                self.inside = 1
                self.stack = [False]
            return
        self.inside += 1
        if tag in _SKIP:
            self.skip += 1
        ident = attrs.get("id")
        keep = bool(ident) and tag in _KEEP_ID_TAGS and not self.skip
        if keep:
            self.out.append(f'<div id="{html.escape(ident, quote=True)}">')
        self.stack.append(keep)
        if tag in {"p", "li", "dt", "dd", "tr", "td", "th", "h1", "h2", "h3", "h4", "pre", "div"}:
            self.out.append(" ")

    def handle_endtag(self, tag):
        if not self.inside:
            return
        self.inside -= 1
        if tag in _SKIP and self.skip:
            self.skip -= 1
        if self.stack and self.stack.pop():
            self.out.append("</div>")

    def handle_data(self, data):
        if self.inside and not self.skip:
            self.out.append(html.escape(data, quote=False))

    def text(self) -> str:
        return " ".join("".join(self.out).split())


def page_text(page_html: str) -> str:
    parser = _TextWithIds()
    parser.feed(page_html)
    parser.close()
    return parser.text()


def _add_scripts(app, pagename, templatename, context, doctree):
    if pagename == "search" and app.builder.name == "html":
        app.add_js_file("ewc-search-texts.js")
        app.add_js_file("ewc-search-offline.js")


def _write(app, exception):
    """After the build: read every page of the book back from the output folder (also the
    pages an incremental build did not rewrite) and write the two scripts."""
    if exception is not None or app.builder.name != "html":
        return
    out = pathlib.Path(app.outdir)
    texts = {}
    for docname in sorted(app.env.all_docs):
        page = out / f"{docname}.html"
        if page.is_file():
            texts[docname] = page_text(page.read_text(encoding="utf-8", errors="replace"))
    static = out / "_static"
    static.mkdir(parents=True, exist_ok=True)
    (static / "ewc-search-texts.js").write_text(
        "// Written by _ext/offline_search.py: the text of every page, for search excerpts\n"
        "// when the book is opened from file://.\n"
        "window.EWC_SEARCH_TEXTS = " + json.dumps(texts, ensure_ascii=False) + ";\n",
        encoding="utf-8")
    (static / "ewc-search-offline.js").write_text(_SHIM, encoding="utf-8")


_SHIM = r"""// Written by _ext/offline_search.py. On file://, Sphinx's search cannot fetch the pages it
// quotes; answer those requests from window.EWC_SEARCH_TEXTS (ewc-search-texts.js).
(function () {
  "use strict";
  if (window.location.protocol !== "file:" || !window.fetch) return;
  const texts = window.EWC_SEARCH_TEXTS || {};
  const root = new URL(".", window.location.href).href;   // search.html sits at the root
  const realFetch = window.fetch.bind(window);
  window.fetch = function (resource, init) {
    const url = new URL(typeof resource === "string" ? resource : resource.url, window.location.href);
    const href = url.href.split("#")[0].split("?")[0];
    if (href.startsWith(root) && href.endsWith(".html")) {
      const docname = decodeURIComponent(href.slice(root.length, -".html".length));
      if (Object.prototype.hasOwnProperty.call(texts, docname)) {
        const page = '<div role="main">' + texts[docname] + "</div>";
        return Promise.resolve(new Response(page, {headers: {"Content-Type": "text/html"}}));
      }
    }
    return realFetch(resource, init);
  };
})();
"""


def setup(app):
    app.connect("html-page-context", _add_scripts)
    app.connect("build-finished", _write)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
