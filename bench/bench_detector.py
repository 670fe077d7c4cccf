"""Learning check of the detector stage on the CPU: does a short YOLOv8 training find the synthetic lesions?

Generates a synthetic dataset, trains fold 0's detector (folds 1-4 train it, fold 0 is held out),
predicts the held-out images and scores them with the competition metric over the 14 finding
classes. A change that breaks learning (labels, box mapping, augmentation, the trainer) shows up as
a mAP near zero; the model after one epoch is scored too, as the floor.

    python bench/bench_detector.py                     # about 10 minutes on 2 cores
    python bench/bench_detector.py --epochs 5 --n-train 60   # a quick look
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=150, help="synthetic train images (5 folds)")
    ap.add_argument("--size", type=int, default=512, help="synthetic DICOM height in px")
    ap.add_argument("--imgsz", type=int, default=320, help="PNG long side and training size")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--model", default="yolov8n.yaml")
    ap.add_argument("--out", type=Path, default=None, help="keep the data and work folders here")
    args = ap.parse_args()

    from vinbig import log
    from vinbig.app.cli import main as vinbig

    log.setup(-1)
    root = args.out or Path(tempfile.mkdtemp(prefix="bench_detector_"))
    data, work = root / "data", root / "work"
    t0 = time.perf_counter()
    if not (data / "train.csv").is_file():
        assert vinbig(["synth", "--out", str(data), "--n-train", str(args.n_train), "--n-test", "1",
                       "--size", str(args.size), "-q", "--set", "synth.abnormal_fraction=0.7"]) == 0
    for split in ("train", "test"):
        assert vinbig(["images", "--src", str(data / split), "--out", str(work / "images" / split),
                       "--size", str(args.imgsz), "-q"]) == 0
    assert vinbig(["folds", "--train-csv", str(data / "train.csv"), "--out", str(work), "-q"]) == 0
    t_data = time.perf_counter() - t0

    from detector import predict, train_fold
    from vinbig.artifacts import NO_FINDING, Work, read_folds, read_labels
    from vinbig.config import load_config
    from vinbig.metric import evaluate

    w = Work(work)
    cfg = load_config(overrides=[f"detector.model={args.model}", f"detector.epochs={args.epochs}",
                                 f"detector.imgsz={args.imgsz}", "detector.batch=16", "detector.device=cpu",
                                 "detector.workers=2", "detector.plots=false", "detector.close_mosaic=5",
                                 "detector.patience=100"])["detector"]
    held_out = set(read_folds(w).query("fold == 0").image_id)
    labels = read_labels(w)
    truth = labels[labels.image_id.isin(held_out) & (labels.class_id != NO_FINDING)]
    # every held-out image, so that the truth of images the model leaves empty still counts
    truth = pd.concat([truth, pd.DataFrame({"image_id": sorted(held_out - set(truth.image_id)), "class_id": NO_FINDING})])

    def score(tag: str) -> tuple[float, pd.DataFrame]:
        preds = pd.read_parquet(w.detector_preds("oof"))
        result = evaluate(truth, preds[["image_id", "class_id", "score", "x_min", "y_min", "x_max", "y_max"]])
        table = result.table()
        findings = table[table.present & (table.class_id != NO_FINDING)]
        print(f"\n{tag}: mAP@0.4 over {len(findings)} finding classes present = {findings.ap.mean():.4f} "
              f"({len(preds)} boxes on {preds.image_id.nunique()} of {len(held_out)} held-out images)")
        return float(findings.ap.mean()), findings

    t1 = time.perf_counter()
    train_fold(w, 0, {**cfg, "epochs": 1}, overwrite=True)
    predict(w, "oof", cfg, folds=[0], weights="last")
    floor, _ = score("after 1 epoch")
    train_fold(w, 0, cfg, overwrite=True)
    t_train = time.perf_counter() - t1
    predict(w, "oof", cfg, folds=[0], weights="best")
    trained, table = score(f"after {args.epochs} epochs")
    print(table[["class_id", "class_name", "ap", "n_truth", "n_pred"]].to_string(index=False))
    n_train = len(read_folds(w).query("fold != 0"))
    print(f"\nlearning check: {args.model} at {args.imgsz} px, {args.epochs} epochs on {n_train} synthetic images, "
          f"{len(held_out)} held out: mAP@0.4 {trained:.4f} (1 epoch: {floor:.4f}); data {t_data:.0f} s, "
          f"training {t_train:.0f} s, in {root}")
    return 0 if trained > floor else 1


if __name__ == "__main__":
    sys.exit(main())
