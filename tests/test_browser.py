"""The built book in a real browser: Debian's Chromium, driven by Playwright, offline.

Every page of the book (one test per page of ``_toc.yml``, plus the remaining HTML pages
such as the ``index.html`` redirect) is opened from ``file://`` with every request that
leaves the build folder refused; see ``tests/browser_check.py`` for what is checked (math
typeset, no MathJax error, no raw TeX, images loaded, no JavaScript or console error, no
request outside the build folder; and the layout at 1280 px and 390 px: no displayed
equation or code line wider than its box on a desktop, no page that scrolls sideways on a
phone, long equations scroll inside a visibly scrollable box, nothing else cut off).

The checker is shown to FAIL when it should, on tiny throwaway books built in a temporary
folder: the stock Jupyter Book configuration (MathJax from a CDN, sphinx-thebe) and copies of
a good page with a broken image, a remote image, a script error, a console error, a TeX
error, and layout faults (a code line or an equation wider than its box at 1280 px, a box
that makes a phone page scroll sideways, an equation or inline formula cut off on a phone)
injected.
"""

from __future__ import annotations

import pathlib
import shutil

import pytest
from browser_check import BrowserChecker, pages_of
from conftest import ROOT, build_book, toc_docnames

pytestmark = pytest.mark.browser


@pytest.fixture(scope="session")
def book_html(built_book) -> pathlib.Path:
    if not (built_book.html / "index.html").is_file():
        pytest.skip(f"the book build produced no HTML (exit {built_book.returncode}); see tests/test_book.py")
    return built_book.html


@pytest.fixture(scope="session")
def checker(book_html, chromium):
    with BrowserChecker(book_html, browser=chromium) as c:
        yield c


def _assert_ok(report):
    assert report.ok, report.summary()


@pytest.mark.parametrize("docname", toc_docnames())
def test_page_in_browser(checker, book_html, docname):
    page = book_html / f"{docname}.html"
    if not page.is_file():
        pytest.fail(f"{docname}.html was not built")
    report = checker.check(page)
    print(report.summary())
    _assert_ok(report)


def test_other_pages_in_browser(checker, book_html):
    """Every other HTML page of the build (the index.html redirect, ...)."""
    toc = {f"{d}.html" for d in toc_docnames()}
    others = [p for p in pages_of(book_html) if p.relative_to(book_html).as_posix() not in toc]
    reports = [checker.check(p) for p in others]
    bad = [r.summary() for r in reports if not r.ok]
    assert not bad, "\n".join(bad)


# --------------------------------------------------------------------------- key pages
_LINKS_TO = """(target) => Array.from(document.querySelectorAll("article a[href], main a[href]"))
    .map((a) => a.getAttribute("href")).filter((h) => h.split("#")[0].endsWith(target))"""

_EXERCISES = """() => {
  const exercises = Array.from(document.querySelectorAll("div.exercise[id]")).map((e) => e.id);
  const solutions = Array.from(document.querySelectorAll("div.solution"));
  const solved = {};
  for (const s of solutions) {
    const dropdown = s.classList.contains("dropdown");
    for (const a of s.querySelectorAll(".admonition-title a[href]")) {
      const id = a.getAttribute("href").split("#")[1];
      if (id) solved[id] = solved[id] || dropdown;
    }
  }
  return {exercises: exercises, solved: solved, solutions: solutions.length};
}"""


def test_intro_links_to_prep_questions(checker, book_html):
    found = {}

    def links(page, report):
        found["links"] = page.evaluate(_LINKS_TO, "prep_questions.html")

    _assert_ok(checker.check(book_html / "book" / "intro.html", extra=links))
    assert found["links"], "book/intro.html has no link to the preparation questions page"


def test_prep_questions_every_exercise_has_a_dropdown_solution(checker, book_html):
    found = {}

    def exercises(page, report):
        found.update(page.evaluate(_EXERCISES))

    _assert_ok(checker.check(book_html / "book" / "prep_questions.html", extra=exercises))
    assert found["exercises"], "book/prep_questions.html has no exercise"
    missing = [e for e in found["exercises"] if e not in found["solved"]]
    not_dropdown = [e for e in found["exercises"] if e in found["solved"] and not found["solved"][e]]
    assert not missing, f"exercises without a solution: {missing}"
    assert not not_dropdown, f"solutions not collapsed in a dropdown: {not_dropdown}"


_BIBLIOGRAPHY = """() => Array.from(document.querySelectorAll("div.citation[role=doc-biblioentry]"))
    .map((c) => ({text: c.textContent.replace(/\\s+/g, " ").trim().slice(0, 80),
                  links: Array.from(c.querySelectorAll("a[href]")).map((a) => a.href)
                      .filter((h) => /^https?:\\/\\//.test(h))}))"""


