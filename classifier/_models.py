"""The classifiers in memory: every fold model of every run loaded once, images in, P(abnormal) out.

    models = classifier.load_models(root, {"default": cfg["classifier"]}, [0, 1, 2])
    p = models.predict(images, image_ids)  # CLASSIFIER_PRED_COLUMNS: each fold of each run, then fold -1 (the mean)

`root` is a work folder or an export (its safetensors files are loaded, its pickles never: ``pickles=False``);
`images` are the converted greyscale images (what ``vinbig images`` writes as PNGs). ``predict-classifier``
(classifier._predict) and ``vinbig predict`` are thin layers over this: they read the images and write the rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from vinbig.artifacts import ArtifactError, Work, has_weights, train_command
from vinbig.errors import ConfigError
from vinbig.log import progress

from classifier._data import to_tensor
from classifier._model import Prepare, cudnn_benchmark, load_checkpoint, load_classifier, resolve_device

TTA = ("none", "hflip")


@torch.no_grad()
def infer(model: torch.nn.Module, loader, prepare: Prepare, amp: bool = False, tta: str = "none",
          desc: str = "predict") -> tuple[np.ndarray, np.ndarray]:
    """``(dataset indices, P(abnormal))`` over `loader`; with ``tta="hflip"`` the mean over both views."""
    model.eval()
    indices, probs = [], []
    for x, _, idx in progress(loader, desc=desc, leave=False):
        indices.append(idx.numpy())
        probs.append(_scores(model, prepare(x), amp, tta))
    if not indices:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    return np.concatenate(indices), np.concatenate(probs)


@torch.no_grad()
def infer_folds(models: Mapping[int, tuple[torch.nn.Module, int]], loader, device: torch.device,
                amp: bool = False, tta: str = "none", desc: str = "predict"
                ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """``(dataset indices, {fold: P(abnormal)})``: every fold's ``(model, imgsz)`` scores each batch `loader` reads,
    the same numbers as :func:`infer` over a loader per fold. The loader's images are ``{imgsz: tensor}`` (a
    PngDataset of every fold's size)."""
    prepares = {k: Prepare(model.eval(), device) for k, (model, _) in models.items()}
    indices, probs = [], {k: [] for k in models}
    for x, _, idx in progress(loader, desc=desc, leave=False):
        indices.append(idx.numpy())
        for k, (model, imgsz) in models.items():
            probs[k].append(_scores(model, prepares[k](x[imgsz]), amp, tta))
    if not indices:
        return np.zeros(0, dtype=np.int64), {k: np.zeros(0) for k in models}
    return np.concatenate(indices), {k: np.concatenate(p) for k, p in probs.items()}


def _scores(model: torch.nn.Module, x: torch.Tensor, amp: bool, tta: str) -> np.ndarray:
    """P(abnormal) of the prepared batch `x`; with ``tta="hflip"`` the mean over both views."""
    with torch.autocast(x.device.type, dtype=torch.float16, enabled=amp and x.device.type == "cuda"):
        p = torch.sigmoid(model(x).float().squeeze(1))
        if tta == "hflip":
            p = (p + torch.sigmoid(model(torch.flip(x, dims=[3])).float().squeeze(1))) / 2
    return p.double().cpu().numpy()


def check_tta(tta: str) -> None:
    if tta not in TTA:
        raise ConfigError(f"classifier.tta {tta!r} is not one of {list(TTA)}")


def checkpoints(work: Work, runs: Mapping[str, Mapping], folds: Sequence[int]) -> dict[tuple[str, int], Path]:
    """Every fold's best.pt (or an export's safetensors form) of every run; an error names the missing ones."""
    paths = {(run, k): work.checkpoint("classifier", k, "best", run) for run in runs for k in folds}
    missing = [key for key, p in paths.items() if not has_weights(p)]  # best.pt, or an export's safetensors
    if missing:
        commands = "; ".join(f"'{train_command(work, 'classifier', k, run)}'" for run, k in missing)
        raise ArtifactError(f"no trained classifier for {len(missing)} fold(s): {paths[missing[0]]} not found; "
                            f"run {commands}{work.old_layout_hint('classifier')}")
    return paths


class ClassifierModels:
    """Fold models of classifier runs, loaded (:func:`load_models`): ``predict(images, image_ids)`` gives P(abnormal).

    ``models``: ``{run: {fold: (model, imgsz)}}``; ``paths``: each ``(run, fold)``'s checkpoint; ``tta`` and
    ``amp``: each run's; ``device``: where they score."""

    def __init__(self, models: Mapping[str, Mapping[int, tuple]], paths: Mapping[tuple[str, int], Path],
                 tta: Mapping[str, str], amp: Mapping[str, bool], device: torch.device):
        self.models, self.paths = {run: dict(m) for run, m in models.items()}, dict(paths)
        self.tta, self.amp, self.device = dict(tta), dict(amp), device

    def predict(self, images: Sequence[np.ndarray], image_ids: Sequence[str]) -> pd.DataFrame | None:
        """P(abnormal) of greyscale `images` (CLASSIFIER_PRED_COLUMNS): each run's rows of every fold, then its mean
        over folds as fold -1; None without a model."""
        ids = np.asarray(image_ids, dtype=object)
        frames = []
        for run, models in self.models.items():
            sizes = sorted({imgsz for _, imgsz in models.values()})
            x = {s: torch.stack([to_tensor(im, s) for im in images]) for s in sizes}
            with cudnn_benchmark(self.device):
                idx, p = infer_folds(models, [(x, None, torch.arange(len(images)))], self.device, self.amp[run],
                                     self.tta[run], desc=f"classifier {run}")
            per_fold = pd.concat([pd.DataFrame({"image_id": ids[idx], "run": run, "fold": k, "p_abnormal": v})
                                  for k, v in p.items()], ignore_index=True)
            mean = per_fold.groupby("image_id", as_index=False, sort=False)["p_abnormal"].mean().assign(run=run,
                                                                                                          fold=-1)
            frames += [per_fold, mean]
        return pd.concat(frames, ignore_index=True) if frames else None


def load_models(work: Work | str, runs: Mapping[str, Mapping], folds: Sequence[int], *, device=None,
                tta: str | None = None, pickles: bool = True,
                paths: Mapping[tuple[str, int], Path] | None = None) -> ClassifierModels:
    """Every fold `folds` of every run of `runs` (``{run: its classifier section}``) of the work folder or export
    `work`, each best.pt (or its exported form) read before the first image is scored. `device`:
    classifier.device (None: the first run's); `tta`: instead of each run's classifier.tta. `paths`: the
    checkpoints when the caller checked them (else each missing one is an error naming it and the command that
    makes it). `pickles` False (an export): the exported form only, no .pt is read."""
    work = Work.of(work)
    for c in runs.values():
        check_tta(tta or c["tta"])
    paths = checkpoints(work, runs, folds) if paths is None else paths
    device = resolve_device(next(iter(runs.values()))["device"] if device is None else device)
    made_by = {key: train_command(work, "classifier", key[1], key[0]) for key in paths}
    # every checkpoint read (and so readable) before the first model is built
    ckpts = {key: load_checkpoint(path, made_by[key], pickles=pickles) for key, path in paths.items()}
    models: dict[str, dict[int, tuple]] = {}
    for (run, k), path in paths.items():
        models.setdefault(run, {})[k] = load_classifier(path, device, made_by[run, k], ckpts[run, k])
    return ClassifierModels(models, paths, {run: tta or c["tta"] for run, c in runs.items()},
                            {run: c["amp"] for run, c in runs.items()}, device)
