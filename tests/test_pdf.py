"""The book as one PDF (``make pdf``, ``tests/book_pdf.py``): built and printed once per
session, then read back with poppler's ``pdftotext``/``pdfinfo``/``pdfimages``
(``tests/ensure_pdf_tools.sh`` installs them).

Checked: the single-page HTML passes the browser checks (math typeset, no raw TeX, no error,
nothing fetched from outside) and, at the width of the printed column, no equation or code
line is wider than its box; the PDF has every chapter of ``_toc.yml`` under its number, no raw
TeX in its text, an image for every figure, and a sane number of pages.

Marked ``book``: it renders the whole book again (singlehtml builder, from the execution cache
that the notebook tests and the HTML build filled), after the HTML build in ``make test``.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from book_pdf import build_singlehtml, print_pdf
from conftest import ROOT, book_output_root, toc_docnames

pytestmark = pytest.mark.book

#: TeX that must never reach the reader: delimiters and the commands the book uses most.
RAW_TEX = re.compile(
    r"\\\(|\\\)|\\\[|\\\]|\$\$|\\(?:frac|mathcal|mathbb|begin|end|theta|lambda|"
    r"sum|nabla|operatorname|mid|top|tfrac|left|right)\b"
)


def _tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: run tests/ensure_pdf_tools.sh (Debian poppler-utils)")
    return path


@pytest.fixture(scope="session")
def printed(chromium):
    """Build the single-page HTML book and print it (once per session)."""
    out_root = book_output_root()
    build = build_singlehtml(ROOT, out_root)
    print(f"\n[printed] {' '.join(build.command)}: exit {build.returncode} in {build.seconds:.0f} s")
    assert build.returncode == 0, f"singlehtml build failed:\n{build.tail(60)}"
    warnings = [ln for ln in build.log.splitlines() if "WARNING" in ln and "over TCP" not in ln]
    assert not warnings, "\n".join(warnings[:20])
    report = print_pdf(build.html, out_root / "_build" / "pdf" / "book.pdf", browser=chromium)
    print(report.summary())
    return report


@pytest.fixture(scope="session")
def pdf_text(printed) -> str:
    out = subprocess.run(
        [_tool("pdftotext"), "-layout", str(printed.pdf), "-"], check=True, capture_output=True, text=True
    )
    return out.stdout


def _squash(text: str) -> str:
    """Compare text across line breaks and hyphenation: drop whitespace and soft hyphens."""
    return re.sub(r"[\s\u00ad]+", "", text).replace("\u2019", "'").replace("\u2018", "'")


def test_pdf_printed_without_problems(printed):
    assert printed.ok, printed.summary()


def test_pdf_has_every_chapter_with_its_number(printed, pdf_text):
    chapters = toc_docnames()
    assert len(printed.headings) == len(chapters), (
        f"{len(printed.headings)} chapter headings on the single page for {len(chapters)} pages "
        f"in _toc.yml: {printed.headings}"
    )
    numbered = [h for h in printed.headings if re.match(r"\d+\.\s", h)]
    assert len(numbered) == len(chapters) - 1, f"every chapter but the introduction is numbered: {printed.headings}"
    text = _squash(pdf_text)
    missing = [h for h in printed.headings if _squash(h) not in text]
    assert not missing, f"chapter headings not found in the PDF text: {missing}"


def _raw_tex_outside_code(text: str, code_text: str) -> list:
    """TeX in the PDF text that is not on a line of printed code (plot labels in code cells
    are TeX strings, and rightly so)."""
    code = _squash(code_text)
    hits = []
    for line in text.splitlines():
        if RAW_TEX.search(line) and _squash(line) not in code:
            hits.append(line.strip()[:120])
    return hits


def test_pdf_has_no_raw_tex(printed, pdf_text):
    hits = _raw_tex_outside_code(pdf_text, printed.code_text)
    assert not hits, "raw TeX in the PDF:\n" + "\n".join(hits[:10])


def test_raw_tex_check_can_fail():
    code = 'ax.plot(x, y, label=r"$\\theta$")'
    assert _raw_tex_outside_code("see \\frac{a}{b} here", code) == ["see \\frac{a}{b} here"]
    assert _raw_tex_outside_code("    " + code, code) == []


def test_pdf_has_math_and_figures(printed, pdf_text):
    info = subprocess.run([_tool("pdfinfo"), str(printed.pdf)], check=True, capture_output=True, text=True).stdout
    pages = int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1))
    assert 80 <= pages <= 800, f"{pages} pages"
    images = subprocess.run(
        [_tool("pdfimages"), "-list", str(printed.pdf)], check=True, capture_output=True, text=True
    ).stdout.splitlines()[2:]
    assert len(images) >= printed.images > 10, (len(images), printed.images)
    # typeset math comes out as text with the equation numbers of the book
    assert "(3.5)" in pdf_text and "θ" in pdf_text


def test_pdf_tools_find_a_missing_chapter(printed, tmp_path):
    """The chapter check can fail: a PDF of the first pages only lacks the last chapters."""
    if shutil.which("pdfseparate") is None:
        pytest.skip("pdfseparate (poppler-utils) not available")
    first = tmp_path / "first.pdf"
    subprocess.run([shutil.which("pdfseparate"), "-f", "1", "-l", "1", str(printed.pdf), str(first)], check=True)
    text = _squash(
        subprocess.run([_tool("pdftotext"), str(first), "-"], check=True, capture_output=True, text=True).stdout
    )
    assert _squash(printed.headings[-1]) not in text
