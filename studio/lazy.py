"""Heavy libraries bound at import, loaded on first use.

``from studio.lazy import torch`` gives a stand-in that imports torch the first time one of its
attributes is read, so the commands that need no tensor (``studio --version``, ``latents ls``,
``latents show``) answer in a fraction of a second instead of paying torch's import first.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """A module, imported when an attribute is first read (Python caches it in ``sys.modules``)."""

    def __init__(self, name: str):
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:  # only called for what the stand-in itself lacks
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


torch: Any = LazyModule("torch")
np: Any = LazyModule("numpy")
