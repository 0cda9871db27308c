"""The whole book as one PDF, printed by headless Chromium: ``make pdf`` writes
``_build/pdf/book.pdf``.

How: ``jupyter-book build --builder singlehtml`` renders every page of ``_toc.yml`` into one
HTML page (from the same execution cache as the HTML book, so the notebooks are not run
again when the book was built before). Debian's Chromium opens that page from ``file://``
with every request outside the build folder refused (``tests/browser_check.py``: the same
checks as for the HTML book, math typeset and no raw TeX), a print stylesheet keeps only the
text (no sidebars or buttons; solutions and other dropdowns open; the hidden source of
figure-making cells stays hidden), the layout is measured at the width of the printed column
(no equation or code line wider than its box), and Chromium prints it to A4 with page numbers
and a PDF outline of the headings.

Why Chromium rather than LaTeX: the book's math is typeset by MathJax from the same TeX in
both the web pages and the PDF, so the PDF has every macro, glued number, proof box, exercise
and figure exactly as the website; and Chromium is already installed for the browser tests
(``tests/ensure_browser.sh``), while a LaTeX toolchain able to build a Jupyter Book (XeLaTeX,
latexmk, many TeX Live packages) is a download of several hundred megabytes on every fresh CI
machine, and Sphinx's LaTeX writer handles neither the MathJax-only parts nor sphinx-proof's
boxes the same way.

Usage::

    .venv/bin/python tests/book_pdf.py            # build singlehtml, print _build/pdf/book.pdf
    .venv/bin/python tests/book_pdf.py --no-build # print an existing _build/singlehtml
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from browser_check import _LAYOUT, BrowserChecker, PageReport, launch_chromium  # noqa: E402
from conftest import ROOT, BookBuild, book_output_root, build_book, toc_docnames  # noqa: E402

#: Printed page: A4, margins in millimetres, and the scale at which Chromium lays the page out.
#: At scale 0.9 the printed column is (210 - 2 * 12) mm / 0.9 = 782 CSS pixels, wider than the
#: 688-pixel column of the desktop page on which every equation is checked to fit.
PAGE_FORMAT = "A4"
MARGIN_MM = {"top": 16, "bottom": 16, "left": 12, "right": 12}
SCALE = 0.9
PRINT_WIDTH_PX = round((210 - MARGIN_MM["left"] - MARGIN_MM["right"]) / 25.4 * 96 / SCALE)

# Only the text of the book on paper: no navigation, buttons or search; every dropdown open.
PRINT_CSS = """
@media print {
  .bd-header, .bd-header-announcement, .bd-sidebar-primary, .bd-sidebar-secondary,
  .bd-footer, .bd-footer-content, .bd-footer-article, .prev-next-area, .header-article,
  .bd-header-article, .article-header-buttons, .headerlink, button.copybtn, .toggle-button,
  .search-button-field, .theme-switch-button, #pst-back-to-top, .skip-link,
  .tag_hide-input > details.above-input, .tag_hide-cell > details.above-input,
  nav.bd-links, .sidebar-toggle { display: none !important; }
  html, body, .bd-page-width, .bd-container, .bd-container__inner, .bd-main, .bd-content,
  .bd-article-container, article.bd-article {
    max-width: none !important; min-width: 0 !important; width: 100% !important;
    flex: 1 1 100% !important; margin: 0 !important; padding-left: 0 !important;
    padding-right: 0 !important; box-shadow: none !important;
  }
  .bd-main .bd-content { display: block !important; }
  span[id^="document-"] + section { break-before: page; }   /* each chapter on a new page */
  h1, h2, h3 { break-after: avoid; }
  /* paper cannot scroll: no scroll shadows, and inline formulas are not clipped (the layout
     check below reports anything that would stick out of the column) */
  .ewc-more-left, .ewc-more-right { box-shadow: none !important; }
  span.math { overflow: visible !important; }
  figure, .cell_output img, div.math, .admonition, .proof { break-inside: avoid; }
  a { color: inherit; text-decoration: none; }
}
"""

_OPEN_EVERYTHING = """() => {
  document.querySelectorAll("details").forEach((d) => {
    if (!d.classList.contains("above-input")) d.open = true;
  });
  document.querySelectorAll(".toggle-hidden").forEach((e) => e.classList.remove("toggle-hidden"));
  document.querySelectorAll(".toggle-details").forEach((d) => { d.open = true; });
  return document.querySelectorAll("h1").length;
}"""

# The title of the book, then the title of every chapter (singlehtml marks where each
# document starts with <span id="document-NAME">, followed by its section).
_HEADINGS = """() => {
  const titles = [document.querySelector("article h1")];
  for (const mark of document.querySelectorAll('span[id^="document-"]')) {
    const section = mark.nextElementSibling;
    titles.push(section && section.querySelector("h1, h2"));
  }
  return titles.map((h) => h ? h.textContent.replace(/#$/, "").replace(/\\s+/g, " ").trim() : "");
}"""

_FOOTER = (
    '<div style="font-size: 8px; width: 100%; text-align: center; color: #666;">'
    '<span class="pageNumber"></span> / <span class="totalPages"></span></div>'
)
_HEADER = '<div style="font-size: 8px; width: 100%; text-align: center; color: #666;"><span class="title"></span></div>'


@dataclasses.dataclass
class PrintReport:
    """What happened while printing: the browser's report on the single page, the layout at
    the printed column width, the chapter headings, and the PDF."""

    page: PageReport
    pdf: pathlib.Path
    headings: list = dataclasses.field(default_factory=list)
    images: int = 0
    #: the text of every printed code block (code may hold TeX, e.g. in plot labels)
    code_text: str = ""
    print_layout: dict = dataclasses.field(default_factory=dict)
    problems: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.page.ok and not self.problems

    def summary(self) -> str:
        lines = [
            f"{self.pdf}: {len(self.headings)} chapter heading(s), {self.images} image(s), "
            f"printed in {self.seconds:.0f} s; print column {PRINT_WIDTH_PX} px: "
            + ", ".join(f"{k} {v}" for k, v in self.print_layout.items()),
            self.page.summary(),
            *self.problems,
        ]
        return "\n  ".join(lines)


def singlehtml_dir(out_root: pathlib.Path | None = None) -> pathlib.Path:
    return (out_root or book_output_root()) / "_build" / "singlehtml"


def build_singlehtml(
    source: pathlib.Path = ROOT, out_root: pathlib.Path | None = None, timeout: float = 3600
) -> BookBuild:
    """``jupyter-book build --builder singlehtml --keep-going -W -n`` (the execution cache is
    shared with the HTML build, in ``<out_root>/_build/.jupyter_cache``)."""
    out_root = out_root or book_output_root()
    build = build_book(
        source,
        path_output=None if out_root == source else out_root,
        extra_args=("--builder", "singlehtml"),
        timeout=timeout,
    )
    build.html = singlehtml_dir(out_root)
    return build


def _single_page(html_dir: pathlib.Path) -> pathlib.Path:
    """The page that holds the whole book. Sphinx's singlehtml builder writes the root
    document (``book/intro``) where its name says, but with links to ``_static`` and
    ``_images`` written as seen from the top of the folder; a copy there resolves them."""
    root = f"{toc_docnames()[0]}.html"
    page = (html_dir / root).read_text(encoding="utf-8")
    page = page.replace(f'href="{root}#', 'href="#')  # cross-references: in-page
    page = page.replace('<script src="searchindex.js"></script>', "")  # no search on paper
    top = html_dir / "book.html"
    top.write_text(page, encoding="utf-8")
    return top


def print_pdf(html_dir: pathlib.Path, pdf_path: pathlib.Path, *, browser=None) -> PrintReport:
    """Check the single HTML page in Chromium (the root page of ``_toc.yml``, which holds the
    whole book), then print it to ``pdf_path``."""
    html_dir = pathlib.Path(html_dir).resolve()
    pdf_path = pathlib.Path(pdf_path)
    pdf_path.parent.mkdir(parents=True, exist_ok=True)
    result = {}
    t0 = time.perf_counter()

    def to_pdf(page, report):
        page.add_style_tag(content=PRINT_CSS)
        page.evaluate(_OPEN_EVERYTHING)
        page.emulate_media(media="print")
        page.set_viewport_size({"width": PRINT_WIDTH_PX, "height": 1100})
        result["layout"] = page.evaluate(_LAYOUT, "print")
        result["headings"] = page.evaluate(_HEADINGS)
        result["code"] = page.evaluate(
            "() => Array.from(document.querySelectorAll('pre')).filter((p) => p.getClientRects()"
            ".length).map((p) => p.textContent).join('\\n')"
        )
        result["images"] = page.evaluate(
            "() => Array.from(document.images).filter((i) => i.getClientRects().length).length"
        )
        page.pdf(
            path=str(pdf_path),
            format=PAGE_FORMAT,
            scale=SCALE,
            print_background=True,
            margin={k: f"{v}mm" for k, v in MARGIN_MM.items()},
            display_header_footer=True,
            header_template=_HEADER,
            footer_template=_FOOTER,
            outline=True,
            tagged=True,
        )

    # The page-wide layout checks of the HTML book are for screens; on paper what counts is
    # the printed column, measured in to_pdf.
    with BrowserChecker(html_dir, browser=browser, layout=False, timeout_ms=300_000) as checker:
        page_report = checker.check(_single_page(html_dir), extra=to_pdf)
    lay = result.get("layout", {})
    out = PrintReport(
        page_report,
        pdf_path,
        result.get("headings", []),
        result.get("images", 0),
        code_text=result.get("code", ""),
        seconds=time.perf_counter() - t0,
    )
    out.print_layout = {
        "equations too wide": len(lay.get("eqOverflow", [])),
        "code too wide": len(lay.get("codeOverflow", [])),
        "cut off": len(lay.get("cutOff", [])),
    }
    out.problems += [f"equation wider than the printed column: {x}" for x in lay.get("eqOverflow", [])]
    out.problems += [f"code line wider than the printed column: {x}" for x in lay.get("codeOverflow", [])]
    out.problems += [f"cut off on paper: {x}" for x in lay.get("cutOff", [])]
    if not pdf_path.is_file():
        out.problems.append(f"no PDF written at {pdf_path}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--no-build", action="store_true", help="print the existing _build/singlehtml (no Sphinx build)"
    )
    parser.add_argument(
        "--out", type=pathlib.Path, default=None, help="PDF path (default: <build>/_build/pdf/book.pdf)"
    )
    args = parser.parse_args(argv)
    out_root = book_output_root()
    pdf = args.out or out_root / "_build" / "pdf" / "book.pdf"
    if not args.no_build:
        build = build_singlehtml(ROOT, out_root)
        print(f"singlehtml build: exit {build.returncode} in {build.seconds:.0f} s")
        if build.returncode != 0:
            print(build.tail(60))
            return build.returncode
    with launch_chromium() as browser:
        report = print_pdf(singlehtml_dir(out_root), pdf, browser=browser)
    print(report.summary())
    print(f"PDF: {pdf}" if report.ok else "PDF written, with the problems above")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
