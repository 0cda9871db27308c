"""JupyterLab server settings for ``make lab`` (``jupyter lab --config=tools/jupyter_lab_config.py``).

* No news or update checks: no "get notified about Jupyter news?" pop-up, no request to
  the network (``tools/jupyterlab-overrides.json`` also sets ``fetchNews`` to never).
* The MyST ``.md`` notebooks open unmodified: JupyterLab writes the kernel's
  ``language_info`` into a notebook's metadata when the kernel starts; a text notebook does
  not carry it (jupytext leaves it out of the file), so every notebook showed as modified
  the moment it opened. The contents manager below (jupytext's, as its server extension
  would build it) gives ``.md`` notebooks the ``language_info`` of this environment's Python
  kernel when it serves them; jupytext still leaves it out when saving. (The files' header
  carries the kernelspec that ``make install`` installs, display name "Python 3 (ewc)", for
  the same reason.)
"""

from __future__ import annotations

import copy

from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
from jupytext.async_contentsmanager import build_async_jupytext_contents_manager_class


def _kernel_language_info() -> dict:
    """What ipykernel (same environment, same Python) reports in its ``kernel_info`` reply."""
    from ipykernel.ipkernel import IPythonKernel

    return copy.deepcopy(IPythonKernel.language_info)


_LANGUAGE_INFO = _kernel_language_info()
_JupytextManager = build_async_jupytext_contents_manager_class(AsyncLargeFileManager)


class ClassContentsManager(_JupytextManager):
    """Jupytext's contents manager; text notebooks come with the kernel's ``language_info``."""

    async def get(self, path, content=True, type=None, format=None, *args, **kwargs):
        model = await super().get(path, content, type, format, *args, **kwargs)
        if (
            content
            and model.get("type") == "notebook"
            and not str(path).endswith(".ipynb")
            and isinstance(model.get("content"), dict)
        ):
            metadata = model["content"].setdefault("metadata", {})
            if metadata.get("kernelspec", {}).get("language", "python") == "python":
                metadata.setdefault("language_info", copy.deepcopy(_LANGUAGE_INFO))
        return model


c = get_config()  # noqa: F821 - provided by the Jupyter config loader
c.ServerApp.contents_manager_class = ClassContentsManager
c.LabApp.news_url = None
c.LabApp.check_for_updates_class = "jupyterlab.NeverCheckForUpdate"
