"""Execute every notebook of the book, one test per notebook.

Collected: every ``notebooks/*.md`` and every ``book/*.md`` whose front matter makes it a
jupytext/MyST notebook (a ``kernelspec``). Each test reads the file exactly as myst-nb
does (``myst_nb.core.read.read_myst_markdown_notebook`` with the book's MyST extensions),
executes it with jupyter-cache's ``single_nb_execution`` (nbclient) with the notebook's own
folder as working directory and the book's per-cell timeout (``execute.timeout`` in
``_config.yml``), and fails with the notebook's name and the failing cell's traceback.

No notebook runs twice in ``make test``. A notebook that succeeds is stored in the
jupyter-cache that the book build reads (``<output>/_build/.jupyter_cache``, the folder
myst-nb uses when ``execute.cache`` is empty), with exactly the record myst-nb itself
would write (``add_nb_to_project`` + ``cache_notebook_bundle``). ``conftest.py`` orders these
tests before the book build, so the build that follows in the same session finds every
notebook cached ("Using cached notebook") and only renders it. Every notebook is therefore
executed in every ``make test`` run, against the current library, even when an older cache
exists (a cache keyed on cell sources alone would miss a change in ``ewc_lib``).
``tests/test_book.py::test_book_used_fresh_notebook_results`` checks the build really hit the
cache.

Set ``EWC_BOOK_OUTPUT`` to build elsewhere than the repository (``--path-output``); the
cache then lives under that folder.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import time

import pytest
import yaml
from conftest import EXECUTED_NOTEBOOKS, ROOT, book_output_root

NOTEBOOK_READ_FMT = {"type": "plugin", "name": "myst_nb_md"}  # what myst-nb records


def _front_matter(path: pathlib.Path) -> dict:
    text = path.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    try:
        meta = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def is_notebook(path: pathlib.Path) -> bool:
    meta = _front_matter(path)
    return "kernelspec" in meta and "jupytext" in meta


def notebook_paths() -> list[pathlib.Path]:
    nbs = sorted((ROOT / "notebooks").glob("*.md"))
    nbs += [p for p in sorted((ROOT / "book").glob("*.md")) if is_notebook(p)]
    return nbs


def book_config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def cell_timeout() -> int:
    return int(book_config().get("execute", {}).get("timeout", 600))


def read_like_myst_nb(path: pathlib.Path):
    """The notebook exactly as myst-nb reads it for the book (same cells, same hash)."""
    import dataclasses as dc

    from myst_nb.core.read import read_myst_markdown_notebook
    from myst_parser.config.main import MdParserConfig

    extensions = book_config().get("parse", {}).get("myst_enable_extensions", [])
    md_config = dc.replace(MdParserConfig(), enable_extensions=set(extensions))
    return read_myst_markdown_notebook(
        path.read_text(encoding="utf-8"), config=md_config, add_source_map=True, path=str(path)
    )


def cache_path() -> pathlib.Path:
    """The jupyter-cache folder the book build will read."""
    configured = book_config().get("execute", {}).get("cache") or ""
    if configured:
        return (ROOT / configured).resolve()
    return book_output_root() / "_build" / ".jupyter_cache"


@dataclasses.dataclass
class NotebookRun:
    path: pathlib.Path
    seconds: float
    error: str | None


def execute_and_cache(path: pathlib.Path) -> NotebookRun:
    """Execute ``path`` as myst-nb would and, on success, store it in the book's cache."""
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn
    from jupyter_cache.executors.utils import single_nb_execution

    nb = read_like_myst_nb(path)
    t0 = time.perf_counter()
    result = single_nb_execution(
        nb, cwd=str(path.parent), timeout=cell_timeout(), allow_errors=False, meta_override=True
    )
    seconds = time.perf_counter() - t0
    if result.err is not None:
        message = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(result.err).__name__}: {result.err}")
        return NotebookRun(path, seconds, message)
    cache = get_cache(str(cache_path()))
    record = cache.add_nb_to_project(str(path), read_data=NOTEBOOK_READ_FMT)
    cache.cache_notebook_bundle(
        CacheBundleIn(nb, record.uri, data={"execution_seconds": result.time}), check_validity=False, overwrite=True
    )
    return NotebookRun(path, seconds, None)


NOTEBOOKS = notebook_paths()


def test_notebooks_found():
    assert any(p.parent.name == "notebooks" for p in NOTEBOOKS)
    for p in (ROOT / "notebooks").glob("*.md"):
        assert is_notebook(p), f"{p.relative_to(ROOT)} lacks the jupytext/kernelspec header"


def test_no_ipynb_in_repo():
    stray = [p for p in (ROOT / "notebooks").glob("*.ipynb")] + list((ROOT / "book").glob("*.ipynb"))
    assert not stray, f"never write .ipynb into the repository: {stray}"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_notebook_executes(path):
    run = execute_and_cache(path)
    rel = path.relative_to(ROOT).as_posix()
    print(f"{rel}: executed in {run.seconds:.1f} s wall")
    if run.error is not None:
        pytest.fail(f"notebook {rel} failed (after {run.seconds:.0f} s):\n{run.error}", pytrace=False)
    EXECUTED_NOTEBOOKS.add(path.resolve())
