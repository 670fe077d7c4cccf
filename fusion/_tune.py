"""`vinbig tune`: search the WBF parameters and the gate thresholds on the out-of-fold predictions.

Every WBF setting of the grid (iou_thr x skip_box_thr x conf_type, and with several detector runs x levels x
calibration, :mod:`fusion._levels`; the rank knots are fitted once on the OOF boxes) is fused once; the gate grid
(low x high) is then scored on top of those fused boxes without fusing or matching again:

* a detection's TP/FP status depends only on its own image, so the boxes of classes 0-13 are
  matched once per WBF setting and ``low`` only drops whole images (:func:`vinbig.metric.average_precision`
  with a per-image mask);
* class 14 is one ``0 0 1 1`` row per image, a hit exactly when the image's truth is "No finding";
  its score per image follows from p, low, high and whether the image kept boxes.

The result equals scoring ``apply_gate(fused, ...)`` with :func:`vinbig.metric.evaluate` (a test checks it).

With several detector or classifier runs, one weight per run (fusion.run_weights, fusion.classifier_weights) is
then chosen from fusion.tune_run_weights, one run at a time, twice over every run (coordinate search), with the
best WBF setting and the best gate pair of each trial; the runs table shows each run alone and the ensemble with
equal and with tuned weights. fusion.tune_run_weights_by says which are written: the searched weights, or equal
ones (the guard against tuning to the OOF set's noise, where the leaderboard over seeds says the search loses).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import yaml

from vinbig.artifacts import N_CLASSES, NO_FINDING, Work, atomic_path, read_classifier_preds, read_labels, writing
from vinbig.metric import _ap, average_precision, index_of, match, prepare_truth
from vinbig.errors import ConfigError
from vinbig.runs import check_weights, weight_of

from fusion._calibrate import fit_knots
from fusion._fuse import Prepared, check_params, prepare
from fusion._gate import apply_gate, image_probabilities
from fusion._levels import Arranged, check_levels

logger = logging.getLogger(__name__)


def oof_truth(work: Work | str | os.PathLike, image_ids) -> pd.DataFrame:
    """labels.csv restricted to `image_ids`, prepared for the metric."""
    work = Work.of(work)
    labels = read_labels(work)
    return prepare_truth(labels[labels["image_id"].isin(set(np.asarray(image_ids).astype(str)))])


def gate_scores(truth: pd.DataFrame, fused: pd.DataFrame, image_ids, p: pd.Series, lows, highs) -> pd.DataFrame:
    """mAP and per-class AP of every (low, high) pair with low <= high, gate applied to `fused`."""
    image_ids = np.asarray(image_ids).astype(str)
    boxes = fused[fused["class_id"] != NO_FINDING]
    m = match(truth, boxes)
    # per image, in the order of image_ids: p, kept boxes, in the truth, a class-14 truth
    truth_pos = index_of(m.image_ids, image_ids)  # where each truth image sits in image_ids
    in_truth = np.zeros(len(image_ids), dtype=bool)
    in_truth[truth_pos[truth_pos >= 0]] = True
    pv = p.reindex(image_ids).to_numpy(np.float64)
    has_boxes = np.zeros(len(image_ids), dtype=bool)
    pos = index_of(boxes["image_id"], image_ids)
    has_boxes[pos[pos >= 0]] = True
    hit14 = np.isin(image_ids, truth.loc[truth["class_id"] == NO_FINDING, "image_id"].to_numpy().astype(str))
    rows = []
    for low in lows:
        keep = ~(pv < low)
        r = average_precision(m, keep=np.where(truth_pos >= 0, keep[truth_pos], False), classes=range(NO_FINDING))
        kept = keep & has_boxes
        for high in highs:
            if low > high:
                continue
            s14 = np.where(~kept, 1.0, np.where((pv >= low) & (pv < high), 1.0 - pv, np.nan))
            ap = r.ap.copy()
            if m.n_truth[NO_FINDING]:
                has = ~np.isnan(s14) & in_truth
                idx = np.flatnonzero(has)
                order = idx[np.lexsort((idx, -s14[idx]))]
                ap[NO_FINDING] = _ap(hit14[order], int(m.n_truth[NO_FINDING]))[0]
            present = m.n_truth > 0
            rows.append({"low": float(low), "high": float(high),
                         "map": float(np.mean(ap[present])) if present.any() else 0.0,
                         **{f"ap{c}": ap[c] for c in range(N_CLASSES)}})
    return pd.DataFrame(rows)


class Tuning(NamedTuple):
    """What `vinbig tune` found: the best ``values`` (TUNED_KEYS) and their OOF ``map``; ``before``: the mAP of
    the config's own values when the grid holds them; ``table``: every trial."""

    values: dict
    map: float
    n_images: int
    before: float | None
    table: pd.DataFrame
    runs: pd.DataFrame | None = None  # several runs: each run alone and the ensemble (what, detector, classifier, map)


