"""Lazy public names for a package: resolve ``name`` from its module on first use.

A package's ``__init__`` maps each public name to the submodule that defines it and installs the
two functions this returns as its module ``__getattr__`` and ``__dir__``. Importing the package
then costs nothing; ``import mapflow_tl`` does not pay for TransformerLens, transformers or plotly
until a name that needs them is used.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose public names are ``exports``
    (name → submodule, relative to the package)."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        setattr(sys.modules[package], name, value)   # resolved once: later lookups are plain
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
