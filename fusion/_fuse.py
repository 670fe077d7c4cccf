"""Fuse the detector's prediction sets of each image with weighted boxes fusion.

A prediction set is one (run, fold, tta) of ``WORK/preds/detector_{split}.parquet``. Each image's boxes
are normalized by its original width and height (meta.csv) and fused over the sets that predicted
it: every set of the file for the test split; the sets of the image's own fold (folds.csv), of every run, for
the out-of-fold split. A set weighs its run's weight (fusion.run_weights; 0 leaves the run out) times its own
(fusion.weights). A set that gave no box for the image still counts as a model (it lowers
the fused scores, as in ensemble-boxes). Images are fused in chunks, in parallel processes when
there are enough boxes to pay for starting them (ensemble-boxes engine: always).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

from vinbig import log
from vinbig.artifacts import (BOX, CLASS_NAMES, PRED_COLUMNS, ArtifactError, Work, meta_path, predict_command,
                              read_detector_preds, read_folds, read_meta)
from vinbig.boxes import check_wbf_args, clip
from vinbig.errors import ConfigError
from vinbig.metric import index_of
from vinbig.parallel import n_workers, process_map
from vinbig.runs import weight_of

from fusion._wbf import wbf_batch

logger = logging.getLogger(__name__)
ENGINES = ("numba", "ensemble_boxes")
# numba engine: each process must get at least this many boxes. Spawning a worker (imports, numba's
# cache) and sending it the boxes costs about as much as fusing 5 million boxes in place (measured with
# bench/bench_fuse.py on 2 cores: 3 million boxes took 2.1 s in one process, 6 s on two).
_BOXES_PER_PROCESS = 5_000_000
# numba engine: boxes fused per call. Small enough for the sorts to stay in cache, large enough to spread
# the call's fixed cost over several images (2 sets x 300 boxes: 0.2 ms an image against 0.46 one by one).
_BATCH_BOXES = 20_000


@dataclass
class FusionInput:
    """The boxes to fuse, sorted by image, then set, then their order in the file."""

    image_ids: np.ndarray  # (m,) str, the images to predict, in output order
    size: np.ndarray  # (m, 2) original width, height (NaN when not in meta.csv)
    offsets: np.ndarray  # (m + 1,) each image's rows in the arrays below
    boxes: np.ndarray  # (n, 4) normalized to [0, 1]
    scores: np.ndarray  # (n,)
    labels: np.ndarray  # (n,) int
    model: np.ndarray  # (n,) index of the box's set in its image's model list
    group: np.ndarray  # (m,) index into group_weights: which sets predicted the image
    group_weights: list  # one weight array per group (one weight per set, in set order)
    sets: list  # "RUN/FOLD/TTA" names of the sets, in file order

    @property
    def n_boxes(self) -> int:
        return len(self.scores)


def set_weight(name: str, weights: dict, run_weights: dict | None = None) -> float:
    """The weight of set ``"RUN/FOLD/TTA"``: the run's weight in `run_weights` (unnamed: 1) times the first key of
    `weights` that matches it, the most specific first (``*`` matches any part; a key FOLD/TTA means
    */FOLD/TTA), else 1."""
    parts = name.split("/", 2)
    best, found = -1, 1.0
    for key, w in weights.items():
        pattern = str(key).split("/")
        pattern = ["*", *pattern] if len(pattern) == 2 else pattern
        if all(p in ("*", v) for p, v in zip(pattern, parts)):
            specific = sum(p != "*" for p in pattern)
            if specific > best:
                best, found = specific, float(w)
    return found * weight_of(run_weights or {}, parts[0])


def check_params(iou_thr: float, skip_box_thr: float, conf_type: str, engine: str, weights: dict) -> None:
    check_wbf_args("fusion", iou_thr, skip_box_thr, conf_type)
    if engine not in ENGINES:
        raise ConfigError(f"fusion.engine is {engine!r}; use one of {list(ENGINES)}")
    bad = {k: v for k, v in weights.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0
           or str(k).count("/") not in (1, 2)}
    if bad:
        raise ConfigError(f"fusion.weights {bad}: keys are RUN/FOLD/TTA with * for any part (e.g. '*/*/hflip', "
                          "'m640/*/*'; FOLD/TTA means */FOLD/TTA) and weights numbers above 0")


def usable_rows(work: Work, split: str, preds: pd.DataFrame, known: np.ndarray) -> np.ndarray:
    """Which rows of the detector's predictions fusion can use (bool per row); one warning counts the others by
    kind and names a few of their images: a NaN or infinite value, a score outside [0, 1], an inverted box
    (x_max < x_min or y_max < y_min), an image not in meta.csv (`known` is False). Each bad row counts once,
    under the first kind it has. Raises ArtifactError when more than half of the rows are bad: the file is
    damaged or was made for other images."""
    n = len(preds)
    box = preds[list(BOX)].to_numpy(np.float64)
    score = preds["score"].to_numpy(np.float64)
    finite = np.isfinite(box).all(axis=1) & np.isfinite(score)
    masks = {"with a NaN or infinite value": ~finite}
    masks["with a score outside [0, 1]"] = finite & ((score < 0) | (score > 1))
    masks["inverted (x_max < x_min or y_max < y_min)"] = finite & ((box[:, 2] < box[:, 0]) | (box[:, 3] < box[:, 1]))
    masks[f"of images not in {meta_path(work.images('train' if split == 'oof' else 'test'))}"] = ~known
    bad = np.zeros(n, dtype=bool)
    kinds = []
    for kind, mask in masks.items():
        mask = mask & ~bad
        if mask.any():
            kinds.append(f"{int(mask.sum())} {kind} ({log.some(pd.unique(preds['image_id'].to_numpy()[mask]), 3)})")
            bad |= mask
    if not bad.any():
        return ~bad
    path, made_by = work.detector_preds(split), predict_command(work, "detector", split)
    n_bad = int(bad.sum())
    if 2 * n_bad > n:
        raise ArtifactError(f"{path}: {n_bad} of {n} boxes are bad: {'; '.join(kinds)}. The file is damaged or was "
                            f"made for other images; run '{made_by}' again")
    logger.warning("%s: %d of %d boxes are bad and left out: %s; if that is unexpected, run '%s' again", path, n_bad,
                   n, "; ".join(kinds), made_by)
    return ~bad


def load_inputs(work: Work | str | os.PathLike, split: str, image_ids=None, weights: dict | None = None,
                run_weights: dict | None = None, runs=None) -> FusionInput:
    """Read the detector's predictions of `split` and arrange them for fusion.

    `image_ids`: the images to predict, in order (test: the sample submission's). None means, for
    oof, the images of folds.csv whose fold appears in the prediction file; for test, those of meta.csv.
    `runs`: only these detector runs' sets (None: every run of the file); a run of weight 0 in `run_weights`
    is left out.
    """
    src = prepare(work, split, image_ids, runs, run_weights)
    return src.arrange(weights, run_weights)


@dataclass
class Prepared:
    """The usable rows of a prediction file, the image sizes, the images to predict and their folds (oof)."""

    preds: pd.DataFrame
    meta: pd.DataFrame
    image_ids: np.ndarray
    fold_of: np.ndarray | None
    meta_row: np.ndarray  # each row's image in meta

    def only(self, runs) -> "Prepared":
        """The rows of the detector runs `runs`."""
        keep = self.preds["run"].isin(list(runs)).to_numpy()
        return Prepared(self.preds[keep].reset_index(drop=True), self.meta, self.image_ids, self.fold_of,
                        self.meta_row[keep])

    def select(self, runs=None, run_weights: dict | None = None, path=None) -> "Prepared":
        """The rows of the runs `runs` (None: all) of weight above 0 in `run_weights` (see :func:`kept_runs`);
        `path` names the prediction file in errors."""
        keep = kept_runs(self.runs, runs, run_weights, path)
        return self if keep == self.runs else self.only(keep)

    @property
    def runs(self) -> list[str]:
        """The detector runs of the rows, in file order."""
        return list(pd.unique(self.preds["run"]))

    def arrange(self, weights: dict | None = None, run_weights: dict | None = None) -> FusionInput:
        """These rows arranged for :func:`fuse` (see :func:`arrange`)."""
        return arrange(self.preds, self.meta, self.image_ids, weights, run_weights, self.fold_of, self.meta_row)


def prepare(work: Work | str | os.PathLike, split: str, image_ids=None, runs=None,
            run_weights: dict | None = None) -> Prepared:
    """The detector's predictions of `split` checked and read once, before :func:`arrange` (see load_inputs)."""
    work = Work.of(work)
    preds = read_detector_preds(work, split)
    present = list(pd.unique(preds["run"]))
    keep = kept_runs(present, runs, run_weights, work.detector_preds(split))
    if keep != present:
        preds = preds[preds["run"].isin(keep)].reset_index(drop=True)
    meta = read_meta(work.images("train" if split == "oof" else "test")).set_index("image_id")
    bad = ~preds["class_id"].between(0, len(CLASS_NAMES) - 1)
    if bad.any():
        raise ArtifactError(f"{work.detector_preds(split)} has class ids outside 0..{len(CLASS_NAMES) - 1} "
                            f"({sorted(set(preds.class_id[bad]))[:5]}); run '{predict_command(work, 'detector', split)}' again")
    meta_row = index_of(preds["image_id"], meta.index)  # -1: an image meta.csv does not know
    good = usable_rows(work, split, preds, meta_row >= 0)
    if not good.all():
        preds, meta_row = preds[good].reset_index(drop=True), meta_row[good]
    fold_of = None
    if split == "oof":
        folds = read_folds(work).set_index("image_id")["fold"]
        if image_ids is None:
            predicted = set(preds["fold"].unique())
            if not predicted:  # not one box (an untrained model): every image is scored with no prediction
                logger.warning("%s holds no box at all; scoring every image of folds.csv without predictions",
                               work.detector_preds(split))
                predicted = set(folds)
            image_ids = folds.index[folds.isin(predicted)].to_numpy()
            left = int((~folds.isin(predicted)).sum())
            if left:
                logger.warning("%d images of folds %s have no out-of-fold predictions and are left out",
                               left, sorted(set(folds) - predicted))
        fold_of = folds.reindex(image_ids).to_numpy()
    elif image_ids is None:
        image_ids = meta.index.to_numpy()
    return Prepared(preds, meta, np.asarray(image_ids).astype(str), fold_of, meta_row)


def kept_runs(present: list, runs, run_weights: dict | None, path) -> list:
    """Of the runs `present` in a prediction file, the runs `runs` (None: all) whose weight in `run_weights` is not
    0; an error when one of `runs` is not there or every run weighs 0."""
    if runs is None and not present:  # not one box
        return present
    keep = present if runs is None else list(runs)
    missing = [r for r in keep if r not in present]
    if missing:
        raise ArtifactError(f"{path} holds no predictions of run(s) {', '.join(missing)} (it has "
                            f"{', '.join(present) or 'none'}); run 'vinbig predict-detector' for them")
    keep = [r for r in keep if weight_of(run_weights or {}, r) != 0]
    if not keep:
        raise ConfigError(f"fusion.run_weights leaves out every detector run ({', '.join(present)}); give one a "
                          "weight above 0")
    return keep


def arrange(preds: pd.DataFrame, meta: pd.DataFrame, image_ids, weights: dict | None = None,
            run_weights: dict | None = None, fold_of=None, meta_row=None) -> FusionInput:
    """The boxes of `preds` (DETECTOR_PRED_COLUMNS, original pixels) of the images `image_ids`, in that order,
    arranged for :func:`fuse`. `meta`: width and height indexed by image_id. `fold_of`: each image's fold
    (out-of-fold: only the sets of that fold predict it); None: every set predicts every image. A set weighs
    :func:`set_weight`."""
    weights = weights or {}
    if meta_row is None:
        meta_row = index_of(preds["image_id"], meta.index)
    image_ids = np.asarray(image_ids).astype(str)
    size = meta.reindex(image_ids)[["width", "height"]].to_numpy(np.float64)

    names = (preds["run"].astype(str) + "/" + preds["fold"].astype(np.int64).astype(str) + "/"
             + preds["tta"].astype(str))
    set_codes, sets = pd.factorize(names, sort=False)
    sets = list(sets)  # "RUN/FOLD/TTA", in file order
    set_fold = np.array([int(s.split("/")[1]) for s in sets], dtype=np.int64)
    img = np.where(meta_row >= 0, index_of(meta.index, image_ids)[np.maximum(meta_row, 0)], -1)
    no_meta = np.isnan(size[:, 0])
    n_outside = int((img < 0).sum())
    if n_outside:
        logger.info("%d predicted boxes belong to images outside the ones predicted here; ignored", n_outside)

    # model lists: test, every set for every image; oof, the sets of the image's fold
    if fold_of is None:
        group = np.zeros(len(image_ids), dtype=np.int64)
        members = [np.arange(len(sets))]
    else:
        folds_u = sorted(set(set_fold))
        group = np.array([folds_u.index(f) if f in folds_u else 0 for f in fold_of], dtype=np.int64)
        members = [np.flatnonzero(set_fold == f) for f in folds_u]
    group_weights = [np.array([set_weight(sets[i], weights, run_weights) for i in m]) for m in members]
    local = np.full((len(members), len(sets)), -1, dtype=np.int64)
    for g, m in enumerate(members):
        local[g, m] = np.arange(len(m))

    keep = img >= 0
    keep[keep] &= ~no_meta[img[keep]]
    rows = np.flatnonzero(keep)
    model = local[group[img[rows]], set_codes[rows]]
    stray = model < 0
    if stray.any():
        logger.warning("%d out-of-fold boxes come from a fold other than their image's fold in folds.csv; ignored",
                       int(stray.sum()))
        rows, model = rows[~stray], model[~stray]
    order = np.lexsort((rows, set_codes[rows], img[rows]))  # image, set, file order
    rows, model = rows[order], model[order]
    wh = size[img[rows]]
    boxes = preds[list(BOX)].to_numpy(np.float64)[rows] / np.concatenate([wh, wh], axis=1)
    offsets = np.searchsorted(img[rows], np.arange(len(image_ids) + 1))
    return FusionInput(image_ids, size, offsets, boxes, preds["score"].to_numpy(np.float64)[rows],
                       preds["class_id"].to_numpy(np.int64)[rows], model, group, group_weights, sets)


def library_wbf(boxes, scores, labels, model, weights, iou_thr, skip_box_thr, conf_type):
    """ensemble-boxes itself, fed one list per model (models without boxes get an empty list)."""
    import warnings

    from ensemble_boxes import weighted_boxes_fusion

    lists = [[], [], []]
    for t in range(len(weights)):
        sel = model == t
        lists[0].append(boxes[sel])
        lists[1].append(scores[sel])
        lists[2].append(labels[sel])
    with warnings.catch_warnings():  # it warns on every box it clips or drops
        warnings.simplefilter("ignore")
        b, s, lab = weighted_boxes_fusion(*lists, weights=list(weights), iou_thr=iou_thr,
                                          skip_box_thr=skip_box_thr, conf_type=conf_type)
    return b, s, lab.astype(np.int64)


def _fuse_chunk(chunk: dict, iou_thr: float, skip_box_thr: float, conf_type: str, engine: str):
    """Fuse the images of one chunk; returns (image index, boxes, scores, labels), boxes normalized."""
    off, args = chunk["offsets"], (iou_thr, skip_box_thr, conf_type)
    if engine == "numba":  # several images per call, about _BATCH_BOXES boxes each
        cuts = np.searchsorted(off, np.arange(_BATCH_BOXES, off[-1], _BATCH_BOXES))
        cuts = np.unique(np.concatenate([[0], cuts, [len(off) - 1]]))
        parts = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            lo, hi = off[a], off[b]
            img, *rest = wbf_batch(chunk["boxes"][lo:hi], chunk["scores"][lo:hi], chunk["labels"][lo:hi],
                                   chunk["model"][lo:hi], off[a:b + 1] - lo, chunk["group"][a:b],
                                   chunk["group_weights"], *args)
            parts.append((img + a, *rest))
    else:
        parts = []
        for i in np.flatnonzero(np.diff(off)):
            a, b = off[i], off[i + 1]
            bx, sc, lab = library_wbf(chunk["boxes"][a:b], chunk["scores"][a:b], chunk["labels"][a:b],
                                       chunk["model"][a:b], chunk["group_weights"][chunk["group"][i]], *args)
            parts.append((np.full(len(sc), i, dtype=np.int64), bx, sc, lab))
    if not parts:
        return np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)
    img, bx, sc, lab = (np.concatenate(x) for x in zip(*parts))
    return img + chunk["first"], bx, sc, lab