def tune(work: Work | str | os.PathLike, fusion_cfg: dict) -> Tuning:
    """Try the grid of `fusion_cfg` (``tune_*`` keys) on the out-of-fold predictions of `work`."""
    f = fusion_cfg
    work = Work.of(work)
    grid = list(itertools.product(f["tune_iou_thr"], f["tune_skip_box_thr"], f["tune_conf_type"]))
    if not grid or not f["tune_levels"] or not f["tune_calibration"]:
        raise ConfigError("fusion.tune_iou_thr, tune_skip_box_thr, tune_conf_type, tune_levels and tune_calibration "
                          "must each list at least one value")
    for iou, skip, ct in grid:
        check_params(iou, skip, ct, f["engine"], f["weights"])
    for lv, cal in itertools.product(f["tune_levels"], f["tune_calibration"]):
        check_levels(lv, cal)
    start = time.perf_counter()
    src = prepare(work, "oof", run_weights=f["run_weights"])  # a run of weight 0 is left out, as fuse does
    several = len(src.runs) > 1  # levels and calibration change nothing for one run
    ways = list(itertools.product(f["tune_levels"], f["tune_calibration"])) if several else [("flat", "none")]
    knots = f["calibration_knots"]
    if any(cal == "rank" for _, cal in ways):
        knots = fit_knots(src.preds)
    truth = oof_truth(work, src.image_ids)
    p = clf = None
    lows, highs = f["tune_low"] or [f["low"]], f["tune_high"] or [f["high"]]
    n_boxes = len(src.preds)
    if f["gate"] and work.classifier_preds("oof").is_file():
        clf = read_classifier_preds(work, "oof")
        check_weights(f["classifier_weights"], list(pd.unique(clf["run"])), "classifier_weights")  # as fuse does
        p = image_probabilities(clf, f["classifier_weights"])
        logger.info("tuning %d WBF settings x %d gate pairs on %d out-of-fold images (%d boxes)",
                    len(grid) * len(ways), sum(lo <= hi for lo in lows for hi in highs), len(src.image_ids), n_boxes)
    else:
        why = "fusion.gate is false" if not f["gate"] else f"no {work.classifier_preds('oof')}"
        logger.info("gate off (%s): tuning %d WBF settings only, on %d out-of-fold images (%d boxes)",
                    why, len(grid) * len(ways), len(src.image_ids), n_boxes)
    logger.info("loaded in %.1f s", time.perf_counter() - start)
    trials, k = [], 0
    for lv, cal in ways:  # one arrangement held at a time
        sets = Arranged(src, f["weights"], f["run_weights"], lv, cal, knots)
        for iou, skip, ct in grid:
            k += 1
            t0 = time.perf_counter()
            fused = sets.fuse(iou_thr=iou, skip_box_thr=skip, conf_type=ct, engine=f["engine"], workers=f["workers"],
                              desc=f"fuse {k}/{len(grid) * len(ways)}")
            t1 = time.perf_counter()
            tab = _scores(truth, fused, src.image_ids, p, lows, highs)
            for name, value in (("calibration", cal), ("levels", lv), ("conf_type", ct),
                                ("skip_box_thr", float(skip)), ("iou_thr", float(iou))):
                tab.insert(0, name, value)
            tab["fuse_s"], tab["score_s"] = t1 - t0, time.perf_counter() - t1
            trials.append(tab)
            logger.info("iou_thr %.3g skip %.3g %s%s: best mAP %.4f (fuse %.1f s, %d gate pairs scored in %.1f s)",
                        iou, skip, ct, f", {lv}, {cal}" if several else "", tab["map"].max(), t1 - t0, len(tab),
                        time.perf_counter() - t1)
    table = pd.concat(trials, ignore_index=True)
    best = table.loc[table["map"].idxmax()]
    values = {"iou_thr": float(best.iou_thr), "skip_box_thr": float(best.skip_box_thr),
              "conf_type": str(best.conf_type)}
    if several:
        values.update(levels=str(best.levels), calibration=str(best.calibration))
    if p is not None:
        values.update(low=float(best.low), high=float(best.high))
    same = ((table.iou_thr == f["iou_thr"]) & (table.skip_box_thr == f["skip_box_thr"])
            & (table.conf_type == f["conf_type"]))
    if several:
        same &= (table.levels == f["levels"]) & (table.calibration == f["calibration"])
    if table["low"].notna().all():
        same &= (table.low == f["low"]) & (table.high == f["high"])
    before = float(table.loc[same, "map"].iloc[0]) if same.any() else None
    best_map, runs = float(best["map"]), None
    clf_runs = list(pd.unique(clf["run"])) if clf is not None else []
    if several or len(clf_runs) > 1:
        search = _RunSearch(src, truth, clf, f, {**values, "calibration_knots": knots}, lows, highs)
        run_w, clf_w, best_map, runs = search.run(src.runs, clf_runs)
        values.update(run_weights=run_w, classifier_weights=clf_w)
        if clf is not None:
            values.update(low=search.gate[0], high=search.gate[1])
    if several and any(cal == "rank" for _, cal in ways):
        values["calibration_knots"] = knots  # also when none won: --set fusion.calibration=rank can use them
    logger.info("tuning took %.1f s", time.perf_counter() - start)
    return Tuning(values, best_map, len(src.image_ids), before, table, runs)


