"""Benchmark `vinbig.metric` against the `map-boxes` package on the same 15,000-image input.

The input is generated: 15,000 images (30 % abnormal with 1 to 6 truth boxes, the rest "No
finding"), 50 predicted boxes per image (jittered truth boxes and random ones, integer
coordinates, distinct float32 confidences, each image's boxes in descending confidence), so that
map-boxes (IoU >= 0.4, float32, input-order matching) computes the same numbers; the script
checks that they agree. Times are for the scoring call on in-memory tables, best of `--repeats`;
vinbig is also timed from the submission file (CSV parse included).

    python bench/bench_metric.py [--n 15000] [--boxes 50] [--repeats 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from vinbig.metric import evaluate
from vinbig.submission import score_files


def make_case(n: int, k: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    ids = np.array([f"{i:032x}" for i in range(n)])
    abnormal = rng.random(n) < 0.3
    nt = np.where(abnormal, rng.integers(1, 7, n), 1)
    t_img = np.repeat(np.arange(n), nt)
    t_cls = np.where(abnormal[t_img], rng.integers(0, 14, len(t_img)), 14)
    xy = rng.integers(0, 2000, (len(t_img), 2))
    wh = rng.integers(30, 600, (len(t_img), 2))
    t_box = np.where((t_cls == 14)[:, None], [0, 0, 1, 1], np.concatenate([xy, xy + wh], axis=1))
    truth = pd.DataFrame({"image_id": ids[t_img], "class_id": t_cls, "x_min": t_box[:, 0], "y_min": t_box[:, 1],
                          "x_max": t_box[:, 2], "y_max": t_box[:, 3]})
    # predictions: per image k boxes, 40 % near one of its truth boxes
    p_img = np.repeat(np.arange(n), k)
    first = np.concatenate([[0], np.cumsum(nt)[:-1]])
    pick = first[p_img] + (rng.random(len(p_img)) * nt[p_img]).astype(int)
    near = rng.random(len(p_img)) < 0.4
    p_cls = np.where(near & (rng.random(len(p_img)) < 0.85), t_cls[pick], rng.integers(0, 15, len(p_img)))
    jitter = t_box[pick] + rng.integers(-40, 41, (len(p_img), 4))
    xy = rng.integers(0, 2000, (len(p_img), 2))
    rand = np.concatenate([xy, xy + rng.integers(30, 600, (len(p_img), 2))], axis=1)
    p_box = np.where(near[:, None], jitter, rand)
    p_box[:, 2:] = np.maximum(p_box[:, 2:], p_box[:, :2] + 1)
    p_box[p_cls == 14] = [0, 0, 1, 1]
    score = rng.permutation(len(p_img)).astype(np.float32) / np.float32(len(p_img))  # distinct in float32
    preds = pd.DataFrame({"image_id": ids[p_img], "class_id": p_cls, "score": score.astype(np.float64),
                          "x_min": p_box[:, 0], "y_min": p_box[:, 1], "x_max": p_box[:, 2], "y_max": p_box[:, 3]})
    preds = preds.sort_values(["image_id", "score"], ascending=[True, False], kind="stable").reset_index(drop=True)
    return truth, preds


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=15000, help="images")
    ap.add_argument("--boxes", type=int, default=50, help="predicted boxes per image")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    with contextlib.redirect_stdout(io.StringIO()):
        from map_boxes import mean_average_precision_for_boxes  # prints a note about its Cython part

    truth, preds = make_case(args.n, args.boxes)
    print(f"{args.n} images, {len(truth)} truth boxes, {len(preds)} predicted boxes")
    t_vin, result = best_of(lambda: evaluate(truth, preds), args.repeats)

    with tempfile.TemporaryDirectory() as tmp:
        truth.to_csv(Path(tmp) / "truth.csv", index=False)
        groups = preds.class_id.astype(str) + " " + preds.score.map(repr)
        for col in ("x_min", "y_min", "x_max", "y_max"):
            groups = groups + " " + preds[col].astype(str)
        sub = groups.groupby(preds.image_id, sort=False).agg(" ".join).rename("PredictionString").reset_index()
        sub.to_csv(Path(tmp) / "sub.csv", index=False)
        t_file, from_file = best_of(lambda: score_files(Path(tmp) / "truth.csv", Path(tmp) / "sub.csv"), args.repeats)

    ann = truth[["image_id", "class_id", "x_min", "x_max", "y_min", "y_max"]].astype({"class_id": str}).to_numpy()
    det = preds[["image_id", "class_id", "score", "x_min", "x_max", "y_min", "y_max"]].astype(
        {"class_id": str}).to_numpy()
    t_mb, (theirs, _) = best_of(lambda: mean_average_precision_for_boxes(ann, det, iou_threshold=0.4, verbose=False),
                                1)
    print(f"mAP vinbig {result.mean_ap:.12f}, from the CSV files {from_file.mean_ap:.12f}, map-boxes {theirs:.12f}, "
          f"|difference| {abs(result.mean_ap - theirs):.2e}")
    print("| scorer | seconds | ratio |\n|---|---|---|")
    print(f"| map-boxes 1.0.6 `mean_average_precision_for_boxes` (pure-Python overlap) | {t_mb:.2f} | 1.00x |")
    print(f"| vinbig `metric.evaluate` (tables in memory) | {t_vin:.2f} | **{t_mb / t_vin:.0f}x** |")
    print(f"| vinbig `submission.score_files` (reads and parses both CSV files) | {t_file:.2f} | {t_mb / t_file:.0f}x |")


if __name__ == "__main__":
    main()
