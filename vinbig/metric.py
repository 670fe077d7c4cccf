"""The competition metric: PASCAL VOC 2010 mean average precision at IoU > 0.4 over the 15 classes.

Definition (docs/competition.md, Metric):

* Boxes are ``x_min y_min x_max y_max`` in original pixels. "No finding" (class 14) is the box
  ``0 0 1 1``; a class-14 truth row with an empty box means that box, and an image counts one
  class-14 truth box however many readers wrote "No finding".
* Per class, the detections of all images are ranked by confidence, highest first. **Ties** keep
  submission order (rows top to bottom, then groups left to right in a PredictionString): a stable
  sort. Walking the ranking, a detection is a true positive when the truth box of its class in its
  image with which it has the highest IoU (the first such box on equal IoU) has IoU **strictly
  greater** than 0.4 and was not matched before; otherwise it is a false positive (a detection
  whose best box is taken does not fall back to another one).
* Truth of images without any prediction counts toward recall. Predictions for images absent
  from the truth are ignored (the caller is told how many).
* AP is the area under the precision envelope (all-point interpolation, VOC 2010). The mean is
  over the classes present in the truth; the others are reported as absent and left out.

Everything is vectorized: matching pairs each detection with the truth boxes of its image and class
(one sort and a ``searchsorted``), so scoring is a few numpy passes over the detections. Matching
(:func:`match`) and AP (:func:`average_precision`) are separate so that tuning can drop whole
images from a matched set without matching again: a detection's TP/FP status depends only on its
own image. :func:`mark` gives the same matching row by row (TP/FP per detection, found/missed per truth
box) for the report's error browser.

The metric works on tables only: the files of `vinbig score` are read by vinbig.submission (``read_truth``,
``read_submission``, ``score_files``) through the one table reader, vinbig.tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from vinbig.artifacts import (BOX, CLASS_NAMES, N_CLASSES, NO_FINDING, NO_FINDING_BOX, TRUTH_COLUMNS,
                              ArtifactError)
from vinbig.boxes import iou
from vinbig.tables import check_columns

IOU_THRESHOLD = 0.4
TRUTH_FIX = "give a box table image_id,class_id,x_min,y_min,x_max,y_max such as WORK/labels.csv"


# --------------------------------------------------------------------------- the truth


def _where(truth: pd.DataFrame, mask: np.ndarray, source: str | None) -> str:
    """The first faulty rows: ``FILE:2`` or ``FILE lines 2, 5`` (header = line 1) with `source`, else 0-based
    row numbers."""
    rows = truth.index[mask][:5]
    if source is not None:
        lines = [str(int(r) + 2) for r in rows]
        return f"{source}:{lines[0]}" if len(lines) == 1 else f"{source} lines {', '.join(lines)}"
    return f"truth rows {[int(r) for r in rows]} (0-based)"


def prepare_truth(truth: pd.DataFrame, source: str | None = None) -> pd.DataFrame:
    """Truth boxes with class-14 rows set to ``0 0 1 1`` and one class-14 row per image.

    `source`: the file the table was read from (its index the row order of the file), to name lines in errors.
    """
    check_columns(truth, TRUTH_COLUMNS, source or "the truth table", TRUTH_FIX)
    t = truth.loc[:, list(TRUTH_COLUMNS)].copy()
    t["image_id"] = t["image_id"].astype(str)
    for col in ("class_id", *BOX):
        if not pd.api.types.is_numeric_dtype(t[col]):
            values = pd.to_numeric(t[col], errors="coerce")
            text = (values.isna() & t[col].notna()).to_numpy()
            if text.any():
                raise ArtifactError(f"{_where(t, text, source)}: {col} {t[col][text].iloc[0]!r} is not a number")
            t[col] = values
    cls = t["class_id"].to_numpy(np.float64)
    bad = ~((cls == np.round(cls)) & (cls >= 0) & (cls < N_CLASSES))  # NaN fails every comparison
    if bad.any():
        value = t["class_id"][bad].iloc[0]
        raise ArtifactError(f"{_where(t, bad, source)}: class id {'(empty)' if pd.isna(value) else f'{value:g}'} is "
                            f"not an integer in 0..{N_CLASSES - 1}")
    t["class_id"] = t["class_id"].astype(np.int64)
    nf = (t["class_id"] == NO_FINDING).to_numpy()
    t.loc[nf, list(BOX)] = NO_FINDING_BOX
    empty = (~nf) & t[list(BOX)].isna().any(axis=1).to_numpy()
    if empty.any():
        raise ArtifactError(f"{_where(t, empty, source)}: an empty box but a class other than {NO_FINDING}; only "
                            "'No finding' rows may leave the box empty")
    t = t[~(nf & t.duplicated(["image_id", "class_id"]).to_numpy())]
    return t.reset_index(drop=True)


# --------------------------------------------------------------------------- matching


def index_of(values, ids) -> np.ndarray:
    """Position of each of `values` in the unique `ids` (-1 where absent), as int64."""
    ids = pd.Series(ids).astype(str)
    codes = pd.factorize(pd.concat([ids, pd.Series(values).astype(str)], ignore_index=True))[0][len(ids):]
    return np.where(codes < len(ids), codes, -1).astype(np.int64)


@dataclass
class Matches:
    """Detections ranked per class, each marked TP or FP. Arrays are in rank order, class by class."""

    class_id: np.ndarray  # (n,) int
    score: np.ndarray  # (n,) float
    tp: np.ndarray  # (n,) bool
    image: np.ndarray  # (n,) index into image_ids
    n_truth: np.ndarray  # (15,) truth boxes per class
    image_ids: np.ndarray  # the truth's images
    ignored: int = 0  # predicted boxes of images absent from the truth


def match(truth: pd.DataFrame, preds: pd.DataFrame, iou_thr: float = IOU_THRESHOLD) -> Matches:
    """Rank and match `preds` (PRED_COLUMNS, submission order) against `truth` (from :func:`prepare_truth`)."""
    return _match(truth, preds, iou_thr)[0]


def _match(truth: pd.DataFrame, preds: pd.DataFrame, iou_thr: float) -> tuple[Matches, np.ndarray, np.ndarray]:
    """:func:`match`, and per ranked detection its row in `preds` and the truth row a true positive claimed
    (-1 for a false positive)."""
    image_ids = pd.unique(truth["image_id"])
    t_img = index_of(truth["image_id"], image_ids)
    t_cls = truth["class_id"].to_numpy(np.int64)
    t_box = truth[list(BOX)].to_numpy(np.float64)
    n_truth = np.bincount(t_cls, minlength=N_CLASSES)

    p_img = index_of(preds["image_id"], image_ids)
    p_cls = preds["class_id"].to_numpy(np.int64)
    keep = (p_img >= 0) & (p_cls >= 0) & (p_cls < N_CLASSES)
    ignored = int((~keep).sum())
    p_img, p_cls = p_img[keep], p_cls[keep]
    p_score = preds["score"].to_numpy(np.float64)[keep]
    p_box = preds[list(BOX)].to_numpy(np.float64)[keep]

    # rank: class, score descending, submission order (stable)
    order = np.lexsort((np.arange(len(p_cls)), -p_score, p_cls))
    rows = np.flatnonzero(keep)[order]
    p_img, p_cls, p_score, p_box = p_img[order], p_cls[order], p_score[order], p_box[order]

    # pair every detection with the truth boxes of its image and class
    t_key = t_img * N_CLASSES + t_cls
    t_order = np.argsort(t_key, kind="stable")  # keeps the truth's own order within an image and class
    t_key_sorted = t_key[t_order]
    p_key = p_img * N_CLASSES + p_cls
    lo = np.searchsorted(t_key_sorted, p_key, side="left")
    cnt = np.searchsorted(t_key_sorted, p_key, side="right") - lo
    total = int(cnt.sum())
    best_truth = np.full(len(p_cls), -1, dtype=np.int64)
    if total:
        det = np.repeat(np.arange(len(p_cls)), cnt)
        starts = np.cumsum(cnt) - cnt
        pair_truth = t_order[np.repeat(lo, cnt) + np.arange(total) - np.repeat(starts, cnt)]
        iou_ = iou(p_box[det], t_box[pair_truth])
        has = np.flatnonzero(cnt)
        seg_max = np.maximum.reduceat(iou_, starts[has])
        best_iou = np.zeros(len(p_cls))
        best_iou[has] = seg_max
        at_max = np.flatnonzero(iou_ == best_iou[det])
        first_det, first = np.unique(det[at_max], return_index=True)  # first truth box with the best IoU
        ok = best_iou[first_det] > iou_thr
        best_truth[first_det[ok]] = pair_truth[at_max[first[ok]]]
    tp = np.zeros(len(p_cls), dtype=bool)
    valid = np.flatnonzero(best_truth >= 0)
    _, first_hit = np.unique(best_truth[valid], return_index=True)  # rank order: the first claim wins
    tp[valid[first_hit]] = True
    claimed = np.where(tp, best_truth, -1)
    return Matches(p_cls, p_score, tp, p_img, n_truth, np.asarray(image_ids), ignored), rows, claimed


@dataclass
class Marks:
    """Every predicted box marked TP or FP and every truth box found or missed, by the matching that
    :func:`average_precision` scores (`matches`): counts taken from here agree with `vinbig score`."""

    tp: np.ndarray  # (len(preds),) bool: a true positive
    scored: np.ndarray  # (len(preds),) bool: False for rows the metric ignores (image absent from the truth)
    found_by: np.ndarray  # (len(truth),) int: the row of preds that found the truth box, -1 when missed (FN)
    matches: Matches

    @property
    def found(self) -> np.ndarray:
        return self.found_by >= 0


def mark(truth: pd.DataFrame, preds: pd.DataFrame, iou_thr: float = IOU_THRESHOLD) -> Marks:
    """The competition's matching of `preds` (PRED_COLUMNS, submission order) against `truth` (from
    :func:`prepare_truth`), row by row: which detections are true positives and which truth boxes they found.

    A truth box counts as found at a score threshold t when the score of its ``found_by`` row is >= t: matching is
    greedy in rank order, so dropping the detections below t changes no status above it.
    """
    m, rows, claimed = _match(truth, preds, iou_thr)
    tp = np.zeros(len(preds), dtype=bool)
    tp[rows[m.tp]] = True
    scored = np.zeros(len(preds), dtype=bool)
    scored[rows] = True
    found_by = np.full(len(truth), -1, dtype=np.int64)
    found_by[claimed[m.tp]] = rows[m.tp]
    return Marks(tp, scored, found_by, m)


# --------------------------------------------------------------------------- average precision


def _ap(tp: np.ndarray, n_truth: int) -> tuple[float, np.ndarray, np.ndarray]:
    """VOC 2010 all-point AP of ranked TP flags; also the precision and recall curves."""
    ctp = np.cumsum(tp)
    recall = ctp / float(n_truth)
    precision = ctp / np.maximum(np.arange(1, len(tp) + 1), np.finfo(np.float64).eps)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])), precision, recall


@dataclass
class Result:
    """Per-class AP (NaN for classes absent from the truth) and their mean."""

    ap: np.ndarray  # (15,)
    n_truth: np.ndarray  # (15,)
    n_pred: np.ndarray  # (15,)
    curves: dict = field(default_factory=dict)  # class -> (precision, recall), when asked for
    ignored: int = 0

    @property
    def present(self) -> np.ndarray:
        return self.n_truth > 0

    @property
    def mean_ap(self) -> float:
        return float(np.mean(self.ap[self.present])) if self.present.any() else 0.0

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({
            "class_id": np.arange(N_CLASSES), "class_name": CLASS_NAMES, "ap": self.ap,
            "n_truth": self.n_truth, "n_pred": self.n_pred, "present": self.present,
        })

    def format(self) -> str:
        lines = [f"{'id':>2}  {'class':<20} {'AP':>7} {'truth':>7} {'preds':>8}"]
        for r in self.table().itertuples():
            ap = f"{r.ap:7.4f}" if r.present else " absent"
            lines.append(f"{r.class_id:>2}  {r.class_name:<20} {ap} {r.n_truth:>7} {r.n_pred:>8}")
        n = int(self.present.sum())
        lines.append(f"mAP@0.4 over {n} class{'es' if n != 1 else ''} present: {self.mean_ap:.4f}")
        return "\n".join(lines)

    def to_json(self) -> str:
        classes = [{"class_id": int(r.class_id), "class_name": r.class_name,
                    "ap": float(r.ap) if r.present else None, "n_truth": int(r.n_truth),
                    "n_pred": int(r.n_pred), "present": bool(r.present)} for r in self.table().itertuples()]
        return json.dumps({"map": self.mean_ap, "iou_threshold": IOU_THRESHOLD, "classes": classes,
                           "ignored_predictions": self.ignored}, indent=2)


def average_precision(m: Matches, keep: np.ndarray | None = None, classes=None, curves: bool = False) -> Result:
    """AP per class from matched detections; `keep` (bool per image) drops whole images' detections."""
    sel = np.ones(len(m.tp), dtype=bool) if keep is None else np.asarray(keep, dtype=bool)[m.image]
    cls, tp = m.class_id[sel], m.tp[sel]
    bounds = np.searchsorted(cls, np.arange(N_CLASSES + 1))  # ranked detections are grouped by class
    ap = np.full(N_CLASSES, np.nan)
    out = {}
    for c in range(N_CLASSES) if classes is None else classes:
        if m.n_truth[c] == 0:
            continue
        ap[c], precision, recall = _ap(tp[bounds[c]:bounds[c + 1]], int(m.n_truth[c]))
        if curves:
            out[c] = (precision, recall)
    return Result(ap, m.n_truth.copy(), np.diff(bounds), out, m.ignored)


def evaluate(truth: pd.DataFrame, preds: pd.DataFrame, iou_thr: float = IOU_THRESHOLD,
             curves: bool = False) -> Result:
    """The metric of `preds` (PRED_COLUMNS, submission order) against a truth table (TRUTH_COLUMNS)."""
    return average_precision(match(prepare_truth(truth), preds, iou_thr), curves=curves)
