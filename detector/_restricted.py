"""The restricted loader of every ``.pt`` vinbig loads (see detector._weights): ``torch.load(weights_only=True)`` with
an allow-list of the classes a checkpoint legitimately holds; any other global, or a call of an allowed class, is
refused before anything is unpickled.

It imports no other module of the stage: detector._offline points ultralytics' own loaders at :func:`torch_load`,
and whoever resolves ultralytics' classes here has imported detector._offline first (ultralytics offline).
"""

from __future__ import annotations

import os
import pickletools
import zipfile
from pathlib import Path

import torch

from vinbig.errors import ArtifactError

# where the classes a checkpoint may restore live: the layers and model classes, nothing else of these packages
_CLASS_MODULES = ("torch.nn.modules.", "ultralytics.nn.modules.", "ultralytics.nn.tasks")
# plain types of ultralytics' own checkpoints, which pickle calls (REDUCE) with plain arguments: a path from its
# parts, a numpy dtype from its code, a numpy number from its dtype and bytes (the one function allowed: it builds
# a number and nothing else)
_PLAIN = {
    "pathlib.PosixPath": "pathlib.PosixPath", "pathlib.WindowsPath": "pathlib.PosixPath",
    "pathlib._local.PosixPath": "pathlib.PosixPath", "pathlib._local.WindowsPath": "pathlib.PosixPath",
    "numpy.dtype": "numpy.dtype", "numpy.core.multiarray.scalar": "numpy._core.multiarray.scalar",
    "numpy._core.multiarray.scalar": "numpy._core.multiarray.scalar",
}
_NAMESPACES = ("ultralytics.utils.IterableSimpleNamespace", "ultralytics.yolo.utils.IterableSimpleNamespace")


class RefusedCheckpoint(ArtifactError):
    """A checkpoint that asks for a global outside the allow-list: it is not loaded."""


def _resolve(name: str):
    """The object `name` (``module.attr``) stands for, imported."""
    import importlib

    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        return None


def _allowed_class(name: str):
    """The class `name` when a checkpoint may hold it: an nn.Module subclass defined in a torch.nn or ultralytics.nn
    module, or ultralytics' argument namespace; else None. Never a function."""
    if name in _NAMESPACES:
        from ultralytics.utils import IterableSimpleNamespace

        return IterableSimpleNamespace
    module = name.rpartition(".")[0]
    if not any(module.startswith(m) or module == m.rstrip(".") for m in _CLASS_MODULES):
        return None
    obj = _resolve(name)
    ok = isinstance(obj, type) and issubclass(obj, torch.nn.Module) and obj.__module__ == module
    return obj if ok else None


def _plain(name: str):
    if name not in _PLAIN:
        return None
    import numpy as np

    if _PLAIN[name] == "numpy._core.multiarray.scalar":
        return np.float64(0).__reduce__()[0]
    return _resolve(_PLAIN[name])


def _pickle_bytes(path: Path) -> bytes:
    """The pickle of the torch zip archive `path` (``ARCHIVE/data.pkl``)."""
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(names) != 1:
            raise ValueError("no data.pkl in the archive")
        return z.read(names[0])


def _called_globals(data: bytes) -> set[str]:
    """The globals the pickle `data` calls with REDUCE (a symbolic run of its stack: every other value is opaque)."""
    stack: list = []
    marks: list[int] = []
    memo: dict = {}
    called = set()
    for op, arg, _ in pickletools.genops(data):
        name = op.name
        if name == "GLOBAL":
            stack.append(("global", arg.replace(" ", ".")))
        elif name == "STACK_GLOBAL":
            attr, module = stack.pop(), stack.pop()
            stack.append(("global", f"{module}.{attr}"))
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            stack.append(arg)
        elif name == "MARK":
            marks.append(len(stack))
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
        elif name == "REDUCE":
            stack.pop()
            fn = stack.pop()
            if isinstance(fn, tuple):
                called.add(fn[1])
            stack.append(None)
        elif name in ("OBJ", "INST"):  # calls too, and torch's restricted unpickler has no such opcode
            raise ValueError(f"pickle opcode {name}")
        else:
            before, after = op.stack_before, op.stack_after
            if pickletools.markobject in before:
                del stack[marks.pop():]
                before = before[:before.index(pickletools.markobject)]
            for _ in before:
                stack.pop()
            stack.extend([None] * len(after))
    return called


def checkpoint_globals(path: str | os.PathLike) -> list:
    """The allow-list entries ``(object, "module.Name")`` of the checkpoint `path`, checked before anything of it is
    unpickled. A global outside the allow-list, or a call of an allowed class, raises RefusedCheckpoint naming the
    file and the global; a file that is not a torch zip archive raises ValueError."""
    path = Path(path)
    needed = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))  # ValueError: not a zip archive
    entries = []
    for name in needed:
        obj = _plain(name)
        obj = _allowed_class(name) if obj is None else obj
        if obj is None:
            raise RefusedCheckpoint(
                f"{path} asks for the global '{name}', which no model checkpoint holds (unpickling it could run "
                f"code), so it was not loaded; use weights trained by vinbig or ultralytics, or an export of them")
        entries.append((obj, name))
    calls = {n for n in _called_globals(_pickle_bytes(path)) if n in needed and n not in _PLAIN
             and n not in _NAMESPACES}
    if calls:
        raise RefusedCheckpoint(
            f"{path} asks for the global '{sorted(calls)[0]}' to be called with arguments, which no model checkpoint "
            f"does (a checkpoint restores its layers, it does not build them), so it was not loaded; use weights "
            f"trained by vinbig or ultralytics, or an export of them")
    return entries


def restricted_load(path: str | os.PathLike, map_location="cpu"):
    """``torch.load(path, weights_only=True)`` with the allow-list of :func:`checkpoint_globals`."""
    entries = checkpoint_globals(path)
    with torch.serialization.safe_globals(entries):
        return torch.load(str(path), map_location=map_location, weights_only=True)


def torch_load(f, *args, **kwargs):
    """What replaces ultralytics' ``torch_load`` (an unrestricted unpickling): a file path goes
    through :func:`restricted_load`, anything else through ``torch.load(weights_only=True)`` with no extra global."""
    kwargs.pop("weights_only", None)
    if isinstance(f, (str, os.PathLike)):
        return restricted_load(f, kwargs.get("map_location", args[0] if args else "cpu"))
    return torch.load(f, *args, weights_only=True, **kwargs)
