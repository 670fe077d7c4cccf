"""Test prediction with one read per image against the loop it replaced (a pass over the images per fold).

The demo's setting: five folds of every run of configs/demo.yaml (runs.detector: two YOLOv8n runs predicting
at 160 px with hflip TTA; runs.classifier: one test_efficientnet run at 128 px), 256 px PNGs, on the CPU. The
fold models are saved by hand (untrained, with random weights and head biases so that the detector finds
boxes): prediction costs the same whatever the weights. For the detector and the classifier, each way is timed

- in-process: ``predict(...)`` of ``detector._predict`` / ``classifier._predict``, `--repeats` times each,
  alternating, median; and
- as a whole command: ``vinbig predict-detector`` / ``vinbig predict-classifier`` in a fresh interpreter
  (process start, imports, checkpoint loading included), `--repeats` times each, median,

with the number of PNG decodes (``cv2.imread`` calls) of each. "per fold" is the loop of before: a pass over
the images per fold model (of each run), each image read in the main thread when its batch is needed (``_SINGLE_READ =
False``, ``_PREFETCH = 0``); "single read" is what the commands do now. Both ways must write the same file,
byte for byte; the script stops if they do not.

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

# a whole command in a fresh interpreter: counts the PNG decodes; "per_fold" restores the loop of before
COMMAND = '''
import json, sys
import cv2
reads, imread = [0], cv2.imread
def counted(*args, **kwargs):
    reads[0] += 1
    return imread(*args, **kwargs)
cv2.imread = counted
if sys.argv[1] == "per_fold":
    import classifier._predict, detector._predict
    detector._predict._SINGLE_READ = classifier._predict._SINGLE_READ = False
    detector._predict._PREFETCH = 0
from vinbig.app.cli import main
rc = main(sys.argv[2:])
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
    from detector._offline import follow_log_level  # first: ultralytics offline
    from vinbig.artifacts import Work

    follow_log_level()
    w = Work(work)
    for r, run in enumerate(demo_runs("detector")):
        for k in range(FOLDS):
            detector_checkpoint(w.checkpoint("detector", k, run=run), seed=100 * r + k, biases=True)
    for r, run in enumerate(demo_runs("classifier")):
        for k in range(FOLDS):
            classifier_checkpoint(w.checkpoint("classifier", k, run=run), seed=100 * r + k, std=0.5, imgsz=128)


def set_way(way: str) -> None:
    import classifier._predict as cp
    import detector._predict as dp

    dp._SINGLE_READ = cp._SINGLE_READ = way == "single"
    dp._PREFETCH = 2 if way == "single" else 0


def in_process(stage: str, work: Path, repeats: int) -> dict:
    """Median seconds and PNG reads of each way, and whether both wrote the same bytes."""
    from vinbig import log
    from vinbig.config import load_config

    log.setup(-1)
    cfg = load_config(DEMO, [f"{stage}.device=cpu"])[stage]
    runs = demo_runs(stage)  # every run, as the command predicts them
    if stage == "detector":
        from detector._predict import predict

        def run():
            return predict(work, "test", cfg, tta=["hflip"], runs=runs).path
    else:
        from classifier._predict import predict

        def run():
            return predict(work, "test", cfg, runs=runs).path

    reads, imread = [0], cv2.imread

    def counted(*args, **kwargs):
        reads[0] += 1
        return imread(*args, **kwargs)

    cv2.imread = counted
    times, counts, outputs = {"per_fold": [], "single": []}, {}, {}
    try:
        run()  # warm-up: first model calls, file caches
        for _ in range(repeats):
            for way in times:
                set_way(way)
                reads[0] = 0
                t = time.perf_counter()
                path = run()
                times[way].append(time.perf_counter() - t)
                counts[way], outputs[way] = reads[0], path.read_bytes()
    finally:
        cv2.imread = imread
        set_way("single")
    return {way: {"seconds": statistics.median(t), "reads": counts[way]} for way, t in times.items()} | {
        "same_output": outputs["per_fold"] == outputs["single"]}


def whole_command(stage: str, work: Path, repeats: int) -> dict:
    """Median wall seconds and reads of ``vinbig predict-STAGE --split test`` per way in a fresh interpreter."""
    args = ["predict-" + stage, "--work", str(work), "--split", "test", "--config", str(DEMO), "--device", "cpu",
            "-q", *(["--tta", "hflip"] if stage == "detector" else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = Path(work) / "preds" / (f"{stage}_test.parquet" if stage == "detector" else f"{stage}_test.csv")
    times, counts, outputs = {"per_fold": [], "single": []}, {}, {}
    for _ in range(repeats):
        for way in times:
            t = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", COMMAND, way, *args], capture_output=True, text=True,
                                  env=env, cwd=ROOT)
            times[way].append(time.perf_counter() - t)
            if done.returncode != 0:
                raise SystemExit(f"vinbig {' '.join(args)} ({way}) failed:\n{done.stderr}")
            counts[way] = json.loads(done.stderr.strip().splitlines()[-1])["reads"]
            outputs[way] = out.read_bytes()
    return {way: {"seconds": statistics.median(t), "reads": counts[way]} for way, t in times.items()} | {
        "same_output": outputs["per_fold"] == outputs["single"]}


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
    print(f"{'':38s} {'per fold':>10s} {'single read':>12s} {'ratio':>7s} {'reads':>13s}  same file")
    for stage in ("detector", "classifier"):
        for how, label in (("in_process", "in-process predict()"), ("command", f"vinbig predict-{stage}")):
            r = results[stage][how]
            a, b = r["per_fold"], r["single"]
            r["ratio"] = a["seconds"] / b["seconds"]
            print(f"{stage + ', ' + label:38s} {a['seconds']:9.2f}s {b['seconds']:11.2f}s {r['ratio']:6.2f}x "
                  f"{a['reads']:6d} -> {b['reads']:4d}  {'yes' if r['same_output'] else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    same = all(results[s][h]["same_output"] for s in ("detector", "classifier") for h in ("in_process", "command"))
    if not same:
        print("the two ways wrote different files: a bug in the single read", file=sys.stderr)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
