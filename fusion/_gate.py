"""The "No finding" gate: a binary classifier's P(abnormal) decides what class 14 gets.

With p averaged over folds (and over the classifier runs, weighted):

* p < low: the image gets only ``14 1 0 0 1 1`` (its boxes are dropped);
* low <= p < high: its boxes stay and ``14 (1-p) 0 0 1 1`` is appended;
* p >= high: its boxes stay alone;
* an image left without boxes gets ``14 1 0 0 1 1``.

While the gate is on it alone writes class 14: class-14 boxes of the detector are dropped. Images
without a probability keep their boxes alone. With the gate off (no classifier), a detector's
class-14 boxes become one ``14 s 0 0 1 1`` per image (s the highest of them).

The decision per image, in words, is :data:`GATES` (:func:`gate_decisions`): the one place that says it, for
:func:`apply_gate`, `vinbig predict`'s "gate" column and the report page.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from vinbig.artifacts import BOX, DEFAULT_RUN, NO_FINDING, NO_FINDING_BOX, PRED_COLUMNS
from vinbig.metric import index_of
from vinbig.runs import weight_of

logger = logging.getLogger(__name__)


def image_probabilities(clf: pd.DataFrame, weights: dict | None = None, runs=None) -> pd.Series:
    """P(abnormal) per image: per classifier run, the fold -1 row (mean over folds) where there is one, else the
    mean of its rows; then the mean over the runs (`runs`, None: all) weighted by `weights` (fusion.classifier_weights:
    unnamed runs weigh 1, 0 leaves a run out)."""
    clf = clf.assign(image_id=clf["image_id"].astype(str))
    if "run" not in clf:
        clf = clf.assign(run=DEFAULT_RUN)
    weights = weights or {}
    total, weight = None, None
    for run, g in clf.groupby("run", sort=False):
        w = weight_of(weights, run)
        if w == 0 or (runs is not None and run not in runs):
            continue
        mean_rows = g[g["fold"] == -1]
        p = g[g["fold"] != -1].groupby("image_id", sort=False)["p_abnormal"].mean()
        p = pd.concat([p[~p.index.isin(mean_rows["image_id"])],
                       mean_rows.drop_duplicates("image_id", keep="last").set_index("image_id")["p_abnormal"]])
        p = p.astype(np.float64) * w
        ws = pd.Series(w, index=p.index)
        total = p if total is None else total.add(p, fill_value=0)
        weight = ws if weight is None else weight.add(ws, fill_value=0)
    if total is None:
        return pd.Series(dtype=np.float64)
    return (total / weight).astype(np.float64)


# the gate's decision per image: what :func:`apply_gate` does with it
GATES = {
    "off": "no classifier (or fusion.gate false): the boxes stand alone",
    "normal": "P(abnormal) < fusion.low: 'No finding' alone, the boxes dropped",
    "unsure": "fusion.low <= P(abnormal) < fusion.high: the boxes and 'No finding' with score 1 - P(abnormal)",
    "abnormal": "P(abnormal) >= fusion.high: the boxes alone",
    "no box": "P(abnormal) >= fusion.low but the detectors found no box: 'No finding' alone",
}


def gate_decisions(p, has_boxes, low: float, high: float) -> np.ndarray:
    """The gate's decision (a key of :data:`GATES`) of each image with P(abnormal) `p` (NaN: none, the boxes stand
    alone) and boxes (`has_boxes`, before the gate)."""
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    has_boxes = np.broadcast_to(np.asarray(has_boxes, dtype=bool), p.shape)
    out = np.full(p.shape, "off", dtype=object)
    known = ~np.isnan(p)
    out[known & (p >= low) & has_boxes] = "unsure"
    out[known & (p >= high) & has_boxes] = "abnormal"
    out[known & (p >= low) & ~has_boxes] = "no box"
    out[known & (p < low)] = "normal"
    return out


def gate_decision(p: float | None, has_boxes: bool, low: float, high: float) -> str:
    """The gate's decision for one image (:func:`gate_decisions`); `p` None: no P(abnormal), the gate off."""
    return str(gate_decisions([np.nan if p is None else p], has_boxes, low, high)[0])


def _no_finding_rows(image_ids: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    out = pd.DataFrame({"image_id": image_ids, "class_id": NO_FINDING, "score": scores})
    for name, v in zip(BOX, NO_FINDING_BOX):
        out[name] = v
    return out


def check_thresholds(low: float, high: float) -> None:
    from vinbig.errors import ConfigError

    if not (0.0 <= low <= high):
        raise ConfigError(f"fusion.low {low} and fusion.high {high}: need 0 <= low <= high "
                          "(high above 1 never keeps boxes alone)")


def apply_gate(boxes: pd.DataFrame, image_ids, p: pd.Series | None, low: float, high: float) -> pd.DataFrame:
    """Final predictions of `image_ids` (every one gets at least one row), in their order.

    `boxes`: fused boxes (PRED_COLUMNS). `p`: P(abnormal) by image id, or None for the gate off.
    """
    image_ids = np.asarray(image_ids).astype(str)
    pos = index_of(boxes["image_id"], image_ids)
    boxes = boxes[pos >= 0]
    pos = pos[pos >= 0]
    is14 = boxes["class_id"].to_numpy() == NO_FINDING
    extra = []
    if p is None:
        det14 = boxes[is14]
        if len(det14):
            best = det14.groupby("image_id", sort=False)["score"].max()
            extra.append(_no_finding_rows(best.index.to_numpy(), best.to_numpy()))
        boxes, pos = boxes[~is14], pos[~is14]
    else:
        check_thresholds(low, high)
        if is14.any():
            logger.info("the gate writes class 14: %d class-14 boxes of the detector dropped", int(is14.sum()))
        boxes, pos = boxes[~is14], pos[~is14]
        pv = p.reindex(image_ids).to_numpy(np.float64)
        has_boxes = np.zeros(len(image_ids), dtype=bool)
        has_boxes[pos] = True
        decision = gate_decisions(pv, has_boxes, low, high)  # no probability (NaN): "off", boxes stay
        keep = decision[pos] != "normal"
        boxes, pos = boxes[keep], pos[keep]
        middle = decision == "unsure"
        extra.append(_no_finding_rows(image_ids[middle], 1.0 - pv[middle]))
    has = np.zeros(len(image_ids), dtype=bool)
    has[pos] = True
    for e in extra:
        has[index_of(e["image_id"], image_ids)] = True
    extra.append(_no_finding_rows(image_ids[~has], np.ones(int((~has).sum()))))
    out = pd.concat([boxes.loc[:, list(PRED_COLUMNS)], *extra], ignore_index=True)
    code = index_of(out["image_id"], image_ids)
    return out.iloc[np.argsort(code, kind="stable")].reset_index(drop=True)
