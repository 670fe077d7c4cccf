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

from vinbig.artifacts import (BOX, CLASS_NAMES, NO_FINDING, Work, check_fold, check_outside_boxes, folds_command,
                              meta_path, png_path, read_folds, read_labels, read_meta)
from vinbig.boxes import clip
from vinbig.errors import ArtifactError
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


_SLACK = 1e-3  # px: labels.csv is rounded to 1/1000 px, so an edge this far out is on the image
_LISTED = 20  # boxes an error message lists


def training_boxes(labels: pd.DataFrame, meta: pd.DataFrame, outside_boxes: str = "error",
                   work: Work | None = None) -> pd.DataFrame:
    """The finding boxes of labels.csv (`labels` as read: its index is the row), within their image.

    A box beyond its image (the width and height of meta.csv) is an error that lists such boxes by image and
    line of labels.csv (``outside_boxes="error"``), or it is moved to the image's edge (``"clip"``) or left
    out (``"drop"``) with a warning naming the images. Boxes under one pixel wide or high once clipped are
    left out with a warning too. `work` names the files and the command in the messages.
    """
    check_outside_boxes(outside_boxes)
    boxes = labels[labels.class_id != NO_FINDING]
    line = pd.Series(boxes.index + 2, index=boxes.index)  # the header is line 1
    boxes = boxes.assign(line=line).merge(meta[["image_id", "width", "height"]], on="image_id")
    xyxy = boxes[list(BOX)].to_numpy(dtype=np.float64)
    w, h = boxes.width.to_numpy(np.float64), boxes.height.to_numpy(np.float64)
    outside = ((xyxy[:, 0] < -_SLACK) | (xyxy[:, 1] < -_SLACK) | (xyxy[:, 2] > w + _SLACK) | (xyxy[:, 3] > h + _SLACK))
    source = str(work.labels) if work else "labels.csv"
    if outside.any():
        beyond = boxes[outside]
        if outside_boxes == "error":
            raise ArtifactError(_outside_message(beyond, work))
        where = some([f"{i} (line {n})" for i, n in zip(beyond.image_id, beyond.line)], 5)
        if outside_boxes == "drop":
            logger.warning("%d box(es) of %s lie beyond their image and are left out (folds.outside_boxes=drop): %s",
                           len(beyond), source, where)
            boxes, xyxy, w, h = boxes[~outside], xyxy[~outside], w[~outside], h[~outside]
        else:
            logger.warning("%d box(es) of %s lie beyond their image and are clipped to its edge "
                           "(folds.outside_boxes=clip): %s", len(beyond), source, where)
    xyxy = clip(xyxy, w, h)
    boxes = boxes.assign(**{c: xyxy[:, i] for i, c in enumerate(BOX)})
    keep = (xyxy[:, 2] - xyxy[:, 0] >= 1) & (xyxy[:, 3] - xyxy[:, 1] >= 1)
    if (~keep).any():
        small = boxes[~keep]
        logger.warning("%d box(es) of %s are under one pixel wide or high once clipped to their image; left out: %s",
                       len(small), source, some([f"{i} (line {n})" for i, n in zip(small.image_id, small.line)], 5))
    return boxes[keep].drop(columns="line")


def _outside_message(beyond: pd.DataFrame, work: Work | None) -> str:
    """The error for boxes beyond their image: each box (the first _LISTED), its image, line and size, and the fixes."""
    listed = "; ".join(
        f"{r.image_id} line {r.line}: ({_px(r.x_min)}, {_px(r.y_min)}, {_px(r.x_max)}, {_px(r.y_max)}) on "
        f"{int(r.width)} x {int(r.height)} px" for r in beyond.head(_LISTED).itertuples())
    more = f"; and {len(beyond) - _LISTED} more" if len(beyond) > _LISTED else ""
    source, sizes = (work.labels, meta_path(work.images("train"))) if work else ("labels.csv", "meta.csv")
    rerun = folds_command(work) if work else "vinbig folds"
    return (f"{source}: {len(beyond)} box(es) lie beyond their image (x_min, y_min, x_max, y_max on the width x "
            f"height of {sizes}): {listed}{more}. Fix them in train.csv and rerun '{rerun}', or choose what "
            "happens to them: --set folds.outside_boxes=clip (moved to the image's edge) or "
            "--set folds.outside_boxes=drop (left out)")


def _px(v: float) -> str:
    return f"{v:g}"


def fold_dataset(work: Work | str | os.PathLike, fold: int, outside_boxes: str = "error") -> Path:
    """Write (or reuse, when its inputs are unchanged) the dataset of `fold`; return its data.yaml.

    `outside_boxes` (the config's folds.outside_boxes): what a box of labels.csv beyond its image becomes; see
    training_boxes.
    """
    work = Work.of(work)
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
    boxes = training_boxes(labels[labels.image_id.isin(folds.image_id)], meta, outside_boxes, work)

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
