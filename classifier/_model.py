"""The timm model, its weights, its input and its checkpoints.

Checkpoints hold only tensors, dicts, lists, numbers and strings, so that ``torch.load(path,
weights_only=True)`` reads them:

    best.pt  {"model": state dict (EMA weights when EMA is on), "backbone", "imgsz", "epoch", "auc"}
    last.pt  {"model", "model_ema" (or None), "optimizer", "scheduler", "scaler", "epoch", "best_auc",
              "backbone", "imgsz"}

``timm.models.load_state_dict`` reads both (preferring "model_ema"), so either can be given as
``classifier.weights`` to start another run from it.

An export holds no pickle: a fold's best.pt becomes ``best.safetensors`` (the weights) and ``best.yaml`` (the
``backbone`` and ``imgsz``) beside where it was (:func:`export_checkpoint`); :func:`load_checkpoint` reads a fold's
best.pt when there is one, else those two files.
"""

from __future__ import annotations

import difflib
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import yaml
from torch import nn

from vinbig.artifacts import atomic_path, exported
from vinbig.devices import parse_device
from vinbig.errors import ConfigError, cause

logger = logging.getLogger(__name__)


def resolve_device(device, local_rank: int = 0) -> torch.device:
    """``classifier.device``: null = CUDA if torch sees a GPU, else the CPU; under torchrun, GPU LOCAL_RANK."""
    spec = parse_device(device, "classifier.device")
    if len(spec.gpus) > 1:
        raise ConfigError(f"classifier.device {device!r}: one classifier process uses one GPU; for several, run "
                          "torchrun --nproc_per_node N -m vinbig train-classifier ... (each process takes GPU LOCAL_RANK)")
    if spec.kind == "auto":
        spec = parse_device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device("cpu") if spec.kind == "cpu" else torch.device("cuda", spec.gpus[0]) if spec.gpus else torch.device("cuda")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"classifier.device is {device!r} but torch sees no GPU; "
                              "set classifier.device: cpu (or null to pick automatically)")
        if dev.index is None or int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: one GPU per process
            dev = torch.device("cuda", local_rank)
    return dev


@contextmanager
def cudnn_benchmark(device: torch.device) -> Iterator[None]:
    """``torch.backends.cudnn.benchmark`` on while the classifier runs on a CUDA `device`, as it was afterwards.

    The classifier's input size is fixed, so cuDNN's search for the fastest convolution kernels pays once; the
    detector, which may share the process (the demo, the notebooks), keeps its own setting. A CPU device
    changes nothing.
    """
    before = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def create_model(backbone: str, drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> nn.Module:
    """``timm.create_model(backbone, num_classes=1)`` on 3 channels, the head at zero; never downloads anything."""
    import timm

    kwargs = {"drop_rate": drop_rate} if drop_rate else {}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    try:
        model = timm.create_model(backbone, pretrained=False, num_classes=1, in_chans=3, **kwargs)
    except RuntimeError as e:
        if "Unknown model" not in str(e):
            raise
        close = difflib.get_close_matches(backbone, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Similar names: {', '.join(close)}." if close else ""
        raise ConfigError(f"classifier.backbone {backbone!r} is not a timm model; see timm.list_models().{hint}")
    head = model.get_classifier()
    if isinstance(head, nn.Linear):  # start at p = 0.5: EfficientNet's head init (+/- 1/sqrt(outputs)) is wide for one
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    return model


def _head_keys(model: nn.Module) -> tuple[str, ...]:
    head = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    return (head,) if isinstance(head, str) else tuple(head)


def load_weights(model: nn.Module, path: str | os.PathLike, backbone: str) -> None:
    """Load the local weights file `path` (a state dict, a timm checkpoint or .safetensors) into `model`.

    Every tensor must fit by name and shape; only the classification head may differ (for example
    the 1000 outputs of ImageNet weights), in which case it keeps its new initialisation.
    """
    import timm.models

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"classifier.weights: no file at {path}. Put the weights of a timm '{backbone}' model there "
            f"(on a machine with internet: torch.save(timm.create_model('{backbone}', pretrained=True)"
            f".state_dict(), '{path.name}')), or set classifier.weights: null to train from scratch")
    try:
        state = timm.models.load_state_dict(str(path), use_ema=True, device="cpu", weights_only=True)
    except Exception as e:  # torch, safetensors and pickle raise many types for a foreign file
        raise ConfigError(f"classifier.weights: {path} is not a readable weights file ({type(e).__name__}: {e}); "
                          f"save it with torch.save(model.state_dict(), path) from a timm '{backbone}' model"
                          ) from None
    own = model.state_dict()
    heads = _head_keys(model)
    replaced = [k for k in state if k in own and state[k].shape != own[k].shape
                and any(k.startswith(h + ".") for h in heads)]
    for k in replaced:
        del state[k]
    missing = [k for k in own if k not in state and k not in replaced]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
             if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{len(v)} {what} (first: {v[0]})" for what, v in
                 (("missing tensors", missing), ("unexpected tensors", unexpected), ("shape mismatches", wrong)) if v]
        raise ConfigError(f"classifier.weights: {path} does not fit the timm model '{backbone}': {'; '.join(parts)}. "
                          "Set classifier.backbone to the model the file was saved from, or give the weights of "
                          f"a '{backbone}' model")
    model.load_state_dict(state, strict=not replaced)
    logger.info("loaded %d tensors from %s", len(state), path)
    if replaced:
        logger.warning("the head in %s does not fit one output (%s); it was left out and starts from zero",
                       path, ", ".join(f"{k} {tuple(own[k].shape)}" for k in replaced))


