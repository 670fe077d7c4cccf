"""Scoring images with trained fold models, the out-of-fold AUC and the "No finding" gate's operating point.

``vinbig predict-classifier --split oof``: each fold's best.pt scores its own validation images;
``--split test``: every fold's best.pt scores every test image, and rows with fold -1 hold the mean. Each
classifier run (vinbig.runs) is scored in turn, at its own input size, with a ``run`` column. The test images are
read once per run: every fold model of the run scores a batch before the next one is read (the data loader's
workers read ahead).
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

from vinbig.artifacts import (CLASSIFIER_PRED_COLUMNS, DEFAULT_RUN, SPLITS, ArtifactError, Work, check_output,
                             fold_ids, predict_command, read_classifier_preds, read_folds, read_meta, train_command,
                             write_csv, write_fix, writing)
from vinbig.errors import ConfigError
from vinbig.log import progress

from classifier._data import PngDataset, abnormal_targets, png_paths, worker_init
from classifier._model import Prepare, cudnn_benchmark, has_weights, load_checkpoint, load_classifier, resolve_device

logger = logging.getLogger(__name__)

TTA = ("none", "hflip")


@torch.no_grad()
def infer(model: torch.nn.Module, loader: DataLoader, prepare: Prepare, amp: bool = False, tta: str = "none",
          desc: str = "predict") -> tuple[np.ndarray, np.ndarray]:
    """``(dataset indices, P(abnormal))`` over `loader`; with ``tta="hflip"`` the mean over both views."""
    model.eval()
    indices, probs = [], []
    for x, _, idx in progress(loader, desc=desc, leave=False):
        indices.append(idx.numpy())
        probs.append(_scores(model, prepare(x), amp, tta))
    if not indices:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    return np.concatenate(indices), np.concatenate(probs)


@torch.no_grad()
def infer_folds(models: Mapping[int, tuple[torch.nn.Module, int]], loader: DataLoader, device: torch.device,
                amp: bool = False, tta: str = "none", desc: str = "predict"
                ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """``(dataset indices, {fold: P(abnormal)})``: every fold's ``(model, imgsz)`` scores each batch `loader` reads,
    the same numbers as :func:`infer` over a loader per fold. The loader's images are ``{imgsz: tensor}`` (a
    PngDataset of every fold's size)."""
    prepares = {k: Prepare(model.eval(), device) for k, (model, _) in models.items()}
    indices, probs = [], {k: [] for k in models}
    for x, _, idx in progress(loader, desc=desc, leave=False):
        indices.append(idx.numpy())
        for k, (model, imgsz) in models.items():
            probs[k].append(_scores(model, prepares[k](x[imgsz]), amp, tta))
    if not indices:
        return np.zeros(0, dtype=np.int64), {k: np.zeros(0) for k in models}
    return np.concatenate(indices), {k: np.concatenate(p) for k, p in probs.items()}


def _scores(model: torch.nn.Module, x: torch.Tensor, amp: bool, tta: str) -> np.ndarray:
    """P(abnormal) of the prepared batch `x`; with ``tta="hflip"`` the mean over both views."""
    with torch.autocast(x.device.type, dtype=torch.float16, enabled=amp and x.device.type == "cuda"):
        p = torch.sigmoid(model(x).float().squeeze(1))
        if tta == "hflip":
            p = (p + torch.sigmoid(model(torch.flip(x, dims=[3])).float().squeeze(1))) / 2
    return p.double().cpu().numpy()


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


