"""One ultralytics dataset per fold: linked PNGs, YOLO label files and data.yaml.

Layout of ``WORK/detector/data/fold{k}/``::

    images/train/<image_id>.png -> ../../../../../images/train/<image_id>.png   (relative links)
    images/val/<image_id>.png
    labels/train/<image_id>.txt     one line per box: class cx cy w h, normalized; empty for "No finding"
    labels/val/<image_id>.txt
    data.yaml                       the 14 class names in competition order, no absolute paths
    source.sha1                     fingerprint of the labels, folds and sizes it was made from

Training images are the other folds' images, validation images fold k's. A YOLO label is normalized by
the original DICOM width and height: with vinbig's per-axis scaling (vinbig.boxes) the normalized box
is the same on the PNG, whatever size the PNG has.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from vinbig.artifacts import CLASS_NAMES, NO_FINDING, Work, check_fold, png_path, read_folds, read_labels, read_meta
from vinbig.boxes import clip
from vinbig.log import some

logger = logging.getLogger(__name__)

DETECTOR_CLASSES = CLASS_NAMES[:NO_FINDING]  # YOLO detects the 14 findings; "No finding" is an empty label
_DIGITS = 6  # decimals written: 0.5e-6 of 3,400 px is well under a pixel


def boxes_to_yolo(boxes: np.ndarray, width, height) -> np.ndarray:
    """Original-pixel ``x_min, y_min, x_max, y_max`` (N x 4) -> normalized ``cx, cy, w, h``."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w = np.asarray(width, dtype=np.float64)
    h = np.asarray(height, dtype=np.float64)
    return np.stack([(b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h,
                     (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h], axis=1)


def yolo_to_boxes(xywhn: np.ndarray, width, height) -> np.ndarray:
    """Normalized ``cx, cy, w, h`` -> original-pixel ``x_min, y_min, x_max, y_max``; inverse of boxes_to_yolo."""
    a = np.asarray(xywhn, dtype=np.float64).reshape(-1, 4)
    w = np.asarray(width, dtype=np.float64)
    h = np.asarray(height, dtype=np.float64)
    return np.stack([(a[:, 0] - a[:, 2] / 2) * w, (a[:, 1] - a[:, 3] / 2) * h,
                     (a[:, 0] + a[:, 2] / 2) * w, (a[:, 1] + a[:, 3] / 2) * h], axis=1)


def label_text(class_ids, boxes, width: float, height: float) -> str:
    """The YOLO label file of one image: ``class cx cy w h`` per box, ``""`` for an image without boxes."""
    xywhn = boxes_to_yolo(boxes, width, height)
    return "".join(f"{int(c)} " + " ".join(f"{v:.{_DIGITS}f}" for v in row) + "\n"
                   for c, row in zip(class_ids, xywhn))


def training_boxes(labels: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """The finding boxes of labels.csv, clipped to their image; boxes under one pixel wide or high dropped."""
    boxes = labels[labels.class_id != NO_FINDING].merge(meta[["image_id", "width", "height"]], on="image_id")
    xyxy = clip(boxes[["x_min", "y_min", "x_max", "y_max"]].to_numpy(), boxes.width.to_numpy(),
                boxes.height.to_numpy())
    boxes.loc[:, ["x_min", "y_min", "x_max", "y_max"]] = xyxy
    keep = (xyxy[:, 2] - xyxy[:, 0] >= 1) & (xyxy[:, 3] - xyxy[:, 1] >= 1)
    if (~keep).any():
        logger.warning("%d box(es) of labels.csv are under one pixel once clipped to the image; left out",
                       int((~keep).sum()))
    return boxes[keep]


def fold_dataset(work: Work, fold: int) -> Path:
    """Write (or reuse, when its inputs are unchanged) the dataset of `fold`; return its data.yaml."""
    image_dir = work.images("train")
    meta = read_meta(image_dir)
    labels = read_labels(work)
    folds = read_folds(work)
    check_fold(work, fold, folds)
    missing = sorted(set(folds.image_id) - set(meta.image_id))
    if missing:
        logger.warning("%d image(s) of folds.csv have no PNG in %s (failed conversion?), left out: %s",
                       len(missing), image_dir, some(missing))
    folds = folds[folds.image_id.isin(meta.image_id)]
    boxes = training_boxes(labels[labels.image_id.isin(folds.image_id)], meta)

    out = work.detector_data(fold)
    stamp = _fingerprint(fold, folds, boxes, meta, image_dir)
    if (out / "source.sha1").is_file() and (out / "source.sha1").read_text() == stamp:
        logger.info("fold %d dataset is up to date in %s", fold, out)
        return work.data_yaml(fold)

    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    sizes = meta.set_index("image_id")[["width", "height"]]
    by_image = {i: g for i, g in boxes.groupby("image_id")}
    for subset, ids in (("train", folds.image_id[folds.fold != fold]), ("val", folds.image_id[folds.fold == fold])):
        (tmp / "images" / subset).mkdir(parents=True)
        (tmp / "labels" / subset).mkdir(parents=True)
        for image_id in ids:
            _link(png_path(image_dir, image_id), png_path(tmp / "images" / subset, image_id))
            g = by_image.get(image_id)
            text = "" if g is None else label_text(g.class_id, g[["x_min", "y_min", "x_max", "y_max"]].to_numpy(),
                                                    *sizes.loc[image_id])
            (tmp / "labels" / subset / f"{image_id}.txt").write_text(text)
    data = {"train": "images/train", "val": "images/val",
            "nc": len(DETECTOR_CLASSES), "names": dict(enumerate(DETECTOR_CLASSES))}
    (tmp / work.data_yaml(fold).name).write_text(
        f"# ultralytics dataset of fold {fold}, written by vinbig train-detector; paths are relative to this file\n"
        + yaml.safe_dump(data, sort_keys=False))
    (tmp / "source.sha1").write_text(stamp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    n_val = int((folds.fold == fold).sum())
    logger.info("fold %d dataset: %d train and %d val images, %d boxes, in %s",
                fold, len(folds) - n_val, n_val, len(boxes), out)
    return work.data_yaml(fold)


def _link(target: Path, link: Path) -> None:
    """A relative symbolic link (the work folder can move); a hard link, then a copy, where links fail."""
    try:
        os.symlink(os.path.relpath(target, link.parent), link)
    except OSError:
        try:
            os.link(target, link)
        except OSError:
            shutil.copyfile(target, link)


def _fingerprint(fold: int, folds: pd.DataFrame, boxes: pd.DataFrame, meta: pd.DataFrame, image_dir: Path) -> str:
    h = hashlib.sha1(f"v1 fold={fold} images={image_dir.resolve()}\n".encode())
    for df, cols in ((folds, ["image_id", "fold"]), (boxes, ["image_id", "class_id", "x_min", "y_min", "x_max", "y_max"]),
                     (meta, ["image_id", "width", "height", "png_width", "png_height"])):
        h.update(df.sort_values(cols).to_csv(columns=cols, index=False).encode())
    return h.hexdigest()
