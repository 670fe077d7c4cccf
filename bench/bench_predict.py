"""Test prediction with one read per image against the loop it replaced (a pass over the images per fold).

The demo's setting: five folds of every run of configs/demo.yaml (runs.detector: two YOLOv8n runs predicting
at 160 px with hflip TTA; runs.classifier: one test_efficientnet run at 128 px), 256 px PNGs, on the CPU. The
fold models are saved by hand (untrained, with random weights and head biases so that the detector finds
boxes): prediction costs the same whatever the weights. For the detector and the classifier, each way is timed

- in-process: ``detector.predict(...)`` / ``classifier.predict(...)`` (single read) against the loop of before,
  written here over the stages' faces (``detector.load_models(...).predict_each`` one model at a time,
  ``classifier.score_fold`` one fold at a time: a pass over the images per fold model of each run, each image
  read in the main thread when its batch is needed), `--repeats` times each, alternating, median; both must give
  the same rows exactly; the script stops if they do not; and
- as a whole command: ``vinbig predict-detector`` / ``vinbig predict-classifier`` in a fresh interpreter
  (process start, imports, checkpoint loading included), `--repeats` times, median (single read only: the loop
  of before is no command any more),

with the number of PNG decodes (``cv2.imread`` calls) of each.

    python bench/bench_predict.py                      # 64 test images, a few minutes on 2 cores
    python bench/bench_predict.py --n-test 100 --repeats 5 --json bench_predict.json
    python bench/bench_predict.py --png-size 1024        # the real PNG size, where decoding costs more
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

from _common import DEMO, FOLDS, ROOT, classifier_checkpoint, detector_checkpoint, vinbig

# a whole command in a fresh interpreter: counts the PNG decodes
COMMAND = '''
import json, sys
import cv2
reads, imread = [0], cv2.imread
def counted(*args, **kwargs):
    reads[0] += 1
    return imread(*args, **kwargs)
cv2.imread = counted
from vinbig.app.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "reads": reads[0]}), file=sys.stderr)
sys.exit(rc)
'''


def make_work(root: Path, n_test: int, size: int) -> Path:
    """DICOMs and PNGs of `size` px, `n_test` test images, five folds; kept when `root` has them."""
    data, work = root / "data", root / "work"
    if not (work / "folds.csv").is_file():
        vinbig("synth", "--out", str(data), "--n-train", "30", "--n-test", str(n_test), "--size", str(size))
        for split in ("train", "test"):
            vinbig("images", "--src", str(data / split), "--out", str(work / "images" / split), "--size", str(size))
        vinbig("folds", "--train-csv", str(data / "train.csv"), "--out", str(work), "--n-folds", str(FOLDS))
    return work


def demo_runs(stage: str) -> dict:
    """The runs of `stage` in configs/demo.yaml, each with its own section, on the CPU."""
    from vinbig.config import load_config
    from vinbig.runs import run_config, run_names

    cfg = load_config(DEMO, [f"{stage}.device=cpu"])
    return {name: run_config(cfg, stage, name) for name in run_names(cfg, stage)}


def save_models(work: Path) -> None:
    """Every fold's best.pt of every run of both stages, as training writes them, from random weights."""
    from detector import follow_log_level  # first: ultralytics offline
    from vinbig.artifacts import Work

    follow_log_level()
    w = Work(work)
    for r, run in enumerate(demo_runs("detector")):
        for k in range(FOLDS):
            detector_checkpoint(w.checkpoint("detector", k, run=run), seed=100 * r + k, biases=True)
    for r, run in enumerate(demo_runs("classifier")):
        for k in range(FOLDS):
            classifier_checkpoint(w.checkpoint("classifier", k, run=run), seed=100 * r + k, std=0.5, imgsz=128)


def per_fold(stage: str, work: Path, cfg: dict, runs: dict):
    """The rows of the loop of before: a pass over the test images per fold model of each run."""
    import pandas as pd

    from vinbig.artifacts import Work, fold_ids, png_path, read_folds, read_meta

    w = Work(work)
    folds = fold_ids(read_folds(w))
    meta = read_meta(w.images("test")).set_index("image_id")
    ids = list(meta.index)
    if stage == "detector":
        import detector

        models = detector.load_models(w, runs, folds, tta=["hflip"], device=cfg["device"])
        frames = []
        for key in models.keys:
            for start in range(0, len(ids), models.batch):
                chunk = ids[start:start + models.batch]
                images = [detector.read_png(w.images("test"), i) for i in chunk]
                frames += [rows for _, rows in models.predict_each(images, meta.loc[chunk], [key]) if len(rows)]
        return pd.concat(frames, ignore_index=True)
    import classifier

    models = classifier.load_models(w, runs, folds, device=cfg["device"])
    paths = [png_path(w.images("test"), i) for i in ids]
    return pd.concat([classifier.score_fold(models, run, k, ids, paths, runs[run]).assign(run=run)
                      for run in runs for k in folds], ignore_index=True)


