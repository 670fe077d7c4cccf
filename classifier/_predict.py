"""Scoring images with trained fold models, the out-of-fold AUC and the "No finding" gate's operating point.

``vinbig predict-classifier --split oof``: each fold's best.pt scores its own validation images;
``--split test``: every fold's best.pt scores every test image, and rows with fold -1 hold the mean. Each
classifier run (vinbig.runs) is scored in turn, at its own input size, with a ``run`` column. The test images are
read once per run: every fold model of the run scores a batch before the next one is read (the data loader's
workers read ahead). The models are loaded and score in memory as classifier._models gives them
(``load_models(...).predict(images, image_ids)``); this module reads the PNGs and writes the rows.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from vinbig.artifacts import (CLASSIFIER_PRED_COLUMNS, DEFAULT_RUN, SPLITS, Work, check_output, fold_ids,
                              predict_command, read_classifier_preds, read_folds, read_meta, write_csv, write_fix,
                              writing)
from vinbig.errors import ConfigError
from vinbig.tables import read_table

from classifier._data import PngDataset, abnormal_targets, png_paths, worker_init
from classifier._model import Prepare, cudnn_benchmark, resolve_device
from classifier._models import TTA, ClassifierModels, check_tta, checkpoints, infer, infer_folds, load_models

logger = logging.getLogger(__name__)
__all__ = ["TTA", "infer", "infer_folds", "predict", "gate_operating_point", "score_fold"]


def auc(abnormal: Sequence[int], p: Sequence[float]) -> float:
    """ROC AUC; NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(abnormal)
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else math.nan


def bce(abnormal: Sequence[int], p: Sequence[float]) -> float:
    """Mean binary cross-entropy of probabilities `p` (unweighted): scikit-learn's log loss."""
    from sklearn.metrics import log_loss

    return float(log_loss(abnormal, p, labels=[0, 1])) if len(abnormal) else math.nan


def gate_operating_point(p: Sequence[float], abnormal: Sequence[int], max_miss: float = 0.02) -> dict:
    """The gate's low threshold: the highest `t` with at most `max_miss` of abnormal images below it
    (``p < t``), and the share of normal images it catches there (they would get "No finding" alone)."""
    p, y = np.asarray(p, float), np.asarray(abnormal).astype(bool)
    pos, neg = np.sort(p[y]), p[~y]
    if not len(pos) or not len(neg):
        raise ValueError("the gate's operating point needs both normal and abnormal images")
    k = int(math.floor(max_miss * len(pos) + 1e-9))  # abnormal images allowed below the threshold
    threshold = float(pos[k]) if k < len(pos) else math.inf
    missed, caught = int((pos < threshold).sum()), int((neg < threshold).sum())
    return {"threshold": threshold, "abnormal_missed": missed, "n_abnormal": len(pos),
            "miss_rate": missed / len(pos), "normal_caught": caught, "n_normal": len(neg),
            "normal_share": caught / len(neg)}


def _loader(paths: list[Path], imgsz: int | Sequence[int], cfg: dict, device: torch.device) -> DataLoader:
    return DataLoader(PngDataset(paths, None, imgsz), batch_size=cfg["predict_batch"], shuffle=False,
                      num_workers=cfg["workers"], pin_memory=device.type == "cuda", worker_init_fn=worker_init)


@dataclass(frozen=True)
class ClassifierPredictions:
    """The csv written and its rows; for "oof" also the AUC (overall, per fold) and the gate's operating point."""

    path: Path
    preds: pd.DataFrame
    auc: float | None = None
    fold_auc: dict | None = None
    gate: dict | None = None


def predict(work: Work | str | os.PathLike, split: str, cfg: dict, tta: str | None = None,
            runs: Mapping[str, dict] | None = None, keep_runs: Sequence[str] = ()) -> ClassifierPredictions:
    """Score `split` ("oof" or "test") with the best.pt of every fold of every run and write
    ``work.classifier_preds(split)``.

    `cfg` is the ``classifier`` config section; `runs` maps each run to score to its own section
    (vinbig.runs.run_config; None: the run ``default`` with `cfg`); the rows of the runs `keep_runs` in the
    existing file are kept. Before any model runs, every checkpoint is read and the output checked to be
    writable; a damaged checkpoint or a failed write is an error naming the file and the fix.
    """
    work = Work.of(work)
    runs = dict(runs or {DEFAULT_RUN: cfg})
    if split not in SPLITS:
        raise ConfigError(f"split {split!r} is not one of {list(SPLITS)}")
    for c in runs.values():
        check_tta(tta or c["tta"])
    device = resolve_device(cfg["device"])
    # the test split needs only folds.csv and the checkpoints (a Kaggle weights dataset holds no train labels)
    table = abnormal_targets(work) if split == "oof" else read_folds(work)
    folds = fold_ids(table)
    paths = checkpoints(work, runs, folds)
    out, made_by = work.classifier_preds(split), predict_command(work, "classifier", split)
    check_output(out, made_by)  # before any model runs
    kept = _kept_rows(work, split, keep_runs)
    models = load_models(work, runs, folds, device=cfg["device"], tta=tta, paths=paths)

    frames = []
    with cudnn_benchmark(device):  # the input size is fixed; the detector may share the process
        for run, c in runs.items():
            if split == "test":
                rows = _score_test(work, models, run, c)
            else:
                ids = {k: table.loc[table["fold"] == k, "image_id"].tolist() for k in folds}
                rows = [score_fold(models, run, k, ids[k], png_paths(work.images("train"), ids[k]), c, "oof")
                        for k in folds]
            preds = pd.concat(rows, ignore_index=True)
            if split == "test":
                mean = preds.groupby("image_id", as_index=False)["p_abnormal"].mean().assign(fold=-1)
                preds = pd.concat([preds, mean], ignore_index=True)
            frames.append(preds.assign(run=run))
    preds = pd.concat([*frames, kept], ignore_index=True)
    order = {run: i for i, run in enumerate([*runs, *keep_runs])}
    preds = (preds.assign(_run=preds["run"].map(order)).sort_values(["_run", "fold", "image_id"], kind="stable")
             .drop(columns="_run").reset_index(drop=True).loc[:, list(CLASSIFIER_PRED_COLUMNS)])
    with writing(out, lambda e: f"the file was left as it was: {write_fix(e)}, then run '{made_by}' again"):
        path = write_csv(preds, out, CLASSIFIER_PRED_COLUMNS)
    logger.info("wrote %d rows to %s", len(preds), path)
    if split == "oof":
        scored = {}
        for run in runs:
            if len(runs) > 1:
                logger.info("run %s:", run)
            mine = preds[preds["run"] == run].merge(table[["image_id", "abnormal"]], on="image_id")
            scored[run] = report_oof(mine, runs[run]["gate_miss"])
        return ClassifierPredictions(path, preds, **scored[next(iter(runs))])
    return ClassifierPredictions(path, preds)


