"""Shared fixtures for the whole test suite.

* ``repo_root``: the repository root (the folder holding ``_config.yml``).
* ``built_book``: builds the whole book ONCE per test session with
  ``jupyter-book build --all --keep-going -W -n .`` into ``_build/`` (or into
  ``$EWC_BOOK_OUTPUT/_build``) and returns a
  :class:`BookBuild` (exit code, log, html folder). ``tests/test_book.py`` asserts on it
  and ``tests/test_browser.py`` opens the pages it produced. Set ``EWC_BOOK_HTML`` to an
  existing ``.../_build/html`` folder to test a book built elsewhere instead (no build).

The markers ``book``, ``browser`` and ``notebook`` are declared in ``pyproject.toml``;
they are registered here as well so that the tests also run with another ini file.

Order (``pytest_collection_modifyitems``): notebook tests first (they execute every notebook
and leave the results in the book's jupyter-cache), then unit tests, then the book build
(which renders the notebooks from that cache instead of running them again), then the
browser tests on the built pages.

Why ``make test`` does not use pytest-xdist (``-n 2``): a session fixture runs once per
xdist worker, so the book would be built twice, and the build must start only after every
notebook test has filled the cache, which xdist's scheduling does not guarantee. The
notebooks also do not gain much: PyTorch and NumPy already use both cores inside one
notebook. ``make unit`` (no notebook, book or browser test) may use ``-n 2``.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
VENV_BIN = pathlib.Path(sys.executable).parent


def pytest_configure(config):
    config.addinivalue_line("markers", "book: builds the whole book (slow)")
    config.addinivalue_line("markers", "browser: drives headless Chromium over the built book")
    config.addinivalue_line("markers", "notebook: executes one notebook")


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return ROOT


def book_output_root() -> pathlib.Path:
    """Where ``make test`` builds the book: the repository (``_build/``), or
    ``$EWC_BOOK_OUTPUT`` (passed to ``jupyter-book build --path-output``)."""
    given = os.environ.get("EWC_BOOK_OUTPUT")
    return pathlib.Path(given).resolve() if given else ROOT


def toc_docnames() -> list[str]:
    """Every page of ``_toc.yml`` in book order, as docnames (``book/intro``)."""
    import yaml

    def files(entries):
        for e in entries or []:
            if "file" in e:
                yield e["file"]
            yield from files(e.get("sections"))

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    docs = [toc["root"], *files(toc.get("chapters"))]
    for part in toc.get("parts", []) or []:
        docs += list(files(part.get("chapters")))
    return docs


#: Notebooks executed (and cached for the book build) by tests/test_notebooks.py in this
#: session, as absolute paths; tests/test_book.py checks the build reused them.
EXECUTED_NOTEBOOKS: set = set()

_ORDER = {"notebook": 0, "book": 2, "browser": 3}


def pytest_collection_modifyitems(session, config, items):
    """Run notebook tests first (they fill the book's execution cache), then the unit
    tests, then the book build, then the browser tests on the built book."""

    def rank(item):
        marks = {m.name for m in item.iter_markers()}
        return min((_ORDER[m] for m in marks if m in _ORDER), default=1)

    items.sort(key=rank)  # stable: keeps file order within each group


@dataclasses.dataclass
class BookBuild:
    """Result of one ``jupyter-book build`` run."""

    returncode: int
    log: str
    html: pathlib.Path
    seconds: float
    command: list

    def tail(self, n: int = 80) -> str:
        return "\n".join(self.log.splitlines()[-n:])

    def error_logs(self) -> str:
        """The ``reports/**/*.err.log`` files myst-nb writes for failing notebooks."""
        out = []
        for p in sorted((self.html / "reports").rglob("*.err.log")):
            out.append(f"===== {p.relative_to(self.html)} =====\n{p.read_text(errors='replace')}")
        return "\n".join(out)


def jupyter_book_executable() -> str:
    jb = VENV_BIN / "jupyter-book"
    return str(jb) if jb.exists() else "jupyter-book"


def build_book(
    source: pathlib.Path, *, path_output: pathlib.Path | None = None, extra_args=(), timeout: float = 3600
) -> BookBuild:
    """Run ``jupyter-book build --keep-going -W -n <source>`` and capture everything."""
    cmd = [jupyter_book_executable(), "build", "--keep-going", "-W", "-n", *extra_args]
    if path_output is not None:
        cmd += ["--path-output", str(path_output)]
    cmd.append(str(source))
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=source, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=timeout
    )
    out_root = path_output if path_output is not None else source
    return BookBuild(proc.returncode, proc.stdout, out_root / "_build" / "html", time.perf_counter() - t0, cmd)


@pytest.fixture(scope="session")
def built_book(repo_root) -> BookBuild:
    """The whole book, built once per session (or taken from ``$EWC_BOOK_HTML``)."""
    given = os.environ.get("EWC_BOOK_HTML")
    if given:
        html = pathlib.Path(given).resolve()
        if not (html / "index.html").is_file():
            pytest.fail(f"EWC_BOOK_HTML={given}: no index.html there")
        return BookBuild(0, f"(book taken from EWC_BOOK_HTML={html}; not built by this session)", html, 0.0, [])
    out = book_output_root()
    # --all (fresh Sphinx environment): every page is re-read, so every warning is reported
    # again and every notebook page is rendered from the cache that tests/test_notebooks.py
    # has just refreshed (an incremental build would keep older outputs and stay silent
    # about warnings on unchanged pages).
    build = build_book(repo_root, path_output=None if out == repo_root else out, extra_args=("--all",))
    print(f"\n[built_book] {' '.join(build.command)}: exit {build.returncode} in {build.seconds:.0f} s")
    return build


@pytest.fixture(scope="session")
def chromium():
    """One headless Debian Chromium (Playwright) for the whole session."""
    from browser_check import launch_chromium

    with launch_chromium() as browser:
        yield browser