def input_stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std the model expects (its pretrained config; ImageNet's by default)."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))


class Prepare:
    """uint8 B x 1 x H x W on any device -> normalised float B x 3 x H x W on `device`."""

    def __init__(self, model: nn.Module, device: torch.device):
        mean, std = input_stats(model)
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.device = device
        self.channels_last = device.type == "cuda"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).float().expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)


def save_checkpoint(obj: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically: a reader never sees half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, made_by: str) -> list[Path]:
    """Write the exported form of the checkpoint `src` for the path `dst`: its weights (the EMA's when it has them)
    as safetensors, its backbone and image size as yaml, each atomically. Returns the two files."""
    from safetensors.torch import save_file

    ckpt = load_checkpoint(src, made_by)
    state = ckpt.get("model_ema") or ckpt["model"]
    tensors, arch = exported(dst)
    tensors.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(tensors) as tmp:
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp), metadata={"format": "pt"})
    with atomic_path(arch) as tmp:
        tmp.write_text(yaml.safe_dump({"backbone": str(ckpt["backbone"]), "imgsz": int(ckpt["imgsz"])}))
    return [tensors, arch]


def load_checkpoint(path: str | os.PathLike, made_by: str, *, pickles: bool = True) -> dict:
    """A checkpoint written by train-classifier, or its exported form when the .pt is not there (`pickles` False,
    an export: the exported form only, the .pt is never read); an error names the file and the fix.

    `made_by` is the command that trains the fold (``vinbig train-classifier --work W --fold K``): a missing
    file is made by it, a damaged one (truncated by a full disk or a killed copy, or another kind of file) by
    it with ``--overwrite``, since the fold's run cannot go on from a file that cannot be read.
    """
    from vinbig.artifacts import ArtifactError

    path = Path(path)
    if not pickles or not path.is_file() and all(p.is_file() for p in exported(path)):
        return _load_exported(path, made_by)
    if not path.is_file():
        raise ArtifactError(f"{path.name} not found at {path}; run '{made_by}'")
    again = f"train the fold again with '{made_by} --overwrite'"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or foreign file: torch, zip and pickle raise many types
        raise ArtifactError(f"{path} is not a readable checkpoint (truncated, damaged or another kind of file: "
                            f"{cause(e)}); {again}") from None
    if not isinstance(ckpt, dict) or not {"model", "backbone", "imgsz"} <= set(ckpt):
        raise ArtifactError(f"{path} is not a train-classifier checkpoint (it lacks the keys model, backbone and "
                            f"imgsz); {again}")
    return ckpt


def _load_exported(path: Path, made_by: str) -> dict:
    """The checkpoint dict (model, backbone, imgsz) of the exported form of `path`; nothing is unpickled."""
    from safetensors.torch import load_file

    from vinbig.artifacts import ArtifactError

    tensors, arch = exported(path)
    again = f"train the fold again ('{made_by} --overwrite') and export it again"
    try:
        doc = yaml.safe_load(arch.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ArtifactError(f"{arch} is not a readable yaml file ({cause(e)}); {again}") from None
    ok = isinstance(doc, dict) and isinstance(doc.get("backbone"), str) and ":" not in doc["backbone"] and \
        isinstance(doc.get("imgsz"), int) and not isinstance(doc["imgsz"], bool) and 0 < doc["imgsz"] <= 8192
    if not ok:
        raise ArtifactError(f"{arch} must hold 'backbone' (a timm model name) and 'imgsz' (a size in pixels); "
                            f"{again}")
    try:
        state = load_file(str(tensors))
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise ArtifactError(f"{tensors} is not a readable safetensors file ({cause(e)}); {again}") from None
    return {"model": state, "backbone": doc["backbone"], "imgsz": doc["imgsz"]}


def load_classifier(path: str | os.PathLike, device: torch.device, made_by: str = "vinbig train-classifier",
                    ckpt: dict | None = None) -> tuple[nn.Module, int]:
    """The model of a best.pt or last.pt (`ckpt`: its contents, already read), in eval mode on `device`, and the
    image size it was trained at."""
    from vinbig.artifacts import ArtifactError

    ckpt = ckpt if ckpt is not None else load_checkpoint(path, made_by)
    model = create_model(ckpt["backbone"])
    state = ckpt.get("model_ema") or ckpt["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # tensors that do not fit the checkpoint's own backbone: a damaged file
        raise ArtifactError(f"{path}: its weights do not fit its backbone '{ckpt['backbone']}' ({cause(e)}); "
                            f"train the fold again with '{made_by} --overwrite'") from None
    model.to(device).eval()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model, int(ckpt["imgsz"])
