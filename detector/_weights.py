"""Detector weights as data: the restricted loader of every ``.pt`` vinbig loads, and the safetensors form of an export.

A ``.pt`` file is a pickle, and unpickling runs whatever functions the file names. Every checkpoint vinbig loads
(a fold's best.pt or last.pt, ``detector.model: yolov8s.pt``, what ultralytics itself loads while training, through
the loaders detector/_offline.py patches) goes through :func:`load_checkpoint`: ``torch.load(weights_only=True)``
with an allow-list of the classes a checkpoint legitimately holds (the torch.nn and ultralytics.nn layers and model
classes, ultralytics' argument namespace, paths and numpy numbers). Any other global is refused before anything is
unpickled, in one line naming the file and the global; so is a file that *calls* one of the allowed model classes
(pickle's REDUCE: a layer built from arguments rather than restored from its state, which is how a crafted model
config would reach ultralytics' ``eval`` of its activation).

An export holds no pickle at all: each fold is ``best.safetensors`` (the tensors) and ``best.yaml`` (the
architecture: the ultralytics model yaml, the class names and the training image size), beside where best.pt was.
:func:`load_detector` builds the model from the yaml, after checking that it names only ultralytics layers, and
loads the tensors; it takes a fold's best.pt when there is one (a work folder), else its safetensors files.
"""

from __future__ import annotations

import ast
import copy
import logging
import os
from pathlib import Path
from typing import Mapping

import torch
import yaml

from vinbig.artifacts import atomic_path, exported
from vinbig.errors import ArtifactError, cause

from detector._restricted import RefusedCheckpoint, checkpoint_globals, restricted_load

logger = logging.getLogger(__name__)



def load_checkpoint(path: str | os.PathLike, map_location="cpu"):
    """``torch.load(path, weights_only=True)`` with the allow-list of detector._restricted, ultralytics offline."""
    import detector._offline  # noqa: F401  (ultralytics offline, its loaders restricted, before it is imported)

    return restricted_load(path, map_location)


# --------------------------------------------------------------------------- the exported form


def export_weights(src: str | os.PathLike, pt: str | os.PathLike, fix: str) -> list[Path]:
    """Write the exported form of the checkpoint `src` (loaded restricted) for the path `pt`: tensors as
    safetensors, the architecture, names and image size as yaml, each atomically. Returns the two files."""
    from safetensors.torch import save_file

    model, ckpt = _checkpoint_model(src, fix)  # the tensors as stored (YOLO(best.pt) makes them float too)
    arch = {"architecture": _plain_yaml(model.yaml), "names": {int(k): str(v) for k, v in _names(model).items()},
            "imgsz": (ckpt.get("train_args") or {}).get("imgsz")}
    tensors, arch_path = exported(pt)
    tensors.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(tensors) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})  # one key: a second (a hash map) would come in any order
    with atomic_path(arch_path) as tmp:
        tmp.write_text(yaml.safe_dump(arch, sort_keys=False))
    return [tensors, arch_path]


def _checkpoint_model(path, fix: str):
    try:
        ckpt = load_checkpoint(path)
    except RefusedCheckpoint:
        raise
    except Exception as e:  # torch, zip and pickle raise many types for a damaged file
        raise ArtifactError(f"{path} is not a readable ultralytics checkpoint (truncated, damaged or another kind of "
                            f"file: {cause(e)}); {fix}") from None
    model = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(model, torch.nn.Module) or not isinstance(getattr(model, "yaml", None), dict):
        raise ArtifactError(f"{path} is not an ultralytics detector checkpoint (no model with its yaml); {fix}")
    return model, ckpt


def _names(model) -> dict:
    names = getattr(model, "names", None)
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    return names if isinstance(names, dict) else {i: str(i) for i in range(int(model.yaml.get("nc", 0)))}


def _plain_yaml(d):
    """`d` with plain YAML types only (a model yaml may hold tuples)."""
    return yaml.safe_load(yaml.safe_dump(copy.deepcopy(d), default_flow_style=None)) if d is not None else None


EXPORT_AGAIN = "export the work folder again ('vinbig export --work WORK --out DIR')"


def check_architecture(arch, path: Path, fix: str = EXPORT_AGAIN) -> dict:
    """The ultralytics model yaml `arch` of `path`, refused unless every layer is an ultralytics or torch.nn layer
    class and the activation a torch.nn class called with literal arguments (ultralytics ``eval``s it)."""
    import ultralytics.nn.tasks as tasks

    def bad(what: str) -> ArtifactError:
        return RefusedCheckpoint(f"{path}: {what}, which an ultralytics detector architecture never holds, so the "
                                 f"model was not built; {fix}")

    if not isinstance(arch, dict) or not all(isinstance(arch.get(k), list) for k in ("backbone", "head")):
        raise bad("'architecture' has no 'backbone' and 'head' lists")
    for row in arch["backbone"] + arch["head"]:
        if not (isinstance(row, list) and len(row) == 4 and isinstance(row[2], str) and isinstance(row[3], list)):
            raise bad(f"the layer {row!r} is not [from, repeats, module, args]")
        m = row[2]
        obj = getattr(torch.nn, m[3:], None) if m.startswith("nn.") else getattr(tasks, m, None)
        ok = isinstance(obj, type) and issubclass(obj, torch.nn.Module) and (
            obj.__module__.startswith(("torch.nn.modules.", "ultralytics.nn.modules.")))
        if not ok or m == "TorchVision":
            raise bad(f"the layer module {m!r}")
    act = arch.get("activation")
    if act is not None and not _literal_activation(act):
        raise bad(f"the activation {act!r}")
    return arch


