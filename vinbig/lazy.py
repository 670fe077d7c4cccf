"""Packages whose public names are imported on first use, so that `vinbig --help` stays fast."""

from __future__ import annotations

from importlib import import_module
from typing import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable, Callable, list[str]]:
    """``__getattr__, __dir__, __all__`` for `package`, where `exports` maps each name to its module."""
    names = sorted(exports)

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(exports[name]), name)

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__, names
