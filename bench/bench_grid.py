"""The run x fold grid three ways: one job at a time, two at once, and on a local Ray; same weights, less time?

On a fresh synthetic dataset (2 folds), `vinbig train --stage detector` trains 2 detector runs (the same model,
training seeds 0 and 1) x 2 folds into three work folders that share the images and folds: `--jobs 1`,
`--engine local --jobs 2` and `--engine ray --cpus-per-job 1` (a local Ray of this machine's cores). Prints each
wall time (a `vinbig train` process, start-up included) and checks that every fold's best.pt holds the same
tensors in the three (loaded with the restricted loader: the files differ by their date).

    python bench/bench_grid.py                                   # about 15 minutes on 2 cores
    python bench/bench_grid.py --n-train 24 --imgsz 64 --epochs 1   # a minute or two: does it work
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = "runs.detector={a: {}, b: {seed: 1}}"
WAYS = {"one job at a time (--jobs 1)": ["--jobs", "1"],
        "local, two at once (--jobs 2)": ["--engine", "local", "--jobs", "2"],
        "ray (--cpus-per-job 1)": ["--engine", "ray", "--cpus-per-job", "1"]}


def vinbig(*argv: str, check: bool = True) -> float:
    """`python -m vinbig ARGV -q` as a process of its own; its wall time in seconds."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "vinbig", *argv, "-q"])
    if check and r.returncode != 0:
        raise SystemExit(f"vinbig {' '.join(argv)} exited with {r.returncode}")
    return time.perf_counter() - t0


def same_weights(works: list[Path], runs=("a", "b"), folds=(0, 1)) -> list[str]:
    """The folds whose best.pt tensors differ between `works` (each against the first), with the largest difference."""
    import torch

    from detector import load_checkpoint
    from vinbig.artifacts import Work

    differ = []
    for run in runs:
        for k in folds:
            ref, *others = [load_checkpoint(Work(w).checkpoint("detector", k, "best", run))["model"].state_dict()
                            for w in works]
            for w, sd in zip(works[1:], others):
                if sd.keys() != ref.keys():
                    differ.append(f"{run} fold{k} in {w.name}: other layers")
                elif not all(torch.equal(sd[n], t) for n, t in ref.items()):
                    worst = max((float((sd[n].float() - t.float()).abs().max()) for n, t in ref.items()
                                 if t.is_floating_point()), default=0.0)
                    differ.append(f"{run} fold{k} in {w.name}: largest difference {worst:.3g}")
    return differ


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=120, help="synthetic train images")
    ap.add_argument("--size", type=int, default=256, help="synthetic DICOM height in px")
    ap.add_argument("--imgsz", type=int, default=128, help="PNG long side and training size")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--model", default="yolov8n.yaml")
    ap.add_argument("--out", type=Path, default=None, help="keep the data and work folders here")
    args = ap.parse_args()
    if importlib.util.find_spec("ray") is None:
        raise SystemExit("bench_grid needs Ray for its third way: pip install 'vinbig[ray]'")

    if args.out is not None and args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"--out {args.out} is not empty: give a new folder (bench_grid removes its work folders "
                         "between ways, and only in a folder it made)")
    root = args.out or Path(tempfile.mkdtemp(prefix="bench_grid_"))
    data, base = root / "data", root / "base"
    t0 = time.perf_counter()
    vinbig("synth", "--out", str(data), "--n-train", str(args.n_train), "--n-test", "1", "--size", str(args.size),
           "--set", "synth.abnormal_fraction=0.7")
    vinbig("images", "--src", str(data / "train"), "--out", str(base / "images" / "train"), "--size",
           str(args.imgsz))
    vinbig("folds", "--train-csv", str(data / "train.csv"), "--out", str(base), "--n-folds", "2")
    print(f"data: {args.n_train} train images, 2 folds, in {time.perf_counter() - t0:.0f} s", flush=True)

    sets = ["--set", RUNS]
    for key, value in (("model", args.model), ("imgsz", args.imgsz), ("epochs", args.epochs), ("batch", 8),
                       ("device", "cpu"), ("workers", 0), ("plots", "false")):
        sets += ["--set", f"detector.{key}={value}"]
    sets += ["--set", "folds.n_folds=2"]
    works, rows = [], []
    for i, (way, options) in enumerate(WAYS.items()):
        work = root / f"work{i}"
        if work.exists():
            shutil.rmtree(work)
        (work / "images").mkdir(parents=True)
        (work / "images" / "train").symlink_to(base / "images" / "train", target_is_directory=True)
        for name in ("labels.csv", "folds.csv", "readers.csv"):
            shutil.copy(base / name, work / name)
        seconds = vinbig("train", "--work", str(work), "--stage", "detector", *options, *sets)
        works.append(work)
        rows.append((way, seconds))
        print(f"{way}: {seconds:.1f} s", flush=True)

    print(f"\n2 detector runs x 2 folds, {args.model} at {args.imgsz} px, {args.epochs} epochs, {args.n_train} "
          f"images, {os.cpu_count()} cores:")
    print(f"{'way':<34} {'wall s':>8} {'speed-up':>9}")
    for way, seconds in rows:
        print(f"{way:<34} {seconds:>8.1f} {rows[0][1] / seconds:>8.2f}x")
    differ = same_weights(works)
    print("best.pt of every run and fold: " + ("the same tensors in all three" if not differ else
                                               "DIFFERENT: " + "; ".join(differ)))
    print(f"folders: {root}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