def _scores(truth: pd.DataFrame, fused: pd.DataFrame, image_ids, p: pd.Series | None, lows, highs) -> pd.DataFrame:
    """mAP and per-class AP of the fused boxes with every gate pair (:func:`gate_scores`), or with the gate off."""
    if p is not None:
        return gate_scores(truth, fused, image_ids, p, lows, highs)
    r = average_precision(match(truth, apply_gate(fused, image_ids, None, 0.0, 0.0)))
    return pd.DataFrame([{"low": None, "high": None, "map": r.mean_ap, **{f"ap{c}": r.ap[c] for c in range(N_CLASSES)}}])


class _RunSearch:
    """Scores of run weights with the chosen WBF setting, levels and calibration: each detector weighting fused
    once."""

    def __init__(self, src: Prepared, truth: pd.DataFrame, clf: pd.DataFrame | None, f: dict, values: dict,
                 lows, highs):
        self.src, self.truth, self.clf, self.f, self.values = src, truth, clf, f, values
        self.lows, self.highs = lows, highs
        self.fused: dict[tuple, tuple[pd.DataFrame, np.ndarray]] = {}  # run weights -> fused boxes, their images
        self.gate: tuple[float, float] = (values.get("low", 0.0), values.get("high", 0.0))

    def score(self, run_w: dict, clf_w: dict) -> tuple[float, float, float]:
        """OOF mAP of the weights, with the best gate pair: ``(map, low, high)``."""
        key = tuple(sorted(run_w.items()))
        if key not in self.fused:
            v = self.values
            sets = Arranged(self.src.only([r for r, w in run_w.items() if w > 0]), self.f["weights"], run_w,
                            v.get("levels", "flat"), v.get("calibration", "none"), v["calibration_knots"])
            self.fused[key] = (sets.fuse(iou_thr=v["iou_thr"], skip_box_thr=v["skip_box_thr"],
                                         conf_type=v["conf_type"], engine=self.f["engine"], workers=self.f["workers"],
                                         desc="fuse runs"), sets.inp.image_ids)
        fused, image_ids = self.fused[key]
        p = None if self.clf is None else image_probabilities(self.clf, clf_w)
        tab = _scores(self.truth, fused, image_ids, p, self.lows, self.highs)
        top = tab.loc[tab["map"].idxmax()]
        return float(top["map"]), float(top["low"]) if p is not None else np.nan, \
            float(top["high"]) if p is not None else np.nan

    def _descend(self, names: list[str], current: dict, other: dict, detector: bool) -> tuple[dict, float]:
        """Coordinate search over the weights of `names` (fusion.tune_run_weights), two passes."""
        def trial(w: dict) -> tuple[float, float, float]:
            return self.score(w, other) if detector else self.score(other, w)

        best = trial(current)
        for _ in range(2):
            changed = False
            for name in names:
                for w in self.f["tune_run_weights"]:
                    cand = {**current, name: float(w)}
                    if cand == current or not any(v > 0 for v in cand.values()):
                        continue
                    s = trial(cand)
                    if s[0] > best[0] + 1e-9:
                        best, current, changed = s, cand, True
            if not changed:
                break
        return current, best[0]

    def run(self, det_runs: list[str], clf_runs: list[str]) -> tuple[dict, dict, float, pd.DataFrame]:
        """The run weights written (fusion.tune_run_weights_by: the searched ones, or equal ones), the classifier
        weights, their OOF mAP and the runs table (each run alone, the ensemble with equal and with searched
        weights; ``written`` marks the row whose weights are written)."""
        f = self.f
        # equal: every run the config keeps weighs 1
        equal_d = {r: float(weight_of(f["run_weights"], r) > 0) for r in det_runs}
        equal_c = {r: float(weight_of(f["classifier_weights"], r) > 0) for r in clf_runs}
        run_w = {r: weight_of(f["run_weights"], r) for r in det_runs}
        clf_w = {r: weight_of(f["classifier_weights"], r) for r in clf_runs}
        if len(det_runs) > 1:
            run_w, _ = self._descend(det_runs, run_w, clf_w, True)
        if len(clf_runs) > 1:
            clf_w, _ = self._descend(clf_runs, clf_w, run_w, False)
        searched = f["tune_run_weights_by"] == "search"
        det_out, clf_out = (run_w, clf_w) if searched else (equal_d, equal_c)
        rows = []

        def row(what: str, d: dict, c: dict, written: bool = False) -> None:
            m, low, high = self.score(d, c)
            rows.append({"what": what, "detector": _weights_text(d), "classifier": _weights_text(c), "map": m,
                         "low": low, "high": high, "written": written})

        for r in det_runs if len(det_runs) > 1 else []:
            row(f"detector run {r} alone", {x: float(x == r) for x in det_runs}, clf_out)
        for r in clf_runs if len(clf_runs) > 1 else []:
            row(f"classifier run {r} alone", det_out, {x: float(x == r) for x in clf_runs})
        row("ensemble, equal weights", equal_d, equal_c, not searched)
        row("ensemble, tuned weights", run_w, clf_w, searched)
        table = pd.DataFrame(rows)
        final = next(r for r in rows if r["written"])
        self.gate = (final["low"], final["high"])
        for r in table.itertuples():
            logger.info("%s: OOF mAP %.4f", r.what, r.map)
        return det_out, clf_out, float(final["map"]), table