def _chunks(inp: FusionInput, n_chunks: int):
    """Split the images into about `n_chunks` runs of similar box counts."""
    m = len(inp.image_ids)
    cuts = np.searchsorted(inp.offsets, np.linspace(0, inp.n_boxes, n_chunks + 1)[1:-1])
    bounds = np.unique(np.concatenate([[0], np.clip(cuts, 0, m), [m]]))
    for a, b in zip(bounds[:-1], bounds[1:]):
        lo, hi = inp.offsets[a], inp.offsets[b]
        yield {"first": int(a), "offsets": inp.offsets[a:b + 1] - lo, "boxes": inp.boxes[lo:hi],
               "scores": inp.scores[lo:hi], "labels": inp.labels[lo:hi], "model": inp.model[lo:hi],
               "group": inp.group[a:b], "group_weights": inp.group_weights}


def fuse(inp: FusionInput, *, iou_thr: float, skip_box_thr: float = 0.0, conf_type: str = "avg",
         engine: str = "numba", workers: int = 0, desc: str = "fuse",
         boxes_per_process: int | None = None) -> pd.DataFrame:
    """WBF of every image of `inp`: one row per fused box (PRED_COLUMNS), original pixels, clipped. The numba engine
    starts a process for at least `boxes_per_process` boxes each (None: 5 million; bench/bench_fuse.py forces less).

    Rows come image by image in the order of ``inp.image_ids``, each image's boxes by score, highest first.
    """
    return to_pixels(inp, *fuse_normalized(inp, iou_thr=iou_thr, skip_box_thr=skip_box_thr, conf_type=conf_type,
                                           engine=engine, workers=workers, desc=desc,
                                           boxes_per_process=boxes_per_process))


