"""Fuse the readers' boxes of each image and class into one set of training labels.

`vinbig folds` writes the result as WORK/labels.csv (the truth of OOF scoring); a detector run with its own
``exclude_readers`` or ``reader_weights`` fuses WORK/readers.csv again for its training labels.

Each image was read by several radiologists ("readers"). Their boxes are fused with ensemble-boxes'
weighted boxes fusion (WBF), one call per image:

* one box list per reader of the image (readers sorted by id), every box with score 1.0 and its
  class id as label, so WBF clusters boxes only within a class; a reader of the image who drew
  nothing (wrote "No finding") still counts as a model with an empty list, so the fused scores
  say how many of the image's readers agree;
* weights from ``reader_weights`` (1 for readers not named);
* the boxes are divided by one scale per image (the largest coordinate of its boxes), which puts
  them in [0, 1] as WBF expects (it clips to [0, 1]) and is undone exactly on the way back; IoU
  and WBF's weighted averages do not change under such a scaling.

Columns of the result (LABEL_COLUMNS):

* ``score``: WBF's fused confidence. With ``conf_type="avg"`` and weights 1 it is the number of
  boxes in the cluster (at most the number of readers) divided by the number of readers of the
  image: 1.0 when all three readers drew the box, 1/3 when one did. WBF computes it in float32.
* ``n_readers``: the number of distinct readers who drew a box of the same class whose IoU with
  the fused box is above ``iou_thr`` (at least 1: every fused box comes from a reader's box).
  It is measured against the final fused box, so it can differ from the cluster WBF formed.

Images whose remaining readers all wrote "No finding" get one row of class 14 with an empty (NaN)
box, score 1 and ``n_readers`` = the number of those readers.
"""

from __future__ import annotations

import logging
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from ensemble_boxes import weighted_boxes_fusion

from vinbig.artifacts import BOX, LABEL_COLUMNS, NO_FINDING
from vinbig.boxes import check_wbf_args, iou
from vinbig.errors import ConfigError
from vinbig.log import progress

logger = logging.getLogger(__name__)

_DTYPES = (str, np.int64, float, float, float, float, float, np.int64)


def check_reader_weights(reader_weights: Mapping[str, float], section: str = "folds") -> None:
    """Every weight of `section`.reader_weights is a number above 0 (a reader is left out by exclude_readers)."""
    bad = {r: w for r, w in reader_weights.items()
           if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w) or w <= 0}
    if bad:
        raise ConfigError(f"{section}.reader_weights {bad}: each weight must be a number above 0; "
                          f"exclude a reader with {section}.exclude_readers instead of weight 0")


def _check_args(iou_thr: float, skip_box_thr: float, conf_type: str, reader_weights: Mapping[str, float]) -> None:
    check_wbf_args("folds", iou_thr, skip_box_thr, conf_type)
    check_reader_weights(reader_weights)


def _fuse_image(boxes: np.ndarray, labels: np.ndarray, reader: np.ndarray, weights: np.ndarray, *,
                iou_thr: float, skip_box_thr: float, conf_type: str):
    """WBF on one image. boxes (n, 4) in pixels, labels (n,), reader (n,) in 0..len(weights)-1.

    Returns fused boxes (k, 4) in pixels, scores (k,), labels (k,), n_readers (k,).
    """
    scale = boxes.max()
    norm = boxes / scale
    n_models = len(weights)
    boxes_list = [norm[reader == r] for r in range(n_models)]
    labels_list = [labels[reader == r] for r in range(n_models)]
    scores_list = [np.ones(len(b)) for b in boxes_list]
    fused, scores, fused_labels = weighted_boxes_fusion(
        boxes_list, scores_list, labels_list, weights=list(weights), iou_thr=iou_thr,
        skip_box_thr=skip_box_thr, conf_type=conf_type)
    fused_labels = fused_labels.astype(np.int64)
    fused_px = fused * scale

    pairs = iou(fused[:, None], norm[None])  # in normalized units, like WBF's own matching
    hit = (pairs > iou_thr) & (fused_labels[:, None] == labels[None, :])
    agree = np.zeros((len(fused), n_models), dtype=bool)
    for r in range(n_models):
        agree[:, r] = hit[:, reader == r].any(axis=1)
    n_readers = np.maximum(agree.sum(axis=1), 1)
    return fused_px, scores, fused_labels, n_readers


