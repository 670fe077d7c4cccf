"""One ultralytics dataset per fold of a detector run: linked PNGs, YOLO label files and data.yaml.

Layout of ``WORK/detector/{run}/data/fold{k}/``::

    images/train/<name>.png -> ../../../../../../images/train/<image_id>.png   (relative links)
    images/val/<image_id>.png
    labels/train/<name>.txt         one line per box: class cx cy w h, normalized; empty for "No finding"
    labels/val/<image_id>.txt
    data.yaml                       the 14 class names in competition order, no absolute paths
    source.sha1                     fingerprint of the labels, settings, folds and sizes it was made from
    .vinbig-manifest.json           every file above (vinbig.manifest, kind "detector-data") and ultralytics' label
                                    caches labels/{train,val}.cache

A dataset is remade (when its fingerprint changed) beside the old one and swapped in; the old one is then removed
file by file, and only when every file in it is vinbig's (its manifest; for a dataset of a vinbig before manifests,
the layout above): a file, folder or link a user put there stops the rebuild with an error naming it, and a link or
a file standing in place of the folder is never followed or removed.

Training images are the other folds' images, validation images fold k's. What a training image's label holds is
the run's ``labels`` setting (its detector section, vinbig.runs):

* ``consolidated`` without the run's own ``exclude_readers`` or ``reader_weights``: the boxes of labels.csv;
  ``<name>`` is the image id.
* ``consolidated`` with them: the boxes of WORK/readers.csv without the excluded readers, fused per image and
  class as ``vinbig folds`` fuses them (folds.iou_thr, folds.conf_type; folds.reader_weights updated by the run's).
* ``per_reader``: an image with findings once per reader who read it, with that reader's boxes only, named
  ``<image_id>__<rad_id>`` (a reader who wrote "No finding" gives an empty label); an image without findings once.

An image whose every reader is excluded is left out of the run's training. The validation images are always one
per image with the boxes of labels.csv, the truth the OOF predictions are scored against. A YOLO label is
normalized by the original DICOM width and height: with vinbig's per-axis scaling (vinbig.boxes) the normalized
box is the same on the PNG, whatever size the PNG has.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import yaml

from vinbig.artifacts import (BOX, CLASS_NAMES, DEFAULT_RUN, NO_FINDING, Work, check_fold, check_outside_boxes,
                              folds_command, meta_path, png_path, read_folds, read_labels, read_meta, read_readers)
from vinbig.boxes import place_boxes
from vinbig.errors import ArtifactError, ConfigError, UserError
from vinbig.log import some
from vinbig.manifest import MANIFEST, Manifest

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


_LISTED = 20  # boxes an error message lists


def training_boxes(labels: pd.DataFrame, meta: pd.DataFrame, outside_boxes: str = "error",
                   work: Work | None = None, source: str | os.PathLike | None = None) -> pd.DataFrame:
    """The finding boxes of labels.csv or readers.csv (`labels` as read: its index is the row), within their image,
    by the one rule of vinbig.boxes.place_boxes that `vinbig folds` follows too.

    A box beyond its image (the width and height of meta.csv) is an error that lists such boxes by image and
    line of the file (``outside_boxes="error"``), or it is moved to the image's edge (``"clip"``) or left
    out (``"drop"``) with a warning naming the images. A negative coordinate is an error whatever
    `outside_boxes` says. Boxes under one pixel wide or high once clipped are left out with a warning too.
    `work` names the files and the command in the messages; `source` the file the rows come from (default:
    work.labels).
    """
    check_outside_boxes(outside_boxes)
    boxes = labels[labels.class_id != NO_FINDING]
    line = pd.Series(boxes.index + 2, index=boxes.index)  # the header is line 1
    boxes = boxes.assign(line=line).merge(meta[["image_id", "width", "height"]], on="image_id")
    placed = place_boxes(boxes[list(BOX)].to_numpy(dtype=np.float64), boxes.width.to_numpy(np.float64),
                         boxes.height.to_numpy(np.float64))
    source = str(source or (work.labels if work else "labels.csv"))
    if placed.negative.any():
        raise ArtifactError(_outside_message(boxes[placed.negative], work, source, negative=True))
    if placed.error(outside_boxes).any():
        raise ArtifactError(_outside_message(boxes[placed.beyond], work, source))
    if placed.beyond.any():
        beyond = boxes[placed.beyond]
        where = some([f"{i} (line {n})" for i, n in zip(beyond.image_id, beyond.line)], 5)
        if outside_boxes == "drop":
            logger.warning("%d box(es) of %s lie beyond their image and are left out (folds.outside_boxes=drop): %s",
                           len(beyond), source, where)
        else:
            logger.warning("%d box(es) of %s lie beyond their image and are clipped to its edge "
                           "(folds.outside_boxes=clip): %s", len(beyond), source, where)
    boxes = boxes.assign(**{c: placed.boxes[:, i] for i, c in enumerate(BOX)})
    small = placed.small & ~(placed.beyond & (outside_boxes == "drop"))  # those dropped are named above
    if small.any():
        logger.warning("%d box(es) of %s are under one pixel wide or high once clipped to their image; left out: %s",
                       int(small.sum()), source,
                       some([f"{i} (line {n})" for i, n in zip(boxes.image_id[small], boxes.line[small])], 5))
    return boxes[placed.keep(outside_boxes)].drop(columns="line")


def _outside_message(beyond: pd.DataFrame, work: Work | None, source: str, negative: bool = False) -> str:
    """The error for boxes beyond their image (or with a negative coordinate): each box (the first _LISTED), its
    image, line and size, and the fixes."""
    listed = "; ".join(
        f"{r.image_id} line {r.line}: ({r.x_min:g}, {r.y_min:g}, {r.x_max:g}, {r.y_max:g}) on "
        f"{int(r.width)} x {int(r.height)} px" for r in beyond.head(_LISTED).itertuples())
    more = f"; and {len(beyond) - _LISTED} more" if len(beyond) > _LISTED else ""
    sizes = meta_path(work.images("train")) if work else "meta.csv"
    rerun = folds_command(work) if work else "vinbig folds"
    if negative:
        return (f"{source}: {len(beyond)} box(es) have a negative coordinate, which is no pixel of their image "
                f"(coordinates count from its top-left corner, 0 or more): {listed}{more}. Fix them in train.csv "
                f"and rerun '{rerun}'")
    return (f"{source}: {len(beyond)} box(es) lie beyond their image (x_min, y_min, x_max, y_max on the width x "
            f"height of {sizes}): {listed}{more}. Fix them in train.csv and rerun '{rerun}', or choose what "
            "happens to them: --set folds.outside_boxes=clip (moved to the image's edge) or "
            "--set folds.outside_boxes=drop (left out)")


LABEL_MODES = ("consolidated", "per_reader")
COPY_SEPARATOR = "__"  # a per_reader copy is named <image_id>__<rad_id>
KIND = "detector-data"  # the manifest kind of a fold's dataset folder
CACHES = ("labels/train.cache", "labels/val.cache")  # ultralytics writes its label caches there while training
FOLDERS = ("images", "images/train", "images/val", "labels", "labels/train", "labels/val")  # in a dataset folder


@dataclass(frozen=True)
class LabelSettings:
    """What a detector run trains on (its detector section's labels, exclude_readers, reader_weights) and how
    readers' boxes are fused (the folds section)."""

    mode: str = "consolidated"
    exclude: tuple[str, ...] = ()  # the run's readers and folds.exclude_readers
    weights: dict = field(default_factory=dict)  # folds.reader_weights updated by the run's
    iou_thr: float = 0.4
    skip_box_thr: float = 0.0
    conf_type: str = "avg"
    named: tuple[str, ...] = ()  # the readers the run's own settings name

    @property
    def plain(self) -> bool:
        """labels.csv as it is: consolidated without the run's own readers settings."""
        return self.mode == "consolidated" and not self.named

    def describe(self) -> str:
        if self.plain:
            return "labels=consolidated (labels.csv)"
        weights = ",".join(f"{r}:{w:g}" for r, w in sorted(self.weights.items()))
        return (f"labels={self.mode} exclude={','.join(self.exclude)} weights={weights} iou_thr={self.iou_thr:g} "
                f"skip_box_thr={self.skip_box_thr:g} conf_type={self.conf_type}")


def label_settings(run_cfg: Mapping | None, folds_cfg: Mapping | None, run: str = DEFAULT_RUN) -> LabelSettings:
    """The LabelSettings of run `run` from its detector section `run_cfg` and the config's folds section;
    a value of the wrong kind is a ConfigError naming the key."""
    from vinbig.consolidate import check_reader_weights

    run_cfg, folds_cfg = dict(run_cfg or {}), dict(folds_cfg or {})
    where = f"detector run {run!r}"
    mode = run_cfg.get("labels") or "consolidated"
    if mode not in LABEL_MODES:
        raise ConfigError(f"detector.labels of {where} is {mode!r}; use one of {', '.join(LABEL_MODES)}")
    exclude = run_cfg.get("exclude_readers") or []
    weights = run_cfg.get("reader_weights") or {}
    if isinstance(exclude, str) or not isinstance(exclude, (list, tuple)):
        raise ConfigError(f"detector.exclude_readers of {where} is {exclude!r}; give a list of reader ids, "
                          "e.g. [R8, R9, R10]")
    if not isinstance(weights, Mapping):
        raise ConfigError(f"detector.reader_weights of {where} is {weights!r}; give reader ids and weights, "
                          "e.g. {R8: 0.5}")
    weights = {str(r): w for r, w in weights.items()}
    check_reader_weights(weights, "detector")
    if mode == "per_reader" and weights:
        logger.warning("%s trains on each reader's own boxes (labels per_reader): its reader_weights %s are unused",
                       where, weights)
    return LabelSettings(
        mode=mode,
        exclude=tuple(sorted({str(r) for r in exclude} | {str(r) for r in folds_cfg.get("exclude_readers") or ()})),
        weights={**{str(r): w for r, w in (folds_cfg.get("reader_weights") or {}).items()}, **weights},
        iou_thr=float(folds_cfg.get("iou_thr", 0.4)), skip_box_thr=float(folds_cfg.get("skip_box_thr", 0.0)),
        conf_type=str(folds_cfg.get("conf_type", "avg")),
        named=tuple(sorted({str(r) for r in exclude} | set(weights))))


def fold_dataset(work: Work | str | os.PathLike, fold: int, outside_boxes: str = "error", *, run: str = DEFAULT_RUN,
                 run_cfg: Mapping | None = None, folds_cfg: Mapping | None = None) -> Path:
    """Write (or reuse, when its inputs are unchanged) the dataset of `fold` of detector run `run` in
    WORK/detector/{run}/data/fold{k}; return its data.yaml.

    `run_cfg` is the run's detector section (labels, exclude_readers, reader_weights: see the module doc; None:
    labels.csv as it is), `folds_cfg` the config's folds section (how readers' boxes are fused). `outside_boxes`
    (folds.outside_boxes): what a box of labels.csv or readers.csv beyond its image becomes; see training_boxes.
    """
    work = Work.of(work)
    settings = label_settings(run_cfg, folds_cfg, run)
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
    val_ids = folds.image_id[folds.fold == fold]
    train_ids = folds.image_id[folds.fold != fold]
    # labels.csv's boxes of the validation images, and of the training images when the run trains on them
    truth = training_boxes(labels[labels.image_id.isin(folds.image_id if settings.plain else val_ids)], meta,
                           outside_boxes, work)
    if settings.plain:
        samples, boxes = _labels_samples("train", truth, train_ids)
    else:
        samples, boxes = _reader_samples(work, settings, train_ids, meta, outside_boxes, run, fold)
    val_samples, val_boxes = _labels_samples("val", truth, val_ids)
    samples = pd.concat([samples, val_samples], ignore_index=True)
    boxes = pd.concat([boxes, val_boxes], ignore_index=True)

    out = work.detector_data(fold, run)
    stamp = _fingerprint(fold, settings, samples, boxes, meta, image_dir)
    if (out / "source.sha1").is_file() and (out / "source.sha1").read_text() == stamp:
        logger.info("fold %d dataset of run %s is up to date in %s", fold, run, out)
        return work.data_yaml(fold, run)
    _write(out, fold, run, stamp, samples, boxes, meta, image_dir)
    n_train = int((samples.subset == "train").sum())
    n_images = samples.loc[samples.subset == "train", "image_id"].nunique()
    copies = f" ({n_images} images, {settings.mode})" if n_train != n_images else ""
    logger.info("fold %d dataset of run %s: %d train%s and %d val images, %d boxes, in %s",
                fold, run, n_train, copies, len(samples) - n_train, len(boxes), out)
    return work.data_yaml(fold, run)


def _labels_samples(subset: str, truth: pd.DataFrame, ids: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One sample per image of `ids`, named by its id, with its boxes of `truth` (finding boxes: training_boxes of
    labels.csv, or readers.csv fused)."""
    boxes = truth[truth.image_id.isin(ids)]
    ids = ids.to_numpy(dtype=object)
    samples = pd.DataFrame({"subset": subset, "name": ids, "image_id": ids})
    return samples, _named(boxes.assign(name=boxes.image_id), subset)


def _named(boxes: pd.DataFrame, subset: str) -> pd.DataFrame:
    return boxes.assign(subset=subset).loc[:, ["subset", "name", "image_id", "class_id", *BOX]]


def _read_readers(work: Work, run: str, settings: LabelSettings) -> pd.DataFrame:
    """WORK/readers.csv; a work folder of an older vinbig, which had none, is an error naming the fix."""
    if not work.readers.is_file():
        why = ("labels per_reader" if settings.mode == "per_reader"
               else f"its own exclude_readers or reader_weights ({', '.join(settings.named)})")
        raise ArtifactError(f"{work.readers} not found: detector run {run!r} trains on each reader's own boxes "
                            f"({why}), which 'vinbig folds' keeps in that file; {work.root} was made by an older "
                            f"vinbig: run '{folds_command(work)}' again (with the same settings labels.csv and "
                            "folds.csv come out the same)")
    return read_readers(work)


def _reader_samples(work: Work, settings: LabelSettings, ids: pd.Series, meta: pd.DataFrame, outside_boxes: str,
                    run: str, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training samples of a run that trains on readers.csv: per reader, or fused without its excluded
    readers. Images left without a reader are left out, in one warning."""
    readers = _read_readers(work, run, settings)
    unknown = sorted(set(settings.named) - set(readers.rad_id))
    if unknown:
        logger.warning("detector run %r names reader(s) %s in exclude_readers or reader_weights, who read no image "
                       "of %s", run, unknown, work.readers)
    rows = readers[readers.image_id.isin(ids) & ~readers.rad_id.isin(settings.exclude)]
    dropped = sorted(set(ids) - set(rows.image_id))
    why = f"once {', '.join(settings.exclude)} are excluded" if settings.exclude else f"in {work.readers}"
    if dropped:
        logger.warning("run %s, fold %d: %d of %d training image(s) have no reader left %s and are left out of its "
                       "training: %s", run, fold, len(dropped), len(ids), why, some(dropped, 5))
    if rows.empty:
        raise ConfigError(f"detector run {run!r}, fold {fold}: no training image has a reader left {why}; "
                          "exclude fewer readers")
    found = training_boxes(rows, meta, outside_boxes, work, work.readers)  # findings only, within the image
    if settings.mode == "per_reader":
        return _per_reader(rows, found)
    nf = rows[rows.class_id == NO_FINDING]  # who read the image and saw nothing still counts as a reader
    fused = _fuse_readers(pd.concat([found.loc[:, list(rows.columns)], nf]), settings, str(work.readers))
    return _labels_samples("train", fused[fused.class_id != NO_FINDING],
                           pd.Series(sorted(set(rows.image_id)), dtype=object))


def _fuse_readers(rows: pd.DataFrame, settings: LabelSettings, source: str) -> pd.DataFrame:
    """`rows` of readers.csv fused per image and class as `vinbig folds` fuses train.csv into labels.csv (boxes
    rounded to 1/1000 px, scores to 6 decimals); weights of readers absent from `rows` are not used."""
    # ensemble-boxes and numba: only for the runs that need them
    from vinbig.consolidate import consolidate, round_labels

    present = set(rows.rad_id)
    return round_labels(consolidate(rows, iou_thr=settings.iou_thr, skip_box_thr=settings.skip_box_thr,
                                    conf_type=settings.conf_type, source=source,
                                    reader_weights={r: w for r, w in settings.weights.items() if r in present}))


def _per_reader(rows: pd.DataFrame, found: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One sample per (image, reader) of an image with findings, one per image without; each reader's boxes."""
    pairs = rows.loc[:, ["image_id", "rad_id"]].drop_duplicates().sort_values(["image_id", "rad_id"])
    abnormal = pairs.image_id.isin(set(found.image_id))
    copies = pairs[abnormal]
    normal = pd.Series(sorted(set(pairs.image_id[~abnormal])), dtype=object)
    samples = pd.concat([
        pd.DataFrame({"name": (copies.image_id + COPY_SEPARATOR + copies.rad_id).to_numpy(dtype=object),
                      "image_id": copies.image_id.to_numpy(dtype=object)}),
        pd.DataFrame({"name": normal, "image_id": normal})], ignore_index=True)
    samples = samples.sort_values("name", ignore_index=True).assign(subset="train")
    return samples.loc[:, ["subset", "name", "image_id"]], _named(
        found.assign(name=found.image_id + COPY_SEPARATOR + found.rad_id), "train")


def _write(out: Path, fold: int, run: str, stamp: str, samples: pd.DataFrame, boxes: pd.DataFrame,
           meta: pd.DataFrame, image_dir: Path) -> None:
    """The dataset in a temporary folder beside `out`, swapped in once complete; the old one is then removed, only
    when it holds nothing but vinbig's files (checked before anything is written)."""
    _own_files(out)
    tmp, old = (out.with_name(f".{out.name}.{os.getpid()}.{what}") for what in ("partial", "old"))
    for leftover in (tmp, old):  # of an interrupted run with the same process id
        _remove(leftover, _own_files(leftover))
    sizes = meta.set_index("image_id")[["width", "height"]]
    by_name = {key: g for key, g in boxes.groupby(["subset", "name"], sort=False)}
    for subset in ("train", "val"):
        (tmp / "images" / subset).mkdir(parents=True)
        (tmp / "labels" / subset).mkdir(parents=True)
    names = [f"{kind}/{subset}/{name}.{ext}" for subset, name, _ in samples.itertuples(index=False)
             for kind, ext in (("images", "png"), ("labels", "txt"))]
    Manifest(tmp, KIND, [*names, "data.yaml", "source.sha1", *CACHES]).save()  # before the files: a crash leaves it
    for subset, name, image_id in samples.itertuples(index=False):
        _link(png_path(image_dir, image_id), png_path(tmp / "images" / subset, name))
        g = by_name.get((subset, name))
        text = "" if g is None else label_text(g.class_id, g[list(BOX)].to_numpy(), *sizes.loc[image_id])
        (tmp / "labels" / subset / f"{name}.txt").write_text(text)
    data = {"train": "images/train", "val": "images/val",
            "nc": len(DETECTOR_CLASSES), "names": dict(enumerate(DETECTOR_CLASSES))}
    (tmp / "data.yaml").write_text(
        f"# ultralytics dataset of fold {fold} of detector run {run}, written by vinbig train-detector; paths are "
        "relative to this file\n" + yaml.safe_dump(data, sort_keys=False))
    (tmp / "source.sha1").write_text(stamp)
    if out.exists():
        owned = _own_files(out)  # again: checked, then moved aside at once
        os.replace(out, old)
        os.replace(tmp, out)
        _remove(old, owned)
    else:
        os.replace(tmp, out)


def _own_files(folder: Path) -> set[str]:
    """The files of the dataset folder `folder` (relative paths), when every one is vinbig's: listed in its manifest
    or, in a dataset of a vinbig before manifests (source.sha1 and no manifest), laid out as vinbig lays it out.
    Raises a UserError naming what is not vinbig's: a link or a file in place of the folder, or anything in it a
    user put there. An empty set when `folder` does not exist."""
    if not folder.exists() and not folder.is_symlink():
        return set()
    if folder.is_symlink() or not folder.is_dir():
        raise UserError(f"{folder} is a {'link' if folder.is_symlink() else 'file'}, where vinbig keeps a fold's "
                        "dataset, which it remakes; vinbig removes only what it made: move it away and run again")
    found: set[str] = set()
    other: list[str] = []  # folders vinbig does not make, links to folders (never descended into)
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        other += [(rel / d).as_posix() for d in dirs
                  if (Path(root) / d).is_symlink() or (rel / d).as_posix() not in FOLDERS]
        dirs[:] = [d for d in dirs if (rel / d).as_posix() in FOLDERS and not (Path(root) / d).is_symlink()]
        found.update((rel / f).as_posix() for f in files)
    manifest = Manifest.read(folder)
    if manifest is not None and manifest.kind == KIND:
        owned = manifest.files | {MANIFEST}
    elif manifest is None and "source.sha1" in found:
        owned = _old_layout(found)
    else:
        owned = set()
    foreign = sorted(other + [f for f in found if f not in owned])
    if foreign:
        raise UserError(f"{folder} holds {len(foreign)} file(s) or link(s) that vinbig did not write "
                        f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); vinbig remakes this "
                        "dataset and removes only its own files: move them away and run again")
    return found


def _old_layout(files: set[str]) -> set[str]:
    """Of the files of a dataset written by a vinbig before manifests, those it laid out: data.yaml, source.sha1,
    ultralytics' caches, each label labels/SUBSET/NAME.txt and its image images/SUBSET/NAME.png."""
    owned = {"data.yaml", "source.sha1", *CACHES}
    for f in files:
        parts = f.split("/")
        if len(parts) == 3 and parts[0] == "labels" and parts[1] in ("train", "val") and parts[2].endswith(".txt"):
            owned |= {f, f"images/{parts[1]}/{parts[2][:-4]}.png"}
    return owned & files


def _remove(folder: Path, files: set[str]) -> None:
    """Remove `files` (relative paths, vinbig's, as :func:`_own_files` found them) from `folder`, then its folders
    left empty; whatever else is there stays (with a warning)."""
    if not files and not folder.is_dir():
        return
    Manifest(folder, KIND, files - {MANIFEST}).remove_stale(())
    (folder / MANIFEST).unlink(missing_ok=True)
    for sub in sorted(FOLDERS, key=len, reverse=True) + ["."]:  # deepest first
        try:
            (folder / sub).rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            logger.warning("%s is kept: it holds files vinbig did not write", folder / sub)
            return


def _link(target: Path, link: Path) -> None:
    """A relative symbolic link (the work folder can move); a hard link, then a copy, where links fail."""
    try:
        os.symlink(os.path.relpath(target, link.parent), link)
    except OSError:
        try:
            os.link(target, link)
        except OSError:
            shutil.copyfile(target, link)


def _fingerprint(fold: int, settings: LabelSettings, samples: pd.DataFrame, boxes: pd.DataFrame,
                 meta: pd.DataFrame, image_dir: Path) -> str:
    """sha1 of everything the dataset is made of: the label settings, the samples, their boxes and the sizes."""
    h = hashlib.sha1(f"v2 fold={fold} images={image_dir.resolve()} {settings.describe()}\n".encode())
    for df, cols in ((samples, ["subset", "name", "image_id"]), (boxes, ["subset", "name", "class_id", *BOX]),
                     (meta, ["image_id", "width", "height", "png_width", "png_height"])):
        h.update(df.sort_values(cols).to_csv(columns=cols, index=False).encode())
    return h.hexdigest()