_SINGLE_READ = True  # test split: every fold model scores each batch read (False: a pass over the images per fold)


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
        if (tta or c["tta"]) not in TTA:
            raise ConfigError(f"classifier.tta {tta or c['tta']!r} is not one of {list(TTA)}")
    device = resolve_device(cfg["device"])
    # the test split needs only folds.csv and the checkpoints (a Kaggle weights dataset holds no train labels)
    table = abnormal_targets(work) if split == "oof" else read_folds(work)
    folds = fold_ids(table)
    ckpts = {(run, k): work.checkpoint("classifier", k, "best", run) for run in runs for k in folds}
    missing = [key for key, p in ckpts.items() if not has_weights(p)]  # best.pt, or an export's safetensors
    if missing:
        commands = "; ".join(f"'{train_command(work, 'classifier', k, run)}'" for run, k in missing)
        raise ArtifactError(f"no trained classifier for {len(missing)} fold(s): {ckpts[missing[0]]} not found; "
                            f"run {commands}{work.old_layout_hint('classifier')}")

    out, made_by = work.classifier_preds(split), predict_command(work, "classifier", split)
    check_output(out, made_by)  # before any model runs
    kept = _kept_rows(work, split, keep_runs)
    # every checkpoint read (and so readable) before the first one scores an image
    loaded = {key: load_checkpoint(path, train_command(work, "classifier", key[1], key[0]))
              for key, path in ckpts.items()}

    frames = []
    with cudnn_benchmark(device):  # the input size is fixed; the detector may share the process
        for run, c in runs.items():
            run_tta = tta or c["tta"]
            r_ckpts = {k: ckpts[run, k] for k in folds}
            r_loaded = {k: loaded[run, k] for k in folds}
            if split == "test" and _SINGLE_READ:
                rows = _score_test(work, folds, r_ckpts, r_loaded, c, device, run_tta, run)
            else:
                rows = [_score_fold(work, split, k, table, r_ckpts[k], r_loaded[k], c, device, run_tta, run)
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
    head = pd.read_csv(path, nrows=0).columns
    if "run" not in head:
        logger.warning("%s was written before named runs; the rows of runs %s are not kept: predict them again "
                       "(without --run)", path, ", ".join(keep_runs))
        return pd.DataFrame(columns=list(CLASSIFIER_PRED_COLUMNS))
    old = read_classifier_preds(work, split)
    return old[old["run"].isin(keep_runs)]


def _score_fold(work: Work, split: str, k: int, table: pd.DataFrame, ckpt: Path, loaded: dict, cfg: dict,
                device: torch.device, tta: str, run: str = DEFAULT_RUN) -> pd.DataFrame:
    """``image_id, fold, p_abnormal`` of fold `k`'s model on its validation images (oof) or the test images."""
    model, imgsz = load_classifier(ckpt, device, train_command(work, "classifier", k, run), loaded)
    if split == "oof":
        ids = table.loc[table["fold"] == k, "image_id"].tolist()
        paths = png_paths(work.images("train"), ids)
    else:
        ids, paths = _test_images(work)
    idx, p = infer(model, _loader(paths, imgsz, cfg, device), Prepare(model, device), cfg["amp"], tta,
                   desc=f"{split} fold {k}")
    logger.info("fold %d: %d %s image(s) scored with %s (tta %s)", k, len(idx), split, ckpt, tta)
    return pd.DataFrame({"image_id": np.asarray(ids, dtype=object)[idx], "fold": k, "p_abnormal": p})


def _score_test(work: Work, folds: Sequence[int], ckpts: Mapping[int, Path], loaded: Mapping[int, dict], cfg: dict,
                device: torch.device, tta: str, run: str = DEFAULT_RUN) -> list[pd.DataFrame]:
    """One frame per fold, as :func:`_score_fold` makes them, from one read of each test image."""
    models = {k: load_classifier(ckpts[k], device, train_command(work, "classifier", k, run), loaded[k])
              for k in folds}
    ids, paths = _test_images(work)
    sizes = tuple(sorted({imgsz for _, imgsz in models.values()}))
    idx, p = infer_folds(models, _loader(paths, sizes, cfg, device), device, cfg["amp"], tta,
                         desc=f"test folds {','.join(map(str, folds))}")
    rows = []
    for k in folds:
        logger.info("fold %d: %d test image(s) scored with %s (tta %s)", k, len(idx), ckpts[k], tta)
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
