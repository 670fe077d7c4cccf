"""Flat or two-level weighted boxes fusion of the detector runs' prediction sets (fusion.levels), on raw or
rank-calibrated scores (fusion.calibration, :mod:`fusion._calibrate`).

* flat: one WBF over every (run, fold, TTA) set, each weighing its run's weight times its own (fusion.weights).
* runs: as the 2nd place of the competition fused its model files. First each run's own sets (fold x TTA) are
  fused into one set per run, each set with its own weight; then the runs' fused sets are fused, each weighing its
  run's weight. Both levels use iou_thr and conf_type; skip_box_thr drops boxes once, before the first level (the
  second sees fused scores, already lowered where a set missed the box). A run's fused set counts as a model for
  every image that run predicted, also where it has no box (as a set does in flat fusion).

Levels and calibration change nothing when one detector run is fused: a run alone is fused flat on its raw scores,
so that it scores as it always did (``vinbig fuse --run``, the runs tables of tune and report).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from vinbig.errors import ConfigError
from vinbig.runs import weight_of

from fusion._calibrate import calibrate
from fusion._fuse import FusionInput, Prepared, fuse, fuse_normalized

LEVELS = ("flat", "runs")
CALIBRATIONS = ("none", "rank")


def check_levels(levels: str, calibration: str) -> None:
    if levels not in LEVELS:
        raise ConfigError(f"fusion.levels is {levels!r}; use one of {list(LEVELS)}")
    if calibration not in CALIBRATIONS:
        raise ConfigError(f"fusion.calibration is {calibration!r}; use one of {list(CALIBRATIONS)}")


class Arranged:
    """The prediction sets of the detector runs of `src` (those it holds: see ``Prepared.select``), arranged once for
    fusion with `levels` and `calibration` (knots: fusion.calibration_knots), the sets weighted by `weights` and
    `run_weights`; :meth:`fuse` fuses them with one WBF setting. ``inp`` is the flat arrangement (its images, their
    boxes and sets)."""

    def __init__(self, src: Prepared, weights: dict, run_weights: dict, levels: str = "flat",
                 calibration: str = "none", knots: dict | None = None):
        check_levels(levels, calibration)
        self.runs = src.runs
        several = len(self.runs) > 1
        self.levels, self.calibration = (levels, calibration) if several else ("flat", "none")
        if self.calibration == "rank":
            src = replace(src, preds=calibrate(src.preds, knots or {}))
        self.inp = src.arrange(weights, run_weights)
        if self.levels == "runs":
            self.per_run = [src.only([r]).arrange(weights, {}) for r in self.runs]
            self.run_weights = np.array([weight_of(run_weights, r) for r in self.runs], dtype=np.float64)
            self.present = _present(src, self.runs)

    def fuse(self, *, iou_thr: float, skip_box_thr: float = 0.0, conf_type: str = "avg", engine: str = "numba",
             workers: int = 0, desc: str = "fuse") -> pd.DataFrame:
        """The fused boxes (PRED_COLUMNS, original pixels), image by image in the order of ``inp.image_ids``."""
        if self.levels == "flat":
            return fuse(self.inp, iou_thr=iou_thr, skip_box_thr=skip_box_thr, conf_type=conf_type, engine=engine,
                        workers=workers, desc=desc)
        parts = [fuse_normalized(inp, iou_thr=iou_thr, skip_box_thr=skip_box_thr, conf_type=conf_type, engine=engine,
                                 workers=workers, desc=f"{desc} {run}") for run, inp in zip(self.runs, self.per_run)]
        second = _stack(self.inp, parts, self.present, self.run_weights, self.runs)
        return fuse(second, iou_thr=iou_thr, skip_box_thr=0.0, conf_type=conf_type, engine=engine, workers=workers,
                    desc=f"{desc} runs")


def _present(src: Prepared, runs: list) -> np.ndarray:
    """(images, runs) bool: which runs predicted each image (out-of-fold: a run with a set of the image's fold)."""
    m = len(src.image_ids)
    if src.fold_of is None:
        return np.ones((m, len(runs)), dtype=bool)
    folds = src.preds.groupby("run", sort=False)["fold"].unique()
    return np.stack([np.isin(src.fold_of, folds[r]) for r in runs], axis=1)


def _stack(inp: FusionInput, parts: list, present: np.ndarray, run_weights: np.ndarray, runs: list) -> FusionInput:
    """The first level's fused boxes of each run (normalized, :func:`fuse_normalized`) arranged as the sets of the
    second level: one model per run that predicted the image, weighing its run weight."""
    m = len(inp.image_ids)
    img = np.concatenate([p[0] for p in parts])
    run = np.concatenate([np.full(len(p[0]), k, dtype=np.int64) for k, p in enumerate(parts)])
    order = np.lexsort((np.arange(len(img)), run, img))  # image, run, score order within the run
    img, run = img[order], run[order]
    box, score, label = (np.concatenate([p[i] for p in parts])[order] for i in (1, 2, 3))
    keys, group = np.unique(present, axis=0, return_inverse=True)
    group = group.reshape(-1)
    rank = np.cumsum(present, axis=1) - 1  # a run's place among the runs that predicted the image
    offsets = np.searchsorted(img, np.arange(m + 1))
    return FusionInput(inp.image_ids, inp.size, offsets, box, score, label, rank[img, run], group,
                       [run_weights[k] for k in keys], list(runs))