def _literal_activation(act) -> bool:
    try:
        call = ast.parse(str(act).strip(), mode="eval").body
    except SyntaxError:
        return False
    if not isinstance(call, ast.Call) or not all(isinstance(a, ast.Constant) for a in call.args) or \
            not all(isinstance(k.value, ast.Constant) and k.arg for k in call.keywords):
        return False
    f = call.func
    parts = []
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    parts.append(getattr(f, "id", ""))
    cls = getattr(torch.nn, parts[0], None)
    return parts[1:] in (["nn"], ["nn", "torch"]) and isinstance(cls, type) and issubclass(cls, torch.nn.Module)


def load_exported(pt: str | os.PathLike, fix: str):
    """The ultralytics YOLO of the exported form of `pt` (safetensors and yaml); nothing is unpickled."""
    import detector._offline  # noqa: F401  (ultralytics offline, its loaders restricted, before it is imported)
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from ultralytics.nn.tasks import DetectionModel

    tensors, arch_path = exported(pt)
    try:
        doc = yaml.safe_load(arch_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ArtifactError(f"{arch_path} is not a readable architecture file ({cause(e)}); {fix}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("names"), dict) or \
            not all(isinstance(k, int) and isinstance(v, str) for k, v in doc["names"].items()):
        raise ArtifactError(f"{arch_path} lacks 'architecture', 'names' (class id: name) or 'imgsz'; {fix}")
    arch = check_architecture(copy.deepcopy(doc.get("architecture")), arch_path)
    names = dict(sorted(doc["names"].items()))
    try:
        state = load_file(str(tensors))
        model = DetectionModel(arch, nc=len(names), verbose=False)
        model.load_state_dict(state, strict=True)
    except (OSError, SafetensorError, RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise ArtifactError(f"{tensors} does not load into the architecture of {arch_path.name} ({cause(e)}); "
                            f"{fix}") from None
    return _yolo(model.float().eval(), names, doc.get("imgsz"), tensors)


def _yolo(model, names: Mapping[int, str], imgsz, source: Path):
    """An ultralytics YOLO around the built `model`, as ``YOLO(best.pt)`` would hold it."""
    from ultralytics import YOLO
    from ultralytics.utils import DEFAULT_CFG_DICT, callbacks

    model.names, model.task, model.pt_path = dict(names), "detect", str(source)
    overrides = {"task": "detect", "model": str(source), **({"imgsz": imgsz} if imgsz else {})}
    model.args = {**DEFAULT_CFG_DICT, **overrides}
    yolo = YOLO.__new__(YOLO)
    torch.nn.Module.__init__(yolo)
    yolo.callbacks = callbacks.get_default_callbacks()
    yolo.predictor = yolo.trainer = yolo.cfg = yolo.metrics = None
    yolo.ckpt, yolo.ckpt_path, yolo.model, yolo.task = {}, str(source), model, "detect"
    yolo.overrides, yolo.model_name = overrides, str(source)
    del yolo.training
    return yolo


def load_detector(pt: str | os.PathLike, fix: str, error: type[Exception] = ArtifactError, what: str = "", *,
                  pickles: bool = True):
    """The ultralytics YOLO of a fold: its checkpoint `pt` (restricted) when there is one, else its exported form
    (`pickles` False: the exported form only, `pt` is never read). A damaged file raises `error` ("<what><path> is
    not a readable ultralytics checkpoint (<cause>); <fix>"); a checkpoint with a global outside the allow-list
    raises RefusedCheckpoint (`error` with the same message when `error` is not an ArtifactError)."""
    import detector._offline  # noqa: F401  (ultralytics offline, its loaders restricted, before it is imported)

    pt = Path(pt).expanduser().resolve()  # a path, never a bare asset name ultralytics would fetch
    if not pickles or not pt.is_file() and all(p.is_file() for p in exported(pt)):
        return load_exported(pt, fix)
    from ultralytics import YOLO

    try:
        checkpoint_globals(pt)  # before ultralytics reads it (its loader is restricted too: detector/_offline.py)
        return YOLO(str(pt))
    except RefusedCheckpoint as e:
        if issubclass(error, ArtifactError):
            raise
        raise error(f"{what}{e}") from None
    except Exception as e:  # torch, zip and pickle raise many types for a damaged file; ultralytics wraps some
        raise error(f"{what}{pt} is not a readable ultralytics checkpoint (truncated, damaged or another kind of "
                    f"file: {cause(e)}); {fix}") from None
