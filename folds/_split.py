"""`vinbig folds`: validate train.csv, fuse the readers' boxes into labels.csv, split images into folds.csv, keep
each reader's own boxes in readers.csv.

Folds split images, never rows: every row of an image (all its readers, all its boxes) lands in
the image's one fold. The split is a multilabel stratified k-fold (iterative stratification) on
per-image class presence, so each fold holds about 1/n_folds of the images of every class,
"No finding" included.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from folds._validate import check_box_extents, validate_train_csv
from vinbig.artifacts import (BOX, CLASS_NAMES, FOLD_COLUMNS, LABEL_COLUMNS, NO_FINDING, READER_COLUMNS, Work,
                              atomic_path, check_outside_boxes, check_writable, meta_path, read_meta)
from vinbig.consolidate import consolidate, round_labels
from vinbig.errors import ArtifactError, ConfigError
from vinbig.log import some

logger = logging.getLogger(__name__)


def split_folds(train: pd.DataFrame, *, n_folds: int = 5, seed: int = 42) -> pd.DataFrame:
    """Assign every image of `train` (train.csv rows) to one of `n_folds` folds; returns image_id, fold.

    Stratified on which of the 15 classes each image has in any row (any reader). Images are sorted
    by id before splitting, so the same table, n_folds and seed always give the same folds,
    whatever the row order. The result is sorted by image_id; folds are numbered 0..n_folds-1.
    """
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ConfigError(f"folds.n_folds is {n_folds!r}; use an integer of 2 or more, e.g. 5")
    codes, images = pd.factorize(train["image_id"], sort=True)
    if len(images) < n_folds:
        raise ConfigError(f"train.csv has {len(images)} image(s), fewer than n_folds={n_folds}; "
                          f"lower folds.n_folds or give more images")
    presence = np.zeros((len(images), len(CLASS_NAMES)), dtype=bool)
    presence[codes, train["class_id"].to_numpy(dtype=np.int64)] = True

    fold = np.full(len(images), -1, dtype=np.int64)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(np.zeros((len(images), 1)), presence)):
        fold[test] = k
    assert (fold >= 0).all(), "MultilabelStratifiedKFold left an image without a fold"
    return pd.DataFrame({"image_id": pd.Series(np.asarray(images, dtype=object), dtype=str), "fold": fold})


def _class_table(labels: pd.DataFrame, folds: pd.DataFrame, n_folds: int) -> str:
    """Images per class and fold (from labels.csv), as lines of text for the log."""
    fold_of = labels["image_id"].map(folds.set_index("image_id")["fold"])
    per_image = pd.DataFrame({"image_id": labels["image_id"], "class_id": labels["class_id"], "fold": fold_of})
    counts = (per_image.drop_duplicates(["image_id", "class_id"])
              .groupby(["class_id", "fold"]).size().unstack(fill_value=0)
              .reindex(index=range(len(CLASS_NAMES)), columns=range(n_folds), fill_value=0))
    images = folds.groupby("fold").size().reindex(range(n_folds), fill_value=0)
    width = max(len(n) for n in CLASS_NAMES) + 4
    head = f"{'fold':<{width}}" + "".join(f"{k:>7}" for k in range(n_folds)) + f"{'all':>8}"
    rows = [head, f"{'images':<{width}}" + "".join(f"{v:>7}" for v in images) + f"{images.sum():>8}"]
    for c, name in enumerate(CLASS_NAMES):
        row = counts.loc[c]
        rows.append(f"{c:>2} {name:<{width - 3}}" + "".join(f"{v:>7}" for v in row) + f"{row.sum():>8}")
    return "\n".join(rows)


@dataclass(frozen=True)
class FoldsResult:
    """What `vinbig folds` wrote: WORK/labels.csv, WORK/folds.csv and WORK/readers.csv, and what they hold."""

    labels: Path
    folds: Path
    readers: Path
    images: int
    normal: int
    abnormal: int
    dropped_images: int  # images of train.csv left with no reader (exclude_readers)
    rows: int  # of train.csv
    boxes_before: int  # reader boxes (excluded readers aside)
    boxes_after: int  # fused boxes
    fold_images: dict[int, int]
    seconds: float


def _check_extents(train: pd.DataFrame, train_csv, work: Work, outside_boxes: str) -> pd.DataFrame:
    """`train` after checking its boxes against the image sizes of WORK/images/train/meta.csv, if it exists."""
    image_dir = work.images("train")
    if not meta_path(image_dir).is_file():
        logger.info("%s not found: the boxes are checked against the image sizes once 'vinbig images' has "
                    "converted the train images", meta_path(image_dir))
        return train
    return check_box_extents(train, read_meta(image_dir), outside_boxes=outside_boxes, path=train_csv,
                             sizes_path=meta_path(image_dir))


def reader_boxes(train: pd.DataFrame, images: Iterable[str], exclude_readers: Iterable[str] = ()) -> pd.DataFrame:
    """readers.csv (READER_COLUMNS): the rows of `train` (validated, boxes beyond their image already handled) of
    `images` whose reader is not excluded; "No finding" rows keep their empty box. Sorted by image, reader, class
    and box, so the same train.csv always gives the same file."""
    rows = train[train["image_id"].isin(set(images)) & ~train["rad_id"].isin(set(exclude_readers or ()))]
    return rows.loc[:, list(READER_COLUMNS)].sort_values(["image_id", "rad_id", "class_id", *BOX], kind="stable",
                                                          ignore_index=True)


def _write_outputs(work: Work, labels: pd.DataFrame, folds: pd.DataFrame, readers: pd.DataFrame) -> None:
    """labels.csv, folds.csv and readers.csv, renamed into place only when all three are written, so they never
    disagree; a failed write names the file."""
    target = work.labels
    try:
        with (atomic_path(work.labels) as labels_tmp, atomic_path(work.folds) as folds_tmp,
              atomic_path(work.readers) as readers_tmp):
            labels.loc[:, list(LABEL_COLUMNS)].to_csv(labels_tmp, index=False)
            target = work.folds
            folds.loc[:, list(FOLD_COLUMNS)].to_csv(folds_tmp, index=False)
            target = work.readers
            readers.loc[:, list(READER_COLUMNS)].to_csv(readers_tmp, index=False)
    except OSError as e:
        raise ArtifactError(f"cannot write {target}: {e.strerror or e}; free some disk space or fix the "
                            f"permissions of {work.root}, then rerun the same command (the earlier labels.csv, "
                            "folds.csv and readers.csv, if any, are unchanged)") from None


def make_folds(train_csv: str | os.PathLike, work: Work | str | os.PathLike, *, n_folds: int = 5, seed: int = 42,
               iou_thr: float = 0.4, skip_box_thr: float = 0.0, conf_type: str = "avg",
               reader_weights: Mapping[str, float] | None = None, exclude_readers: Iterable[str] = (),
               outside_boxes: str = "error") -> FoldsResult:
    """The `vinbig folds` stage: validate train.csv, write WORK/labels.csv, WORK/folds.csv and WORK/readers.csv.

    labels.csv holds the fused boxes (see vinbig.consolidate; coordinates rounded to 1/1000 px,
    scores to 6 decimals, which only removes WBF's float32 noise). folds.csv holds the images
    that remain in labels.csv, stratified on their train.csv rows of all readers, so excluding
    readers does not move an image to another fold. When WORK/images/train/meta.csv exists, every box
    is checked against the size of its image first (`outside_boxes`: error, clip or drop; see
    folds._validate.check_box_extents). readers.csv holds every reader's own boxes of the images of folds.csv
    (train.csv's rows after `exclude_readers` and `outside_boxes`), for detector runs that train on them. The
    three files are written only once all are ready, after the work folder has been checked to be writable: a
    failed run leaves the earlier ones in place.
    """
    start = time.perf_counter()
    work = Work.of(work)
    check_outside_boxes(outside_boxes)
    train = validate_train_csv(train_csv)
    checked = _check_extents(train, train_csv, work, outside_boxes)
    lost = sorted(set(train["image_id"]) - set(checked["image_id"]))
    if lost:  # every box of these images lay beyond it and was dropped
        logger.warning("%d image(s) lost every box (beyond its image with folds.outside_boxes=%s, or under one "
                       "pixel) and are left out of labels.csv and folds.csv: %s", len(lost), outside_boxes, some(lost))
    train = checked
    check_writable(work.labels)  # before the fusion, which takes minutes on the real data
    check_writable(work.folds)
    check_writable(work.readers)
    labels = round_labels(consolidate(train, iou_thr=iou_thr, skip_box_thr=skip_box_thr, conf_type=conf_type,
                                      reader_weights=reader_weights, exclude_readers=exclude_readers))
    kept = set(labels["image_id"].unique())
    folds = split_folds(train[train["image_id"].isin(kept)], n_folds=n_folds, seed=seed)
    _write_outputs(work, labels, folds, reader_boxes(train, folds["image_id"], exclude_readers))

    exclude = set(exclude_readers or ())
    normal_images = labels.loc[labels["class_id"] == NO_FINDING, "image_id"].nunique()
    r = FoldsResult(
        labels=work.labels, folds=work.folds, readers=work.readers, images=len(folds), normal=int(normal_images),
        abnormal=int(len(folds) - normal_images),
        dropped_images=int(train["image_id"].nunique() + len(lost) - len(folds)),
        rows=len(train), boxes_before=int(((train["class_id"] != NO_FINDING) & ~train["rad_id"].isin(exclude)).sum()),
        boxes_after=int((labels["class_id"] != NO_FINDING).sum()),
        fold_images={int(k): int(v) for k, v in folds["fold"].value_counts().sort_index().items()},
        seconds=round(time.perf_counter() - start, 2))
    logger.info("%s: %d rows, %d images (%d normal, %d abnormal, %d dropped); %d reader boxes fused into %d",
                train_csv, r.rows, r.images, r.normal, r.abnormal, r.dropped_images, r.boxes_before, r.boxes_after)
    logger.info("images per class and fold:\n%s", _class_table(labels, folds, n_folds))
    logger.info("wrote %s, %s and %s in %.1f s", work.labels, work.folds, work.readers, r.seconds)
    return r
