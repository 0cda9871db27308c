"""Rewrite MyST notebooks in the exact form jupytext writes them when JupyterLab saves.

    .venv/bin/python tools/normalize_notebooks.py notebooks/*.md          # rewrite
    .venv/bin/python tools/normalize_notebooks.py --check notebooks/*.md  # exit 1 if any differs

A notebook opened in JupyterLab (``make lab``) and saved is written by jupytext with the
settings of ``notebooks/jupytext.toml``: block-style YAML header, cell options as a YAML
block, long captions folded. A file kept in that form saves back unchanged except for the edited lines
(issue 15). The header also names the kernelspec ``make install`` installs (display name
"Python 3 (ewc)"): JupyterLab writes the running kernel's kernelspec into the notebook, and a
different display name marked every notebook as modified the moment it opened.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jupytext
from jupytext.config import load_jupytext_configuration_file

ROOT = pathlib.Path(__file__).resolve().parents[1]
KERNELSPEC = {"display_name": "Python 3 (ewc)", "language": "python", "name": "python3"}


def normalized(text: str) -> str:
    """``text`` as jupytext writes it back (with the project's kernelspec)."""
    config = load_jupytext_configuration_file(str(ROOT / "notebooks" / "jupytext.toml"))
    nb = jupytext.reads(text, fmt="md:myst")
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    return jupytext.writes(nb, fmt="md:myst", config=config)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report files that differ")
    ap.add_argument("paths", nargs="+", type=pathlib.Path)
    args = ap.parse_args(argv)
    differ = []
    for path in args.paths:
        text = path.read_text(encoding="utf-8")
        new = normalized(text)
        if new != text:
            differ.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    for path in differ:
        print(("differs: " if args.check else "rewritten: ") + str(path))
    return 1 if (args.check and differ) else 0


if __name__ == "__main__":
    sys.exit(main())
