"""``make lab`` opens the MyST ``.md`` notebooks as notebooks (jupytext), offline.

Starts ``jupyter lab notebooks/`` from the project's environment on a free localhost port
(no token, no browser), then checks

* the contents API serves ``mnist_data.md`` as ``type: "notebook"`` (jupytext's contents
  manager, enabled by jupytext's server extension), and
* a real browser (Debian's Chromium via Playwright) opening ``/lab/tree/mnist_data.md`` gets
  the notebook editor with code cells (default viewer "Jupytext Notebook" for Markdown and
  MyST, set by ``tools/jupyterlab-overrides.json``, which ``make install`` copies to
  ``.venv/share/jupyter/lab/settings/overrides.json``), and no request leaves localhost.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import ROOT

pytestmark = pytest.mark.browser

OVERRIDES = ROOT / "tools" / "jupyterlab-overrides.json"
FACTORY = "Jupytext Notebook"


def test_overrides_file_sets_jupytext_default_viewer():
    data = json.loads(OVERRIDES.read_text())
    viewers = data["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]
    assert viewers.get("markdown") == FACTORY and viewers.get("myst") == FACTORY


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory):
    installed = pathlib.Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    if not installed.is_file() or json.loads(installed.read_text()) != json.loads(OVERRIDES.read_text()):
        pytest.fail(f"{installed} is missing or differs from {OVERRIDES.relative_to(ROOT)}: "
                    "run `make install` (it copies the file)")
    port = _free_port()
    home = tmp_path_factory.mktemp("labhome")
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"),
               JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"))
    cmd = [str(pathlib.Path(sys.executable).parent / "jupyter"), "lab", "--no-browser",
           f"--port={port}", "--ServerApp.ip=127.0.0.1", "--ServerApp.token=",
           "--ServerApp.password=", "--ServerApp.port_retries=0", str(ROOT / "notebooks")]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.insert(2, "--allow-root")
    log = home / "lab.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                _get_json(f"{base}/api/status")
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"jupyter lab did not start:\n{log.read_text()[-3000:]}")
                time.sleep(1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_contents_api_serves_md_as_notebook(lab_server):
    model = _get_json(f"{lab_server}/api/contents/mnist_data.md?content=1")
    assert model["type"] == "notebook", model["type"]
    cells = model["content"]["cells"]
    assert any(c["cell_type"] == "code" for c in cells)
    assert model["content"]["metadata"]["kernelspec"]["name"] == "python3"


def test_lab_opens_md_as_notebook_in_browser(lab_server, chromium):
    outside = []
    context = chromium.new_context(viewport={"width": 1200, "height": 900})
    try:
        page = context.new_page()

        def route(r):
            if r.request.url.startswith(lab_server):
                r.continue_()
            else:
                outside.append(r.request.url)
                r.abort()

        page.route("**/*", route)
        page.goto(f"{lab_server}/lab/tree/mnist_data.md", timeout=180_000)
        page.wait_for_function(
            "document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell').length > 3",
            timeout=180_000)
        n_code = page.evaluate("document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell').length")
    finally:
        context.close()
    assert n_code > 3
    # JupyterLab itself may ask for its news feed; nothing else may leave localhost.
    unexpected = [u for u in outside if "jupyter.org" not in u]
    assert not unexpected, f"requests outside localhost: {unexpected}"