def _kept_rows(work: Work, split: str, keep_runs: Sequence[str]) -> pd.DataFrame:
    """The rows of the runs `keep_runs` in the existing predictions of `split` (none if it has none)."""
    path = work.classifier_preds(split)
    if not keep_runs or not path.is_file():
        return pd.DataFrame(columns=list(CLASSIFIER_PRED_COLUMNS))
    head = read_table(path, f"run '{predict_command(work, 'classifier', split)}' again", nrows=0).columns
    if "run" not in head:
        logger.warning("%s was written before named runs; the rows of runs %s are not kept: predict them again "
                       "(without --run)", path, ", ".join(keep_runs))
        return pd.DataFrame(columns=list(CLASSIFIER_PRED_COLUMNS))
    old = read_classifier_preds(work, split)
    return old[old["run"].isin(keep_runs)]


def score_fold(models: ClassifierModels, run: str, k: int, ids: Sequence[str], paths: Sequence[Path], cfg: dict,
               split: str = "test") -> pd.DataFrame:
    """``image_id, fold, p_abnormal`` of fold `k`'s model of `run` alone on the PNGs `paths` of `ids` (oof: its
    validation images), read in a pass of its own."""
    model, imgsz = models.models[run][k]
    idx, p = infer(model, _loader(paths, imgsz, cfg, models.device), Prepare(model, models.device), cfg["amp"],
                   models.tta[run], desc=f"{split} fold {k}")
    logger.info("fold %d: %d %s image(s) scored with %s (tta %s)", k, len(idx), split, models.paths[run, k],
                models.tta[run])
    return pd.DataFrame({"image_id": np.asarray(ids, dtype=object)[idx], "fold": k, "p_abnormal": p})


def _score_test(work: Work, models: ClassifierModels, run: str, cfg: dict) -> list[pd.DataFrame]:
    """One frame per fold, as :func:`score_fold` makes them, from one read of each test image."""
    fold_models = models.models[run]
    ids, paths = _test_images(work)
    sizes = tuple(sorted({imgsz for _, imgsz in fold_models.values()}))
    idx, p = infer_folds(fold_models, _loader(paths, sizes, cfg, models.device), models.device, cfg["amp"],
                         models.tta[run], desc=f"test folds {','.join(map(str, fold_models))}")
    rows = []
    for k in fold_models:
        logger.info("fold %d: %d test image(s) scored with %s (tta %s)", k, len(idx), models.paths[run, k],
                    models.tta[run])
        rows.append(pd.DataFrame({"image_id": np.asarray(ids, dtype=object)[idx], "fold": k, "p_abnormal": p[k]}))
    return rows


def _test_images(work: Work) -> tuple[list[str], list[Path]]:
    test_dir = work.images("test")
    ids = read_meta(test_dir)["image_id"].tolist()
    return ids, png_paths(test_dir, ids)


def report_oof(oof: pd.DataFrame, max_miss: float) -> dict:
    """Log the OOF AUC (overall and per fold) and the gate's operating point; return them."""
    overall = auc(oof["abnormal"], oof["p_abnormal"])
    per_fold = {int(k): auc(g["abnormal"], g["p_abnormal"]) for k, g in oof.groupby("fold")}
    logger.info("OOF AUC %.4f over %d images (per fold: %s)", overall, len(oof),
                ", ".join(f"{k}: {v:.4f}" for k, v in per_fold.items()))
    try:
        gate = gate_operating_point(oof["p_abnormal"], oof["abnormal"], max_miss)
    except ValueError as e:
        logger.warning("no gate operating point: %s", e)
        gate = None
    else:
        logger.info("gate: below p = %.4g lie %.1f %% of abnormal images (%d/%d, at most %.1f %% allowed) and "
                    "%.1f %% of normal images (%d/%d)", gate["threshold"], 100 * gate["miss_rate"],
                    gate["abnormal_missed"], gate["n_abnormal"], 100 * max_miss, 100 * gate["normal_share"],
                    gate["normal_caught"], gate["n_normal"])
    return {"auc": overall, "fold_auc": per_fold, "gate": gate}