def fuse_normalized(inp: FusionInput, *, iou_thr: float, skip_box_thr: float = 0.0, conf_type: str = "avg",
                    engine: str = "numba", workers: int = 0, desc: str = "fuse",
                    boxes_per_process: int | None = None) -> tuple[np.ndarray, ...]:
    """:func:`fuse` before the boxes go back to pixels: image index (into ``inp.image_ids``), boxes (k, 4)
    normalized, scores, labels; clusters of zero-score boxes (NaN boxes) left out."""
    check_params(iou_thr, skip_box_thr, conf_type, engine, {})
    m = len(inp.image_ids)
    procs = n_workers(workers, m)
    if engine == "numba":
        procs = max(1, min(procs, inp.n_boxes // (boxes_per_process or _BOXES_PER_PROCESS)))
    n_chunks = max(1, min(m, procs * 8 if procs > 1 else inp.n_boxes // 500_000 + 1))  # chunks move the bar
    job = partial(_fuse_chunk, iou_thr=float(iou_thr), skip_box_thr=float(skip_box_thr), conf_type=conf_type,
                  engine=engine)
    chunks = list(_chunks(inp, n_chunks)) if m else []
    parts = []
    with process_map(job, chunks, procs) as (results, _), \
            log.progress(total=m, desc=desc, unit="img", leave=False) as bar:
        for chunk, res in zip(chunks, results):
            parts.append(res)
            bar.update(len(chunk["offsets"]) - 1)
    if parts:
        img, box, score, label = (np.concatenate(x) for x in zip(*parts))
    else:
        img, box, score, label = np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)
    ok = np.isfinite(box).all(axis=1) & np.isfinite(score)  # clusters of zero-score boxes have NaN boxes
    return img[ok], box[ok], score[ok], label[ok]


def to_pixels(inp: FusionInput, img, box, score, label) -> pd.DataFrame:
    """Fused boxes of the images `img` of `inp` (normalized) as rows of PRED_COLUMNS in original pixels, clipped."""
    wh = inp.size[img]
    box = clip(box * np.concatenate([wh, wh], axis=1), wh[:, 0], wh[:, 1])
    out = pd.DataFrame(box, columns=list(BOX))
    out.insert(0, "score", score)
    out.insert(0, "class_id", label.astype(np.int64))
    out.insert(0, "image_id", inp.image_ids[img])
    return out.loc[:, list(PRED_COLUMNS)]