def test_bibliography_every_entry_links_out(checker, book_html):
    """Every entry of the bibliography page shows a DOI, arXiv or URL link (issue 13)."""
    found = {}

    def entries(page, report):
        found["entries"] = page.evaluate(_BIBLIOGRAPHY)

    _assert_ok(checker.check(book_html / "book" / "bibliography.html", extra=entries))
    assert len(found["entries"]) >= 30, found
    unlinked = [e["text"] for e in found["entries"] if not e["links"]]
    assert not unlinked, f"bibliography entries without a link: {unlinked}"
    links = {h for e in found["entries"] for h in e["links"]}
    for expected in (
        "https://doi.org/10.1073/pnas.1611835114",
        "https://arxiv.org/abs/1612.00796",
        "https://arxiv.org/abs/1905.12558",
        "https://github.com/fKunstner/limitations-empirical-fisher",
    ):
        assert expected in links, f"{expected} not linked from the bibliography"


def test_search_shows_excerpts_offline(checker):
    """Search from file:// lists pages WITH an excerpt each (_ext/offline_search.py); results
    that are API objects (functions of the API page) carry Sphinx's description instead."""
    report, found = checker.search("empirical Fisher")
    _assert_ok(report)
    assert found.get("excerpts", 0) >= 3, found
    assert found["excerpts"] + found["described"] == found["results"], found


# --------------------------------------------------------------------------- the checker fails
TINY_PAGE = r"""# Tiny

Inline math $a^2 + b^2$ and a display equation

$$
\theta^\top F \theta
$$ (eq-tiny)

cited as {eq}`eq-tiny`. A formula as long as equation (2) of the paper fits a desktop column
but not a phone, inline, $\log p(\theta \mid D_A, D_B) = \log p(D_B \mid \theta) + \log p(\theta \mid D_A) - \log p(D_B \mid D_A)$,
and displayed:

$$
\log p(\theta \mid D_A, D_B) = \log p(D_B \mid \theta) + \log p(\theta \mid D_A) - \log p(D_B \mid D_A)
$$ (eq-tiny-long)

```python
print("a code line much longer than a phone is wide, and longer than the desktop column too, " * 2)
```

![a small plot](plot.png)

```{exercise}
:label: ex-tiny

What is $1 + 1$?
```

```{solution} ex-tiny
:class: dropdown

It is $2$.
```
"""

STOCK_CONFIG = """title: tiny stock book
execute:
  execute_notebooks: "off"
sphinx:
  extra_extensions: [sphinx_proof, sphinx_exercise]
"""


def _tiny_book(folder: pathlib.Path, config_text: str) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True)
    (folder / "_config.yml").write_text(config_text)
    (folder / "_toc.yml").write_text("format: jb-book\nroot: intro\n")
    (folder / "intro.md").write_text(TINY_PAGE)
    shutil.copy(ROOT / "references.bib", folder / "references.bib")
    for extra in ("_static", "_ext"):  # the repository's CSS/JS and its Sphinx extension
        if (ROOT / extra).is_dir():
            shutil.copytree(ROOT / extra, folder / extra)
    fig = plt.figure(figsize=(1.5, 1.0))
    plt.plot([0, 1], [0, 1])
    fig.savefig(folder / "plot.png")
    plt.close(fig)
    build = build_book(folder, timeout=600)
    assert build.returncode == 0, f"tiny book did not build:\n{build.tail(40)}"
    return build.html


@pytest.fixture(scope="module")
def tiny_repo_config_html(tmp_path_factory):
    """The tiny page built with the repository's own _config.yml."""
    return _tiny_book(tmp_path_factory.mktemp("tiny") / "repo_config", (ROOT / "_config.yml").read_text())


def test_checker_fails_on_stock_config(tmp_path, chromium):
    """Stock JB1: MathJax from a CDN (refused offline) and sphinx-thebe's duplicate script."""
    html = _tiny_book(tmp_path / "stock", STOCK_CONFIG)
    with BrowserChecker(html, browser=chromium) as c:
        report = c.check(html / "intro.html")
    text = "\n".join(report.problems)
    assert not report.ok
    assert any("mathjax" in url.lower() and url.startswith("https://") for url in report.blocked), text
    assert "math not typeset" in text, text
    assert "raw TeX" in text, text
    assert "THEBE_JS_URL" in text, text
    assert report.mjx_containers == 0 and report.math_elements >= 3


