"""Rank calibration of each detector run's scores before fusion (fusion.calibration: rank).

Runs whose scores mean different things (a YOLO at 1024 px sure at 0.3, another at 0.8) are put on one scale: a
run's score for class c becomes its rank among that run's out-of-fold scores for class c, a number in (0, 1).
`vinbig tune` fits the knots, the quantiles of each run and class at the probabilities ``(k + 0.5) / KNOTS``, on the
out-of-fold boxes and writes them to fusion.yaml (fusion.calibration_knots: ``RUN/CLASS_ID: "q0 q1 ..."``, one line
each, the numbers to 6 significant digits), where
`vinbig fuse`, `vinbig report` and `vinbig predict` (an export carries fusion.yaml) find them.

A score is mapped piecewise linearly through the knots, from (0, 0) to (1, 1): strictly increasing, so a run alone
ranks its boxes of a class as before. A class a run never predicted out of fold keeps its raw scores.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from vinbig.artifacts import N_CLASSES
from vinbig.errors import ConfigError
from vinbig.log import some

logger = logging.getLogger(__name__)
KNOTS = 100  # quantiles stored per run and class


def fit_knots(preds: pd.DataFrame) -> dict[str, str]:
    """The knots of every (run, class) of the detector's out-of-fold boxes `preds` (DETECTOR_PRED_COLUMNS):
    ``{"RUN/CLASS_ID": "KNOTS quantiles, non-decreasing, space-separated"}``; fusing reads them back from the text,
    so that tune scores exactly what fuse will do with fusion.yaml."""
    p = (np.arange(KNOTS) + 0.5) / KNOTS
    out = {}
    for (run, c), g in preds.groupby(["run", "class_id"], sort=True):
        q = np.maximum.accumulate(np.quantile(g["score"].to_numpy(np.float64), p))
        out[f"{run}/{int(c)}"] = " ".join(f"{v:.6g}" for v in q)
    return out


def knot_values(text) -> np.ndarray:
    """The numbers of one run and class's knots (their text in fusion.calibration_knots); NaN where one is not a
    number."""
    try:
        return np.array([float(v) for v in str(text).split()] or [np.nan])
    except ValueError:
        return np.array([np.nan])


def _curve(knots) -> tuple[np.ndarray, np.ndarray]:
    """The points of the map: each distinct knot at the mean probability of its equal knots, and (0, 0), (1, 1)."""
    x = knot_values(knots)
    p = (np.arange(len(x)) + 0.5) / len(x)
    xs, first = np.unique(x, return_index=True)
    ys = np.add.reduceat(p, first) / np.diff(np.append(first, len(x)))
    if xs[0] > 0:
        xs, ys = np.append(0.0, xs), np.append(0.0, ys)
    if xs[-1] < 1:
        xs, ys = np.append(xs, 1.0), np.append(ys, 1.0)
    return xs, ys


def calibrate_scores(scores, knots) -> np.ndarray:
    """`scores` in [0, 1] mapped through one run and class's `knots`: strictly increasing."""
    return np.interp(np.asarray(scores, dtype=np.float64), *_curve(knots))


def check_knots(knots) -> None:
    """fusion.calibration_knots: keys RUN/CLASS_ID, values non-decreasing scores in [0, 1], space-separated."""
    for key, values in knots.items():
        run, _, c = str(key).rpartition("/")
        bad = not run or not c.isdigit() or int(c) >= N_CLASSES
        x = knot_values(values)
        if bad or not np.isfinite(x).all() or (x < 0).any() or (x > 1).any() or (np.diff(x) < 0).any():
            raise ConfigError(f"fusion.calibration_knots[{key!r}]: keys are RUN/CLASS_ID (class 0..{N_CLASSES - 1}) "
                              "and values non-decreasing scores in [0, 1], space-separated; they are fitted by 'vinbig tune' "
                              "(fusion.tune_calibration with rank), so run it again rather than edit them")


def calibrate(preds: pd.DataFrame, knots: dict) -> pd.DataFrame:
    """`preds` with each run's scores of each class mapped through its knots (fusion.calibration_knots). A run
    without any knot is a ConfigError naming the fix; a class without knots keeps its scores (logged)."""
    runs = [str(r) for r in pd.unique(preds["run"])]
    missing = [r for r in runs if not any(str(k).rpartition("/")[0] == r for k in knots)]
    if missing:
        raise ConfigError(f"fusion.calibration is rank but fusion.calibration_knots has no knots of detector run(s) "
                          f"{', '.join(missing)}; run 'vinbig tune' (it fits them on the out-of-fold predictions "
                          "and writes them to WORK/fusion.yaml), or set fusion.calibration=none")
    score = preds["score"].to_numpy(np.float64).copy()
    run, cls = preds["run"].astype(str).to_numpy(), preds["class_id"].to_numpy()
    raw = []
    for (r, c), rows in pd.Series(np.arange(len(preds))).groupby([run, cls], sort=False):
        key = f"{r}/{int(c)}"
        if key in knots:
            score[rows.to_numpy()] = calibrate_scores(score[rows.to_numpy()], knots[key])
        else:
            raw.append(key)
    if raw:
        logger.info("no calibration knots of %s: their scores are fused as they are", some(raw))
    return preds.assign(score=score)
