"""`vinbig predict` (a second opinion on new DICOMs) per image, split into its parts, against the bare model passes.

The demo's export: the detector runs of configs/demo.yaml x their folds x two TTA sets of a YOLOv8n at 160 px, the
folds of a test_efficientnet classifier at 128 px, on synthetic DICOMs of about 256 px (a
quarter JPEG 2000), on the CPU. Give ``--model`` the export of a trained demo (``make demo``, then ``vinbig export
--work work/demo/work --out DIR --config configs/demo.yaml``); without it the script saves the fold models by hand
with random weights and head biases (prediction costs the same whatever the weights, but random heads keep up to
``max_det`` boxes per set where a trained one keeps a few dozen, so fusion and the tables cost more).

Timed, each `--repeats` times, alternating, median:

- in-process: :func:`vinbig.app.predict.predict` on the DICOMs, with its own split: read and convert (DICOM
  decoding, VOI, resize), the detector (every run x fold x TTA set, boxes to original pixels), the classifier
  (every fold), fusion (WBF and the gate) and writing (overlays, GSPS with --dicom-out, predictions.csv/.json);
- the bare model passes on the same converted images and batches: ultralytics' ``predict()`` of every detector
  and TTA set (letterbox, network, NMS) plus the classifier's network on its prepared batch (and its mirror with
  classifier.tta hflip), nothing else; also the detector's network alone (``predictor.inference`` on the
  letterboxed batch), for reference;
- the whole command a user runs, ``vinbig predict --model M DICOMS --out DIR -q``, in a fresh interpreter (start-up,
  imports and checkpoint loading included).

The detector's rows (boxes mapped to original pixels, one row each) are built by detector/_predict.py's
``_predict_images`` with one array pass per prediction set (a DataFrame and a meta.csv lookup per image and set,
as it was first written, cost 0.012 s an image here: 24.8 % over the bare passes instead of 17.5 %).

    python bench/bench_second_opinion.py                           # 64 DICOMs, random weights, about 5 minutes
    python bench/bench_second_opinion.py --model DIR --dicoms DATA/test --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import DEMO, FOLDS, ROOT, classifier_checkpoint, detector_checkpoint, vinbig

PARTS = ("read", "detector", "classifier", "fusion", "writing")


def make_dicoms(root: Path, n: int) -> Path:
    """`n` synthetic DICOMs of the demo's size (configs/demo.yaml's synth section); kept when `root` has them."""
    data = root / "data"
    if not (data / "sample_submission.csv").is_file():
        vinbig("synth", "--out", str(data), "--config", str(DEMO), "--n-train", "0", "--n-test", str(n))
    return data / "test"


def make_export(root: Path) -> Path:
    """The demo's export layout with every fold model saved by hand, random weights: folds.csv, the runs of
    configs/demo.yaml, config.yaml by `vinbig export --config configs/demo.yaml`."""
    import pandas as pd

    from detector import follow_log_level  # first: ultralytics offline
    from vinbig.artifacts import Work
    from vinbig.config import load_config
    from vinbig.runs import run_names

    follow_log_level()
    out = root / "export"
    if (out / "config.yaml").is_file():
        return out
    work = Work(root / "work")
    work.root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"image_id": [f"i{k}" for k in range(FOLDS)], "fold": range(FOLDS)}).to_csv(work.folds, index=False)
    cfg = load_config(DEMO)
    for r, run in enumerate(run_names(cfg, "detector")):
        for k in range(FOLDS):
            detector_checkpoint(work.checkpoint("detector", k, "best", run), seed=100 * r + k, biases=True,
                                arch=cfg["detector"]["model"])
    for k in range(FOLDS):
        classifier_checkpoint(work.checkpoint("classifier", k), std=0.5, imgsz=cfg["classifier"]["imgsz"],
                              backbone=cfg["classifier"]["backbone"])
    vinbig("export", "--work", str(work.root), "--out", str(out), "--config", str(DEMO))
    return out


def open_export(model: Path):
    """The export as `vinbig predict` opens it, on the CPU."""
    from vinbig.app.model import config_files, open_model
    from vinbig.config import load_config

    cfg = load_config(None, ["detector.device=cpu", "classifier.device=cpu"], extra=config_files(model))
    return open_model(model, cfg)


def bare_passes(models, images) -> dict:
    """Seconds of the model passes alone over `images` (converted, in the command's batches); `models`: what
    vinbig.app.model.load_models gives (detector.DetectorModels, classifier.ClassifierModels)."""
    import cv2

    from classifier import Prepare, to_tensor

    detectors, classifiers = models.detectors, models.classifiers
    seconds = {"detector": 0.0, "detector_network": 0.0, "classifier": 0.0}
    for start in range(0, len(images), models.batch):
        batch = images[start:start + models.batch]
        bgr = [cv2.cvtColor(i.image, cv2.COLOR_GRAY2BGR) for i in batch]
        views = {"none": bgr, "hflip": [cv2.flip(im, 1) for im in bgr]}
        for (run, _), model in detectors.models.items():
            for tta in detectors.sets:
                t = time.perf_counter()
                model.predict(views[tta], **detectors.args[run])
                seconds["detector"] += time.perf_counter() - t
                x = model.predictor.preprocess(views[tta])
                t = time.perf_counter()
                model.predictor.inference(x)
                seconds["detector_network"] += time.perf_counter() - t
        for run, fold_models in (classifiers.models if classifiers else {}).items():
            sizes = sorted({s for _, s in fold_models.values()})
            x = {s: torch.stack([to_tensor(i.image, s) for i in batch]) for s in sizes}
            for model, imgsz in fold_models.values():
                prepared = Prepare(model, classifiers.device)(x[imgsz])
                t = time.perf_counter()
                with torch.no_grad():
                    model(prepared)
                    if classifiers.tta[run] == "hflip":
                        model(torch.flip(prepared, dims=[3]))
                seconds["classifier"] += time.perf_counter() - t
    return seconds


def in_process(model_dir: Path, dicoms: Path, out: Path, repeats: int, dicom_out: bool) -> dict:
    """Median seconds per image of vinbig predict's parts and of the bare passes, alternating."""
    from vinbig import log
    from vinbig.app.inputs import find_inputs, read_image
    from vinbig.app.model import load_models
    from vinbig.app.predict import predict

    log.setup(-1)
    model = open_export(model_dir)
    files, _ = find_inputs([dicoms])
    loaded = load_models(model, ["hflip"])
    images = [read_image(f, model.cfg["images"]) for f in files]
    n = len(files)
    predict(model, [dicoms], out, dicom_out=dicom_out)  # warm-up: first model calls, numba's cache, file caches
    bare_passes(loaded, images)
    runs, bare = [], []
    for _ in range(repeats):
        runs.append(predict(model, [dicoms], out, dicom_out=dicom_out))
        bare.append(bare_passes(loaded, images))
    med = lambda values: statistics.median(values) / n  # noqa: E731
    result = {part: med([r.seconds[part] for r in runs]) for part in PARTS}
    result["per_image"] = med([r.seconds["images"] for r in runs])
    result["load"] = statistics.median(r.seconds["load"] for r in runs)
    result["bare"] = {k: med([b[k] for b in bare]) for k in bare[0]}
    result["bare"]["total"] = med([b["detector"] + b["classifier"] for b in bare])
    result["overhead"] = result["per_image"] / result["bare"]["total"] - 1
    result["boxes_per_image"] = sum(len(r.boxes) for r in runs[-1].results) / n
    result["models"] = {"detector": len(loaded.detectors.keys), "tta_sets": len(loaded.detectors.sets),
                        "classifier": sum(len(m) for m in loaded.classifiers.models.values()) if loaded.classifiers
                        else 0}
    return result


def whole_command(model_dir: Path, dicoms: Path, out: Path, repeats: int, dicom_out: bool) -> dict:
    """Median wall seconds of `vinbig predict` in a fresh interpreter, and the time it reports itself."""
    args = [sys.executable, "-m", "vinbig", "predict", "--model", str(model_dir), str(dicoms), "--out", str(out),
            "--device", "cpu", "-q", *(["--dicom-out"] if dicom_out else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    walls, inside = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT)
        walls.append(time.perf_counter() - t)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr}")
        total, load = re.search(r"^time: ([\d.]+) s: loading the models ([\d.]+) s", done.stdout, flags=re.M).groups()
        inside.append((float(total), float(load)))
    return {"wall": statistics.median(walls), "predict": statistics.median(t for t, _ in inside),
            "load": statistics.median(load for _, load in inside)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="an export of the demo (default: one with random weights)")
    ap.add_argument("--dicoms", type=Path, help="a folder of DICOMs (default: --n synthetic ones of the demo's size)")
    ap.add_argument("--n", type=int, default=64, help="synthetic DICOMs to make without --dicoms")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each measurement (median)")
    ap.add_argument("--dicom-out", action="store_true", dest="dicom_out", help="also write the GSPS files")
    ap.add_argument("--keep", type=Path, help="make (or reuse) the DICOMs and the export here")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    torch.set_num_threads(os.cpu_count() or 1)
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_second_opinion_"))
    dicoms = args.dicoms or make_dicoms(root, args.n)
    model = args.model or make_export(root)
    r = in_process(model, dicoms, root / "out", args.repeats, args.dicom_out)
    c = whole_command(model, dicoms, root / "out_command", args.repeats, args.dicom_out)
    n = len([p for p in dicoms.rglob("*") if p.suffix.lower() in (".dicom", ".dcm")])
    r["command"] = {"wall_per_image": c["wall"] / n, "images_per_image": (c["predict"] - c["load"]) / n,
                    "start_up": c["wall"] - c["predict"] + c["load"]}
    r.update({"images": n, "cpus": os.cpu_count(), "model": str(model), "weights": "given" if args.model else "random"})

    m, b = r["models"], r["bare"]
    print(f"{n} DICOMs from {dicoms}, export {model} ({r['weights']} weights): {m['detector']} detector models x "
          f"{m['tta_sets']} TTA sets, {m['classifier']} classifier models; CPU ({os.cpu_count()} cores); median of "
          f"{args.repeats}; {r['boxes_per_image']:.0f} final boxes per image")
    print(f"{'seconds per image':44s} {'':>8s}")
    print(f"{'vinbig predict, in-process (models loaded)':44s} {r['per_image']:8.4f}")
    for part, label in zip(PARTS, ("read and convert", "detector (all models, boxes to pixels)",
                                   "classifier (all folds)", "fusion and gate", "writing")):
        print(f"{'  ' + label:44s} {r[part]:8.4f}")
    print(f"{'bare model passes':44s} {b['total']:8.4f}")
    print(f"{'  detector predict() calls':44s} {b['detector']:8.4f}")
    print(f"{'    of which the network alone':44s} {b['detector_network']:8.4f}")
    print(f"{'  classifier network':44s} {b['classifier']:8.4f}")
    print(f"{'overhead over the bare passes':44s} {100 * r['overhead']:7.1f} %")
    cmd = r["command"]
    print(f"{'whole command, fresh process (wall)':44s} {cmd['wall_per_image']:8.4f}   = start-up {cmd['start_up']:.1f} s "
          f"(interpreter, imports, checkpoints) + {cmd['images_per_image']:.4f} s per image")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