def test_checker_passes_on_repo_config(tiny_repo_config_html, chromium):
    """The same page with this repository's configuration: offline MathJax, no thebe."""
    with BrowserChecker(tiny_repo_config_html, browser=chromium) as c:
        report = c.check(tiny_repo_config_html / "intro.html")
    _assert_ok(report)
    assert report.mjx_containers >= 3 and report.images >= 1
    assert report.mathjax == "typeset"
    # the long equation scrolls (visibly) on a phone; the long code line wraps at both widths
    assert report.equations == 2 and report.code_blocks >= 1
    assert report.layout["390 px"]["equations scrolling"] == 1, report.summary()


def _broken_copy(html: pathlib.Path, tmp: pathlib.Path) -> pathlib.Path:
    out = tmp / "html"
    shutil.copytree(html, out)
    return out


def test_checker_fails_on_broken_image(tiny_repo_config_html, tmp_path, chromium):
    html = _broken_copy(tiny_repo_config_html, tmp_path)
    images = list((html / "_images").glob("*.png"))
    assert images
    for img in images:
        img.write_bytes(b"not a png")
    with BrowserChecker(html, browser=chromium) as c:
        report = c.check(html / "intro.html")
    assert any(p.startswith("broken image") for p in report.problems), report.summary()


@pytest.mark.parametrize(
    "injected,expected",
    [
        ('<img src="https://example.org/remote.png">', "blocked request outside the build folder"),
        ('<link rel="stylesheet" href="https://fonts.example.org/font.css">', "blocked request"),
        ('<script>throw new Error("boom");</script>', "page error: boom"),
        ('<script>console.error("something broke");</script>', "console error: something broke"),
        ('<img src="_images/does_not_exist.png">', "broken image"),
        (r'<span class="math notranslate nohighlight">\(\frac{1}\)</span>', "mjx-merror"),
        ("<p>left over $$x$$ text</p>", "raw TeX $$"),
        ('<p>see <a href="#">Why practice uses a much larger \\lambda</a></p>', "raw TeX \\lambda"),
        # layout: what a reader would see cut off, at desktop width and on a phone
        (
            '<pre style="white-space: pre">x = 1  # ' + "a long comment " * 12 + "</pre>",
            "code line wider than its block at 1280 px",
        ),
        (
            r'<div class="math notranslate nohighlight">\['
            + " + ".join(f"a_{{{i}}} b_{{{i}}}" for i in range(40))
            + r"\]</div>",
            "equation wider than its box at 1280 px",
        ),
        ('<div style="width: 1400px">a box wider than the column</div>', "cut off at 1280 px"),
        (
            '<div style="width: 600px">a box that fits a desktop column, not a phone</div>',
            "page scrolls sideways at 390 px",
        ),
        (
            "<style>div.math mjx-container { box-shadow: none !important; }</style>",
            "equation not visibly scrollable at 390 px",
        ),
        ("<style>span.math { overflow: hidden !important; }</style>", "cut off at 390 px"),
        (
            "<style>span.math { box-shadow: none !important; }</style>",
            "equation not visibly scrollable at 390 px: inline formula",
        ),
    ],
)
def test_checker_fails_on_injected_fault(tiny_repo_config_html, tmp_path, chromium, injected, expected):
    html = _broken_copy(tiny_repo_config_html, tmp_path)
    page = html / "intro.html"
    text = page.read_text()
    marker = 'id="tiny">'
    assert marker in text
    page.write_text(text.replace(marker, marker + injected, 1))
    with BrowserChecker(html, browser=chromium) as c:
        report = c.check(page)
    assert any(expected in p for p in report.problems), report.summary()


def test_search_excerpts_need_the_offline_texts(tiny_repo_config_html, tmp_path, chromium):
    """Without ewc-search-texts.js the tiny book's search lists its page but no excerpt
    (the browser refuses fetch() from file://); with it, the excerpt is there."""
    with BrowserChecker(tiny_repo_config_html, browser=chromium) as c:
        _, found = c.search("display equation")
    assert found == {"results": 1, "excerpts": 1, "described": 0}, found
    html = _broken_copy(tiny_repo_config_html, tmp_path)
    (html / "_static" / "ewc-search-texts.js").write_text("window.EWC_SEARCH_TEXTS = {};\n")
    with BrowserChecker(html, browser=chromium) as c:
        _, found = c.search("display equation")
    assert found["results"] == 1 and found["excerpts"] == 0, found


def test_checker_refuses_files_outside_the_build(tiny_repo_config_html, tmp_path, chromium):
    html = _broken_copy(tiny_repo_config_html, tmp_path)
    outside = tmp_path / "outside.png"
    shutil.copy(next((html / "_images").glob("*.png")), outside)
    page = html / "intro.html"
    page.write_text(page.read_text().replace('id="tiny">', f'id="tiny"><img src="{outside.as_uri()}">', 1))
    with BrowserChecker(html, browser=chromium) as c:
        report = c.check(page)
    assert any(outside.as_uri() in p and "blocked" in p for p in report.problems), report.summary()