def in_process(stage: str, work: Path, repeats: int) -> dict:
    """Median seconds and PNG reads of each way, and whether both gave the same rows."""
    import pandas as pd

    from vinbig import log
    from vinbig.config import load_config

    log.setup(-1)
    cfg = load_config(DEMO, [f"{stage}.device=cpu"])[stage]
    runs = demo_runs(stage)  # every run, as the command predicts them
    if stage == "detector":
        from detector import predict

        def single():
            return pd.read_parquet(predict(work, "test", cfg, tta=["hflip"], runs=runs).path)
    else:
        from classifier import predict

        def single():
            preds = predict(work, "test", cfg, runs=runs).preds
            return preds[preds["fold"] != -1]

    reads, imread = [0], cv2.imread

    def counted(*args, **kwargs):
        reads[0] += 1
        return imread(*args, **kwargs)

    ways = {"per_fold": lambda: per_fold(stage, work, cfg, runs), "single": single}
    cv2.imread = counted
    times, counts, outputs = {"per_fold": [], "single": []}, {}, {}
    try:
        single()  # warm-up: first model calls, file caches
        for _ in range(repeats):
            for way in times:
                reads[0] = 0
                t = time.perf_counter()
                outputs[way] = ways[way]()
                times[way].append(time.perf_counter() - t)
                counts[way] = reads[0]
    finally:
        cv2.imread = imread
    key = [c for c in outputs["single"].columns]
    a, b = (outputs[w].loc[:, key].sort_values(key, ignore_index=True) for w in ("per_fold", "single"))
    return {way: {"seconds": statistics.median(t), "reads": counts[way]} for way, t in times.items()} | {
        "same_output": a.astype(b.dtypes.to_dict()).equals(b)}


def whole_command(stage: str, work: Path, repeats: int) -> dict:
    """Median wall seconds and reads of ``vinbig predict-STAGE --split test`` in a fresh interpreter."""
    args = ["predict-" + stage, "--work", str(work), "--split", "test", "--config", str(DEMO), "--device", "cpu",
            "-q", *(["--tta", "hflip"] if stage == "detector" else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    times, reads = [], 0
    for _ in range(repeats):
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", COMMAND, *args], capture_output=True, text=True, env=env,
                              cwd=ROOT)
        times.append(time.perf_counter() - t)
        if done.returncode != 0:
            raise SystemExit(f"vinbig {' '.join(args)} failed:\n{done.stderr}")
        reads = json.loads(done.stderr.strip().splitlines()[-1])["reads"]
    return {"single": {"seconds": statistics.median(times), "reads": reads}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-test", type=int, default=64, help="test images")
    ap.add_argument("--png-size", type=int, default=256, help="long side of the PNGs (the demo's: 256; real: 1024)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each way (median)")
    ap.add_argument("--keep", type=Path, help="make (or reuse) the data and work folders here")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    from vinbig import log

    log.setup(-1)
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_predict_"))
    work = make_work(root, args.n_test, args.png_size)
    save_models(work)
    n = len((work / "images" / "test" / "meta.csv").read_text().splitlines()) - 1
    runs = {stage: list(demo_runs(stage)) for stage in ("detector", "classifier")}
    results = {"test_images": n, "png_size": args.png_size, "folds": FOLDS, "runs": runs, "cpus": os.cpu_count()}
    for stage in ("detector", "classifier"):
        results[stage] = {"in_process": in_process(stage, work, args.repeats),
                          "command": whole_command(stage, work, args.repeats)}

    print(f"{n} test PNGs of {args.png_size} px, {FOLDS} folds, CPU ({os.cpu_count()} cores), median of "
          f"{args.repeats}; detector runs {', '.join(runs['detector'])} (yolov8n at 160 px with hflip), classifier "
          f"run{'s' * (len(runs['classifier']) > 1)} {', '.join(runs['classifier'])} (test_efficientnet at 128 px)")
    print(f"{'':38s} {'per fold':>10s} {'single read':>12s} {'ratio':>7s} {'reads':>13s}  same rows")
    for stage in ("detector", "classifier"):
        r = results[stage]["in_process"]
        a, b = r["per_fold"], r["single"]
        r["ratio"] = a["seconds"] / b["seconds"]
        print(f"{stage + ', in-process':38s} {a['seconds']:9.2f}s {b['seconds']:11.2f}s {r['ratio']:6.2f}x "
              f"{a['reads']:6d} -> {b['reads']:4d}  {'yes' if r['same_output'] else 'NO'}")
        c = results[stage]["command"]["single"]
        print(f"{stage + f', vinbig predict-{stage}':38s} {'-':>10s} {c['seconds']:11.2f}s {'':>7s} "
              f"{'':>6s}    {c['reads']:4d}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    same = all(results[s]["in_process"]["same_output"] for s in ("detector", "classifier"))
    if not same:
        print("the two ways gave different rows: a bug in the single read", file=sys.stderr)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
