"""Run the experiment notebooks at the paper's scale (Table S1) and save the executed copies.

Usage: ``python tools/run_paper_scale.py [notebooks/NAME.md ...]``

With no argument it runs every notebook in ``notebooks/`` that has a ``PAPER_SCALE`` switch.
Each runs with ``EWC_PAPER_SCALE=1``, no per-cell time limit, and its own folder as working
directory; the executed notebook (with outputs and figures) is written to
``_build/paper-scale/NAME.ipynb``, which JupyterLab opens. Expect hours on a laptop CPU.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

import jupytext
import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "_build" / "paper-scale"


def main(argv: list[str]) -> int:
    paths = [pathlib.Path(a).resolve() for a in argv] or sorted(
        p for p in (ROOT / "notebooks").glob("*.md") if "PAPER_SCALE" in p.read_text()
    )
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    os.environ["EWC_PAPER_SCALE"] = "1"
    OUT.mkdir(parents=True, exist_ok=True)
    for path in paths:
        nb = jupytext.read(path)
        start = time.perf_counter()
        print(f"{path.relative_to(ROOT)}: running at paper scale ...", flush=True)
        NotebookClient(
            nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        ).execute()
        target = OUT / f"{path.stem}.ipynb"
        nbformat.write(nb, target)
        print(f"  done in {time.perf_counter() - start:.0f} s -> {target.relative_to(ROOT)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
