"""The detectors in memory: every fold model of every run loaded once, images in, boxes in original pixels out.

    models = detector.load_models(root, {"default": cfg["detector"]}, [0, 1, 2], tta=["hflip"])
    boxes = models.predict(images, meta)  # DETECTOR_PRED_COLUMNS: one row per box of each run/fold/TTA set

`root` is a work folder or an export (its safetensors files are loaded, its pickles never: ``pickles=False``).
`images` are the converted images (what ``vinbig images`` writes as PNGs: greyscale, or BGR as OpenCV reads the
PNG), `meta` their sizes, as meta.csv gives them (width, height, png_width, png_height, indexed by image_id, one
row per image in order). ``predict-detector`` (detector._predict) and ``vinbig predict`` are thin layers over this:
they read the images and write the rows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import cv2
import numpy as np
import pandas as pd

from vinbig.artifacts import DEFAULT_RUN, DETECTOR_PRED_COLUMNS, ArtifactError, Work, train_command
from vinbig.boxes import clip, to_original
from vinbig.devices import Device, parse_device

logger = logging.getLogger(__name__)

TTAS = ("none", "hflip")


def unflip_boxes(xyxy: np.ndarray, width: float) -> np.ndarray:
    """Boxes predicted on a horizontally flipped image of `width` pixels, mapped back to the unflipped image.

    Pixel edges, not centres: column c of the flipped image is column ``width - 1 - c`` of the original, so a
    box spanning edges ``[x0, x1]`` there spans ``[width - x1, width - x0]`` here.
    """
    b = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    return np.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], axis=1)


def weights_path(work: Work, fold: int, which: str = "best", run: str = DEFAULT_RUN) -> Path:
    """The path of fold `fold`'s `which` checkpoint; it, or (for best) its exported form, must be there."""
    from vinbig.artifacts import has_weights

    path = work.checkpoint("detector", fold, which, run)
    if not (path.is_file() or which == "best" and has_weights(path)):
        what = f"fold {fold}" + (f" of run {run}" if run != DEFAULT_RUN else "")
        raise ArtifactError(f"no detector weights for {what} at {path}; run "
                            f"'{train_command(work, 'detector', fold, run)}'{work.old_layout_hint('detector')}")
    return path


def load_fold_model(work: Work, fold: int, weights: str, path: Path, run: str = DEFAULT_RUN, *,
                    pickles: bool = True):
    """The ultralytics model of fold `fold`'s `weights` checkpoint `path` (or, for best, its exported form: an
    export copied into a work folder), loaded restricted (detector._weights); a damaged file names the fixes.
    `pickles` False (an export): the exported form only, the .pt is never read."""
    from detector._weights import load_detector

    other = "last" if weights == "best" else "best"
    return load_detector(path, f"predict with each fold's {other}.pt (--weights {other}) or train fold {fold} "
                               f"again: '{train_command(work, 'detector', fold, run)} --overwrite'", pickles=pickles)


def prediction_device(device_cfg) -> Device:
    """detector.device for prediction: one device (the first GPU of several)."""
    device = parse_device(device_cfg, "detector.device")
    if len(device.gpus) > 1:
        logger.warning("prediction runs on one device; using GPU %d of %s", device.gpus[0], list(device.gpus))
        device = Device("cuda", device.gpus[:1])
    return device


def predict_args(cfg: Mapping, device: Device, half: bool = True) -> dict:
    """ultralytics' predict() arguments of a run's detector section `cfg` on `device` (FP16 on a GPU unless not
    `half`)."""
    args = dict(imgsz=cfg["imgsz"], conf=cfg["conf"], iou=cfg["iou"], max_det=cfg["max_det"], verbose=False,
                device=device.ultralytics)
    if half:
        args.update(_fp16(args["device"]))
    return args


def _fp16(device) -> dict:
    """The predict() argument for FP16 inference on a GPU (``quantize`` since ultralytics 8.4, ``half`` before)."""
    import torch
    from ultralytics.utils import DEFAULT_CFG_DICT

    if not torch.cuda.is_available() or str(device).lower() == "cpu":
        return {}
    return {"quantize": 16} if "quantize" in DEFAULT_CFG_DICT else {"half": True}


def check_tta(tta: Sequence[str]) -> None:
    bad = sorted(set(tta) - set(TTAS))
    if bad:
        raise ValueError(f"unknown TTA {bad}; choose from {list(TTAS[1:])}")


