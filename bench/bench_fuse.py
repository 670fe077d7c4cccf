"""Benchmark `vinbig fuse` against single-process ensemble-boxes, and time `vinbig tune`.

Input (generated, shaped like the real test set (docs/competition.md)): 3,000 test images of real sizes, 10 prediction sets
(one run, "default": 5 folds x 2 TTA) of 300 boxes each (about 20 objects per image; 60 % of the boxes near an
object, the rest scattered with low scores), written as WORK/preds/detector_test.parquet.

* baseline: ensemble-boxes' ``weighted_boxes_fusion``, one call per image in one process, on the
  first ``--base-n`` images, extrapolated linearly to all images (it takes about 0.2 to 0.5 s an image);
* vinbig: ``fusion.fuse`` of all images with the default engine and ``--workers`` processes, plus the
  parquet read (``load_inputs``); the fused boxes of the baseline's images are checked to be identical.

With ``--tune N`` it also builds an out-of-fold work folder of N images (5 folds, 2 TTA sets of 300
boxes, labels, classifier probabilities) and times ``vinbig tune``'s default grid on it.

    python bench/bench_fuse.py [--n 3000] [--sets 10] [--boxes 300] [--base-n 60] [--tune 3000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from vinbig.artifacts import CLASSIFIER_PRED_COLUMNS, DETECTOR_PRED_COLUMNS, META_COLUMNS, Work, write_csv


def write_meta(image_dir: Path, ids, rng) -> pd.DataFrame:
    n = len(ids)
    meta = pd.DataFrame({"image_id": ids, "width": rng.integers(1800, 3100, n), "height": rng.integers(2000, 3300, n)})
    meta["png_width"] = (meta.width * 1024 / meta[["width", "height"]].max(axis=1)).round().astype(int)
    meta["png_height"] = (meta.height * 1024 / meta[["width", "height"]].max(axis=1)).round().astype(int)
    for col in META_COLUMNS[5:]:
        meta[col] = "x"
    image_dir.mkdir(parents=True, exist_ok=True)
    write_csv(meta, image_dir / "meta.csv", META_COLUMNS)
    return meta


def objects(meta: pd.DataFrame, rng, per_image: int = 20):
    """Per image `per_image` objects: class, box in pixels."""
    n = len(meta)
    w, h = meta.width.to_numpy(float)[:, None], meta.height.to_numpy(float)[:, None]
    cls = rng.integers(0, 14, (n, per_image))
    cx, cy = rng.uniform(0.15, 0.85, (n, per_image)) * w, rng.uniform(0.15, 0.85, (n, per_image)) * h
    bw, bh = rng.uniform(0.04, 0.3, (n, per_image)) * w, rng.uniform(0.04, 0.3, (n, per_image)) * h
    return cls, np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=-1)


def detector_rows(meta: pd.DataFrame, sets: list[tuple[int, str]], image_sets, boxes: int, rng, obj) -> pd.DataFrame:
    """`boxes` per image and set; image_sets[i] lists the indices into `sets` that predicted image i."""
    cls, obox = obj
    img = np.concatenate([np.full(len(s) * boxes, i) for i, s in enumerate(image_sets)])
    set_idx = np.concatenate([np.repeat(s, boxes) for s in image_sets])
    m = len(img)
    w, h = meta.width.to_numpy(float)[img], meta.height.to_numpy(float)[img]
    k = rng.integers(0, cls.shape[1], m)
    near = rng.random(m) < 0.6
    size = np.stack([w, h, w, h], axis=1)
    jitter = obox[img, k] + rng.normal(0, 0.02, (m, 4)) * size
    c = rng.uniform(0, 0.9, (m, 2)) * size[:, :2]
    scatter = np.concatenate([c, c + rng.uniform(0.02, 0.2, (m, 2)) * size[:, :2]], axis=1)
    box = np.where(near[:, None], jitter, scatter)
    box = np.clip(np.sort(box.reshape(m, 2, 2), axis=1).reshape(m, 4), 0, size)
    label = np.where(near & (rng.random(m) < 0.9), cls[img, k], rng.integers(0, 14, m))
    score = np.where(near, rng.beta(2, 3, m), rng.uniform(0.001, 0.1, m))
    folds = np.array([f for f, _ in sets])[set_idx]
    ttas = np.array([t for _, t in sets])[set_idx]
    df = pd.DataFrame({"image_id": meta.image_id.to_numpy()[img], "run": "default", "fold": folds, "tta": ttas,
                       "class_id": label, "score": score, "x_min": box[:, 0], "y_min": box[:, 1], "x_max": box[:, 2],
                       "y_max": box[:, 3]})
    return df[(df.x_max > df.x_min) & (df.y_max > df.y_min)].loc[:, list(DETECTOR_PRED_COLUMNS)]


def make_test_work(root: Path, n: int, n_sets: int, boxes: int, seed: int = 0) -> Work:
    rng = np.random.default_rng(seed)
    work = Work(root)
    meta = write_meta(work.images("test"), np.array([f"{i:032x}" for i in range(n)]), rng)
    sets = [(f, t) for f in range(max(1, n_sets // 2)) for t in ("none", "hflip")][:n_sets]
    df = detector_rows(meta, sets, [list(range(len(sets)))] * n, boxes, rng, objects(meta, rng))
    work.preds.mkdir(parents=True, exist_ok=True)
    df.to_parquet(work.detector_preds("test"), index=False)
    return work


def make_oof_work(root: Path, n: int, boxes: int, n_folds: int = 5, seed: int = 1) -> Work:
    """Out-of-fold predictions (2 TTA sets per image), labels.csv, folds.csv and classifier probabilities."""
    rng = np.random.default_rng(seed)
    work = Work(root)
    ids = np.array([f"{i:032x}" for i in range(n)])
    meta = write_meta(work.images("train"), ids, rng)
    fold = rng.integers(0, n_folds, n)
    write_csv(pd.DataFrame({"image_id": ids, "fold": fold}), work.folds, ["image_id", "fold"])
    cls, obox = objects(meta, rng, per_image=4)
    abnormal = rng.random(n) < 0.3
    n_true = rng.integers(1, 5, n)
    rows = []
    for i in range(n):
        if abnormal[i]:
            rows += [(ids[i], cls[i, j], *obox[i, j], 1.0, 3) for j in range(n_true[i])]
        else:
            rows.append((ids[i], 14, np.nan, np.nan, np.nan, np.nan, 1.0, 3))
    labels = pd.DataFrame(rows, columns=["image_id", "class_id", "x_min", "y_min", "x_max", "y_max", "score",
                                         "n_readers"])
    write_csv(labels, work.labels, labels.columns)
    sets = [(f, t) for f in range(n_folds) for t in ("none", "hflip")]
    image_sets = [[2 * f, 2 * f + 1] for f in fold]
    df = detector_rows(meta, sets, image_sets, boxes, rng, (cls, obox))
    work.preds.mkdir(parents=True, exist_ok=True)
    df.to_parquet(work.detector_preds("oof"), index=False)
    p = np.clip(np.where(abnormal, rng.beta(5, 2, n), rng.beta(2, 5, n)), 0, 1)
    write_csv(pd.DataFrame({"image_id": ids, "run": "default", "fold": fold, "p_abnormal": p}),
              work.classifier_preds("oof"), CLASSIFIER_PRED_COLUMNS)
    return work


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000, help="test images")
    ap.add_argument("--sets", type=int, default=10, help="prediction sets (folds x TTA)")
    ap.add_argument("--boxes", type=int, default=300, help="boxes per image and set")
    ap.add_argument("--base-n", type=int, default=60, help="images fused by the ensemble-boxes baseline")
    ap.add_argument("--workers", type=int, default=0, help="vinbig processes, 0 = one per core")
    ap.add_argument("--tune", type=int, default=0, metavar="N", help="also time vinbig tune on N OOF images")
    args = ap.parse_args()

    from fusion import fuse, library_wbf, load_inputs, wbf
    from vinbig.config import load_config

    wbf(np.array([[0, 0, 0.5, 0.5]]), [0.5], [1], [0], [1.0])  # compile (or load numba's cache) outside the timings
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        work = make_test_work(Path(tmp) / "work", args.n, args.sets, args.boxes)
        print(f"generated {args.n} images x {args.sets} sets x {args.boxes} boxes in {time.perf_counter() - t:.0f} s")
        t = time.perf_counter()
        inp = load_inputs(work, "test")
        t_load = time.perf_counter() - t
        print(f"{inp.n_boxes} boxes; load_inputs (parquet read, sort, normalize) {t_load:.1f} s")

        base = inp.image_ids[:args.base_n]
        t = time.perf_counter()
        ref = []
        for i in range(len(base)):
            a, b = inp.offsets[i], inp.offsets[i + 1]
            ref.append(library_wbf(inp.boxes[a:b], inp.scores[a:b], inp.labels[a:b], inp.model[a:b],
                                    inp.group_weights[0], 0.4, 0.0, "avg"))
        per_image = (time.perf_counter() - t) / len(base)
        t_base = per_image * args.n

        results = {}
        for label, workers, per_process in (("default (in-process below 5 M boxes per process)", args.workers, None),
                                            ("forced onto one process per core", 0, 1)):
            t = time.perf_counter()
            out = fuse(inp, iou_thr=0.4, skip_box_thr=0.0, conf_type="avg", workers=workers,
                       **({} if per_process is None else {"boxes_per_process": per_process}))
            results[label] = (time.perf_counter() - t, out)
        out = next(iter(results.values()))[1]
        same = True
        for image_id, (bx, sc, lab) in zip(base, ref):
            mine = out[out.image_id == image_id]
            wh = inp.size[list(inp.image_ids).index(image_id)]
            lib = np.clip(bx * np.concatenate([wh, wh]), 0, np.concatenate([wh, wh]))
            same &= (len(mine) == len(sc) and np.array_equal(mine.score.to_numpy(), sc)
                     and np.array_equal(mine.class_id.to_numpy(), lab)
                     and np.array_equal(mine[["x_min", "y_min", "x_max", "y_max"]].to_numpy(), lib))
        print(f"fused boxes of the {len(base)} baseline images identical to ensemble-boxes: {same}")
        print("| path | seconds for all images | ratio |\n|---|---|---|")
        print(f"| ensemble-boxes, 1 process ({per_image:.3f} s/image x {args.n}, measured on {len(base)}) "
              f"| {t_base:.0f} | 1.00x |")
        for label, (sec, _) in results.items():
            print(f"| vinbig `fuse`, numba engine, {label} | {sec:.1f} | **{t_base / sec:.0f}x** |")
        first = next(iter(results.values()))[0]
        print(f"| vinbig `load_inputs` + `fuse` (default) | {t_load + first:.1f} | {t_base / (t_load + first):.0f}x |")

    if args.tune:
        from fusion import tune

        with tempfile.TemporaryDirectory() as tmp:
            work = make_oof_work(Path(tmp) / "work", args.tune, args.boxes)
            f = load_config()["fusion"]
            f["workers"] = args.workers
            t = time.perf_counter()
            best = tune(work, f)
            table = best.table
            sec = time.perf_counter() - t
            per_setting = table.groupby(["iou_thr", "skip_box_thr", "conf_type"])[["fuse_s", "score_s"]].first()
            print(f"vinbig tune on {args.tune} OOF images x 2 sets x {args.boxes} boxes: {sec:.0f} s for "
                  f"{len(per_setting)} WBF settings x {len(table) // len(per_setting)} gate pairs (per setting: fusing "
                  f"{per_setting.fuse_s.mean():.1f} s, gate grid {per_setting.score_s.mean():.1f} s); linear estimate "
                  f"for 15,000 images: {sec * 15000 / args.tune / 60:.1f} min")
            print(f"best {best.values} mAP {best.map:.4f}")


if __name__ == "__main__":
    main()