def consolidate(train: pd.DataFrame, *, iou_thr: float = 0.4, skip_box_thr: float = 0.0, conf_type: str = "avg",
                reader_weights: Mapping[str, float] | None = None,
                exclude_readers: Iterable[str] = (), source: str = "train.csv") -> pd.DataFrame:
    """Fuse the readers' boxes per image and class with WBF; returns LABEL_COLUMNS (see the module doc).

    `train` is a validated train.csv (validate_train_csv) or WORK/readers.csv: the columns image_id, rad_id,
    class_id and the box, "No finding" rows with an empty box; `source` names it in the warnings. Rows of
    `exclude_readers` are dropped first; an image left without readers is dropped (counted in a warning).
    Every box a reader draws has score 1.0, so `skip_box_thr` (in [0, 1]) drops nothing; it is kept for parity
    with WBF's interface. The result is sorted by image_id, class_id, then the box corners.
    """
    reader_weights = dict(reader_weights or {})
    exclude = sorted(set(exclude_readers or ()))
    _check_args(iou_thr, skip_box_thr, conf_type, reader_weights)

    readers_present = set(train["rad_id"].unique())
    unknown = sorted(set(exclude) - readers_present)
    if unknown:
        logger.warning("exclude_readers names %s, who read no image in %s; nothing dropped for them", unknown, source)
    unknown = sorted(set(reader_weights) - readers_present)
    if unknown:
        logger.warning("reader_weights names %s, who read no image in %s; their weights are unused", unknown, source)

    all_images = train["image_id"].unique()
    kept = train[~train["rad_id"].isin(exclude)] if exclude else train
    if exclude:
        dropped = len(all_images) - kept["image_id"].nunique()
        logger.info("excluded readers %s: %d of %d rows dropped", exclude, len(train) - len(kept), len(train))
        if dropped:
            logger.warning("%d of %d images had only excluded readers %s and were dropped from labels.csv",
                           dropped, len(all_images), exclude)

    if kept.empty:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(LABEL_COLUMNS, _DTYPES)})

    # group once: integer codes for images (sorted) and readers, rows sorted by image
    image_codes, images = pd.factorize(kept["image_id"], sort=True)
    reader_codes, readers = pd.factorize(kept["rad_id"], sort=True)
    reader_weight = np.array([float(reader_weights.get(r, 1.0)) for r in readers])
    class_id = kept["class_id"].to_numpy(dtype=np.int64)
    boxes = kept.loc[:, list(BOX)].to_numpy(dtype=np.float64)

    # readers of each image (any row, No finding included), as sorted unique (image, reader) pairs
    pair = np.unique(image_codes.astype(np.int64) * len(readers) + reader_codes)
    pair_image, pair_reader = pair // len(readers), pair % len(readers)
    pair_start = np.searchsorted(pair_image, np.arange(len(images) + 1))
    n_image_readers = np.diff(pair_start)

    finding = class_id != NO_FINDING
    order = np.argsort(image_codes[finding], kind="stable")
    f_image = image_codes[finding][order]
    f_reader = reader_codes[finding][order]
    f_class = class_id[finding][order]
    f_boxes = boxes[finding][order]
    f_start = np.searchsorted(f_image, np.arange(len(images) + 1))

    parts_image, parts_boxes, parts_scores, parts_labels, parts_n = [], [], [], [], []
    abnormal = np.flatnonzero(np.diff(f_start) > 0)
    for i in progress(abnormal, desc="fusing readers' boxes", unit="image", leave=False):
        lo, hi = f_start[i], f_start[i + 1]
        image_readers = pair_reader[pair_start[i]:pair_start[i + 1]]  # sorted reader codes
        local_reader = np.searchsorted(image_readers, f_reader[lo:hi])
        fused, scores, labels, n_readers = _fuse_image(
            f_boxes[lo:hi], f_class[lo:hi], local_reader, reader_weight[image_readers],
            iou_thr=iou_thr, skip_box_thr=skip_box_thr, conf_type=conf_type)
        parts_image.append(np.full(len(fused), i))
        parts_boxes.append(fused)
        parts_scores.append(scores)
        parts_labels.append(labels)
        parts_n.append(n_readers)

    normal = np.flatnonzero(np.diff(f_start) == 0)
    parts_image.append(normal)
    parts_boxes.append(np.full((len(normal), 4), np.nan))
    parts_scores.append(np.ones(len(normal)))
    parts_labels.append(np.full(len(normal), NO_FINDING))
    parts_n.append(n_image_readers[normal])

    fused_boxes = np.concatenate(parts_boxes).reshape(-1, 4)
    out = pd.DataFrame({
        "image_id": pd.Series(np.asarray(images, dtype=object)[np.concatenate(parts_image).astype(np.int64)],
                              dtype=str),
        "class_id": np.concatenate(parts_labels).astype(np.int64),
        **{c: fused_boxes[:, k].astype(np.float64) for k, c in enumerate(BOX)},
        "score": np.concatenate(parts_scores).astype(np.float64),
        "n_readers": np.concatenate(parts_n).astype(np.int64),
    })
    out = out.sort_values(["image_id", "class_id", *BOX], kind="stable", ignore_index=True)
    return out.loc[:, list(LABEL_COLUMNS)]


def round_labels(labels: pd.DataFrame) -> pd.DataFrame:
    """Fused labels as labels.csv keeps them: boxes rounded to 1/1000 px, scores to 6 decimals."""
    return labels.assign(**{c: labels[c].round(3) for c in BOX}, score=labels["score"].round(6))
