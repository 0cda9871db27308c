"""The whole book builds with ``jupyter-book build --keep-going -W -n .``: exit 0, no warning.

The build runs once per session (fixture ``built_book`` in ``conftest.py``, shared with
``tests/test_browser.py``), after the notebook tests, which leave every notebook executed in
the book's jupyter-cache; the build then only renders them.
"""

from __future__ import annotations

import re

import pytest
from conftest import EXECUTED_NOTEBOOKS, ROOT, toc_docnames

pytestmark = pytest.mark.book

# Sphinx's "path:line: WARNING: message" / "ERROR:" lines. The kernel's own stderr line
# "[IPKernelApp] WARNING | Kernel is running over TCP ..." is not a Sphinx warning.
_PROBLEM = re.compile(r"(WARNING|ERROR|CRITICAL|SEVERE):|Traceback \(most recent call last\)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def problem_lines(log: str) -> list[str]:
    lines = [_ANSI.sub("", line) for line in log.splitlines()]
    return [line for line in lines if _PROBLEM.search(line) and "[IPKernelApp]" not in line]


def test_book_builds_without_warnings(built_book):
    if not built_book.command:
        pytest.skip(built_book.log)
    problems = problem_lines(built_book.log)
    if built_book.returncode != 0 or problems:
        listing = "\n".join(problems[:60]) or "(no WARNING/ERROR line found)"
        pytest.fail(
            f"jupyter-book build exited {built_book.returncode} after {built_book.seconds:.0f} s "
            f"with {len(problems)} warning/error line(s):\n{listing}\n\n"
            f"----- last lines of the log -----\n{built_book.tail(40)}\n"
            f"----- notebook error reports -----\n{built_book.error_logs() or '(none)'}",
            pytrace=False,
        )
    assert (built_book.html / "index.html").is_file()


def test_every_toc_page_built(built_book):
    missing = [d for d in toc_docnames() if not (built_book.html / f"{d}.html").is_file()]
    assert not missing, f"pages in _toc.yml without HTML: {missing}"


def test_book_used_fresh_notebook_results(built_book):
    """The notebooks executed by tests/test_notebooks.py in this session were taken from the
    cache by the build ("Using cached notebook"), not executed a second time."""
    if not EXECUTED_NOTEBOOKS or not built_book.command:
        pytest.skip("no notebook executed by tests/test_notebooks.py before this build")
    log = _ANSI.sub("", built_book.log)
    in_toc = {str(ROOT / f"{d}.md") for d in toc_docnames()}
    executed = sorted(str(p) for p in EXECUTED_NOTEBOOKS if str(p) in in_toc)
    again = [p for p in executed if f"{p}: Executing notebook" in log]
    not_cached = [p for p in executed if f"{p}: Using cached notebook" not in log]
    assert not again, (
        "the book build executed these notebooks a second time (were they edited "
        f"after their notebook test ran?): {again}"
    )
    assert not not_cached, f"the book build did not take these from the cache: {not_cached}"


_STDERR_BLOCK = re.compile(r'<div class="output stderr[^"]*">(.*?)</pre>', re.DOTALL)
_TAG = re.compile(r"<[^>]+>")
_WARNING_WORD = re.compile(r"\b\w*(Warning|Error)\b|Traceback")


def test_no_warnings_in_cell_outputs(built_book):
    """Warnings are errors in this book: no cell may show a Python warning (or an error) on
    stderr. Progress bars on stderr are fine."""
    import html as html_lib

    bad = []
    for doc in toc_docnames():
        page = built_book.html / f"{doc}.html"
        if not page.is_file():
            continue
        for block in _STDERR_BLOCK.findall(page.read_text(errors="replace")):
            text = html_lib.unescape(_TAG.sub("", block))
            m = _WARNING_WORD.search(text)
            if m:
                line = next(ln for ln in text.splitlines() if m.group(0) in ln)
                bad.append(f"{doc}: {line.strip()[:200]}")
    assert not bad, "cell outputs with warnings:\n" + "\n".join(bad)
