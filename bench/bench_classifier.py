"""Benchmark that the classifier learns: held-out AUC of a short CPU training on synthetic images.

Generates a synthetic dataset (``vinbig synth``, half of the images abnormal), converts it to small
PNGs (``vinbig images``), splits 5 folds (``vinbig folds``), trains fold 0 with ``vinbig
train-classifier`` (timm's tiny ``test_efficientnet``, 0.1 M parameters, from scratch, horizontal flips
only: the affine and brightness/contrast augmentation of the default config slow such a small model on
so few images too much for a couple of minutes) and reports the AUC on fold 0, which training never sees.
The baseline, measured on the same split, is a logistic regression on the raw pixels at 32 px: a
classifier that does not clearly beat it has stopped learning what a lesion is.

    python bench/bench_classifier.py [--n-train 1200] [--epochs 10] [--backbone test_efficientnet] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from vinbig.artifacts import Work
from vinbig.app.cli import main as vinbig

NO_AUGMENTATION = [arg for key in ("degrees", "translate", "scale", "brightness", "contrast")
                   for arg in ("--set", f"classifier.{key}=0")]


def make_work(root: Path, n_train: int) -> Work:
    """Synthetic DICOMs at about 256 px, PNGs of 128 px, 5 folds (skipped when `root` already has them)."""
    data, work = root / "data", Work(root / "work")
    if not work.folds.is_file():
        steps = [["synth", "--out", str(data), "--n-train", str(n_train), "--n-test", "2", "--size", "256",
                  "--set", "synth.abnormal_fraction=0.5"],
                 ["images", "--src", str(data / "train"), "--out", str(work.images("train")), "--size", "128"],
                 ["folds", "--train-csv", str(data / "train.csv"), "--out", str(work.root), "--n-folds", "5"]]
        for args in steps:
            assert vinbig([*args, "-q"]) == 0, args
    return work


def pixel_baseline(work: Work, fold: int = 0, size: int = 32) -> float:
    """AUC on `fold` of a logistic regression on the raw pixels at `size` px, trained on the other folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from classifier import abnormal_targets

    table = abnormal_targets(work)
    x = np.stack([cv2.resize(cv2.imread(str(work.images("train") / f"{i}.png"), cv2.IMREAD_GRAYSCALE), (size, size),
                             interpolation=cv2.INTER_AREA).ravel() / 255.0 for i in table["image_id"]])
    train, val = (table["fold"] != fold).to_numpy(), (table["fold"] == fold).to_numpy()
    model = LogisticRegression(C=0.1, max_iter=3000).fit(x[train], table["abnormal"][train])
    return float(roc_auc_score(table["abnormal"][val], model.predict_proba(x[val])[:, 1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=1200, help="synthetic train images (a fifth are held out)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--backbone", default="test_efficientnet", help="timm model, trained from scratch")
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--keep", type=Path, help="folder to keep the generated data in (default: a temp folder)")
    args = ap.parse_args()

    root = Path(args.keep or tempfile.mkdtemp(prefix="bench_classifier_"))
    start = time.perf_counter()
    work = make_work(root, args.n_train)
    made = time.perf_counter() - start
    start = time.perf_counter()
    assert vinbig(["train-classifier", "--work", str(work.root), "--fold", "0", "--backbone", args.backbone,
                   "--imgsz", str(args.imgsz), "--epochs", str(args.epochs), "--batch", "32", "--device", "cpu",
                   "--set", "classifier.lr=0.003", "--set", "classifier.drop_path_rate=0",
                   "--set", "classifier.workers=0", *NO_AUGMENTATION, "-q"]) == 0
    trained = time.perf_counter() - start
    summary = pd.read_csv(work.classifier_summary(0))
    baseline = pixel_baseline(work)

    n_val = int((pd.read_csv(work.folds)["fold"] == 0).sum())
    print(f"{args.n_train} synthetic images (half abnormal), PNG 128 px, 5 folds; fold 0 held out ({n_val} images); "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"data made in {made:.0f} s; {args.backbone} at {args.imgsz} px, {args.epochs} epochs from scratch "
          f"in {trained:.0f} s ({summary['seconds'].median():.1f} s per epoch, median)")
    shown = summary.assign(epoch=summary["epoch"] + 1)  # 1-based, as the training log counts
    print(shown[["epoch", "train_loss", "val_loss", "val_auc"]].round(4).to_string(index=False))
    last = float(summary["val_auc"].iloc[-1])
    best = int(shown.loc[summary["val_auc"].idxmax(), "epoch"])
    print(f"held-out AUC, last epoch   {last:.4f}")
    print(f"held-out AUC, best epoch   {summary['val_auc'].max():.4f} (epoch {best})")
    print(f"pixel logistic regression  {baseline:.4f} (baseline)")
    return 0 if last > baseline else 1  # a classifier that does not beat the pixels has stopped learning


if __name__ == "__main__":
    sys.exit(main())