class DetectorModels:
    """Fold models of detector runs, loaded (:func:`load_models`): ``predict(images, meta)`` gives their boxes.

    ``keys``: the ``(run, fold)`` of each model, runs then folds; ``sets``: the TTA sets each model predicts
    ("none" first); ``batch``: the images a caller should give at a time (the smallest predict_batch of the runs).
    """

    def __init__(self, models: Mapping[tuple[str, int], object], args: Mapping[str, dict], sets: Sequence[str],
                 batch: int):
        self.models, self.args, self.sets, self.batch = dict(models), dict(args), list(sets), int(batch)

    @property
    def keys(self) -> list[tuple[str, int]]:
        return list(self.models)

    def predict(self, images: Sequence[np.ndarray], meta: pd.DataFrame) -> pd.DataFrame:
        """The rows (DETECTOR_PRED_COLUMNS) of every model on `images`: model by model, each model's sets in
        order, each set image by image; boxes in original pixels (`meta`), clipped, empty ones left out."""
        frames = [rows for _, rows in self.predict_each(images, meta) if len(rows)]
        if not frames:
            return pd.DataFrame(columns=list(DETECTOR_PRED_COLUMNS))
        return pd.concat(frames, ignore_index=True).loc[:, list(DETECTOR_PRED_COLUMNS)]

    def predict_each(self, images: Sequence[np.ndarray], meta: pd.DataFrame,
                     keys: Sequence[tuple[str, int]] | None = None) -> Iterator[tuple[tuple[str, int], pd.DataFrame]]:
        """``((run, fold), rows)`` of each model of `keys` (None: all) on the same `images`, mirrored once."""
        from detector._offline import own_threads

        bgr = [cv2.cvtColor(im, cv2.COLOR_GRAY2BGR) if im.ndim == 2 else im for im in images]
        flipped = [cv2.flip(im, 1) for im in bgr] if "hflip" in self.sets else None
        for run, fold in (self.keys if keys is None else keys):
            with own_threads():
                rows = predict_images(self.models[run, fold], bgr, flipped, meta, fold, self.sets, self.args[run], run)
            yield (run, fold), rows

    def release(self, key: tuple[str, int]) -> None:
        """Let the model `key` go (memory) once it has predicted all it will."""
        del self.models[key]


def load_models(work: Work | str, runs: Mapping[str, Mapping], folds: Sequence[int], *, weights: str = "best",
                tta: Sequence[str] = (), device=None, pickles: bool = True,
                paths: Mapping[tuple[str, int], Path] | None = None, half: bool = True) -> DetectorModels:
    """Every fold `folds` of every run of `runs` (``{run: its detector section}``) of the work folder or export
    `work`, `weights` ("best" or "last") loaded before the first image is predicted; `tta`: sets beside "none"
    ("hflip"). `device`: detector.device (None: the first run's). `paths`: each model's checkpoint when the caller
    checked them (else the work folder's, each one that is missing an error naming it and the command that makes
    it). `pickles` False (an export): the exported form only, no .pt is read. `half` False: FP32 on a GPU too."""
    from detector._offline import follow_log_level  # first: ultralytics offline

    follow_log_level()
    work = Work.of(work)
    check_tta(tta)
    keys = [(run, k) for run in runs for k in folds]
    if paths is None:
        paths = {(run, k): weights_path(work, k, weights, run) for run, k in keys}  # all present first
    models = {(run, k): load_fold_model(work, k, weights, paths[run, k], run, pickles=pickles) for run, k in keys}
    dev = prediction_device(next(iter(runs.values()))["device"] if device is None else device)
    args = {run: predict_args(c, dev, half) for run, c in runs.items()}
    batch = min(c["predict_batch"] for c in runs.values())
    return DetectorModels(models, args, list(dict.fromkeys(["none", *tta])), batch)


def predict_images(model, images: list[np.ndarray], flipped: list[np.ndarray] | None, meta: pd.DataFrame, fold: int,
                   sets: Sequence[str], args: Mapping, run: str = DEFAULT_RUN) -> pd.DataFrame:
    """The rows of one fold model's prediction sets on one batch of BGR `images` (`flipped`: mirrored, for hflip;
    `meta`: their sizes, one row per image in order), image by image in batch order. Built with one array pass per
    set: a frame and a meta.csv lookup per image cost more than the rest of the bookkeeping
    (bench/bench_second_opinion.py)."""
    ids = meta.index
    frames = []
    for tta in sets:
        batch = images if tta == "none" else flipped
        results = model.predict(batch, **args)
        img = np.repeat(np.arange(len(ids)), [len(r.boxes) for r in results])
        xyxy = np.concatenate([r.boxes.xyxy.cpu().numpy().reshape(-1, 4) for r in results]).astype(np.float64)
        cls = np.concatenate([r.boxes.cls.cpu().numpy() for r in results])
        conf = np.concatenate([r.boxes.conf.cpu().numpy() for r in results])
        if tta == "hflip":
            xyxy = unflip_boxes(xyxy, np.array([im.shape[1] for im in batch], dtype=np.float64)[img])
        frames.append(_rows(np.asarray(ids, dtype=object)[img], fold, tta, cls, conf, xyxy, meta.iloc[img], run))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=DETECTOR_PRED_COLUMNS)


def _rows(image_id, fold: int, tta: str, cls: np.ndarray, conf: np.ndarray, xyxy_png: np.ndarray,
          m, run: str = DEFAULT_RUN) -> pd.DataFrame:
    """Rows of boxes predicted on PNGs, in original pixels, clipped, empty ones left out. `image_id` and `m` (meta.csv
    rows: width, height, png_width, png_height) are one per box, or one for all the boxes."""
    w, h, pw, ph = (np.asarray(m[c], dtype=np.float64) for c in ("width", "height", "png_width", "png_height"))
    xyxy = clip(to_original(xyxy_png, w, h, pw, ph), w, h)
    keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    ids = np.broadcast_to(np.asarray(image_id, dtype=object), keep.shape)[keep]
    return pd.DataFrame({"image_id": ids, "run": run, "fold": fold, "tta": tta, "class_id": cls[keep].astype(int),
                         "score": conf[keep], "x_min": xyxy[keep, 0], "y_min": xyxy[keep, 1],
                         "x_max": xyxy[keep, 2], "y_max": xyxy[keep, 3]})