def _weights_text(w: dict) -> str:
    return " ".join(f"{k}:{v:g}" for k, v in w.items()) or "-"


def format_runs(runs: pd.DataFrame) -> str:
    """Each run alone and the ensemble, equal and tuned weights (OOF mAP, gate pair); ``*`` marks the weights
    written (fusion.tune_run_weights_by)."""
    lines = ["runs (best WBF setting; each row with its best gate thresholds; * the weights written):",
             f"{'':<32} {'detector weights':<28} {'classifier weights':<22} {'low':>6} {'high':>6} {'mAP':>7}"]
    for r in runs.itertuples():
        low = "-" if pd.isna(r.low) else f"{r.low:.3g}"
        high = "-" if pd.isna(r.high) else f"{r.high:.3g}"
        lines.append(f"{r.what:<32} {r.detector:<28} {r.classifier:<22} {low:>6} {high:>6} {r.map:>7.4f}"
                     + (" *" if r.written else ""))
    return "\n".join(lines)


def format_tables(table: pd.DataFrame) -> str:
    """The WBF settings tried (each with its best gate) and, for the best one, the gate grid (mAP). The levels and
    calibration columns are shown when more than one of them was tried."""
    keys = ["iou_thr", "skip_box_thr", "conf_type", "levels", "calibration"]
    ways = table[["levels", "calibration"]].drop_duplicates().shape[0] > 1
    g = table.loc[table.groupby(keys, sort=False)["map"].idxmax()]
    g = g.sort_values("map", ascending=False)
    way_head = f" {'levels':<6} {'calibration':<11}" if ways else ""
    lines = ["WBF settings tried (each with its best gate thresholds):",
             f"{'iou_thr':>8} {'skip':>7} {'conf_type':<24}{way_head} {'low':>6} {'high':>6} {'mAP':>7} {'fuse s':>7}"]
    for r in g.itertuples():
        low = "-" if pd.isna(r.low) else f"{r.low:.3g}"
        high = "-" if pd.isna(r.high) else f"{r.high:.3g}"
        way = f" {r.levels:<6} {r.calibration:<11}" if ways else ""
        lines.append(f"{r.iou_thr:>8.3g} {r.skip_box_thr:>7.3g} {r.conf_type:<24}{way} {low:>6} {high:>6} "
                     f"{r.map:>7.4f} {r.fuse_s:>7.1f}")
    top = g.iloc[0]
    sub = table[np.logical_and.reduce([table[k] == top[k] for k in keys])]
    if sub["low"].notna().all() and len(sub) > 1:
        pivot = sub.pivot_table(index="low", columns="high", values="map")
        lines += ["", f"gate grid for iou_thr {top.iou_thr:.3g}, skip {top.skip_box_thr:.3g}, {top.conf_type}"
                      + (f", {top.levels}, {top.calibration}" if ways else "") + " (mAP; rows low, columns high):",
                  pivot.to_string(float_format=lambda v: f"{v:.4f}", na_rep="-")]
    return "\n".join(lines)


def write_tuned(path: Path, result: Tuning) -> Path:
    """Write the best values as a config file of one section, ``fusion:``, atomically (calibration knots, when
    fitted, one line per run and class)."""
    header = (f"# written by 'vinbig tune': out-of-fold mAP@0.4 {result.map:.4f} on {result.n_images} images"
              + (f" (the config's own values: {result.before:.4f})" if result.before is not None else "")
              + ".\n# 'vinbig fuse' and 'vinbig report' read these values over the config; --set still wins.\n")
    text = header + yaml.safe_dump({"fusion": result.values}, sort_keys=False, width=1 << 16)
    with writing(path, "free disk space or fix the folder's permissions, then run 'vinbig tune' again"):
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    return path
