"""GPU check: the pipeline's speed and memory on one GPU, against ultralytics alone, in at most 8 minutes.

On a fresh synthetic dataset of real size (``vinbig synth`` at 2430 px, ``vinbig images`` at 1024 px,
``vinbig folds``, five folds), with the default config's models:

1. detector training: a few epochs of fold 0 through ``vinbig train-detector`` (yolov8s.yaml at 1024 px, AMP),
   then the same training by ultralytics alone (``YOLO(model).train()`` on the same data.yaml with the arguments
   vinbig passes, detector/_train.py ``train_args``, and vinbig's offline trainer so that nothing is
   downloaded), mosaic on throughout as in most epochs of a real run. Images per second of each (train images x
   epochs / seconds of the whole call), the pipeline's overhead (goal: at most 5 %), the GPU memory peak and
   whether AMP was on. Fold 0's dataset is written and a short untimed training warms the process before either
   run, so that neither pays the one-off costs (lazy imports, the first kernels) for the other;
2. test prediction: ``vinbig predict-detector --split test --tta hflip``, every fold x (none, hflip), with FP16
   (vinbig's default on CUDA) and without; fold 0's trained weights stand in for every fold (a fold's weights
   do not change the speed);
3. classifier training: one fold of ``vinbig train-classifier`` (efficientnet_b0 at 512 px, AMP): images per
   second and the GPU memory peak.

Every step runs in this process (the figures leave out importing torch and ultralytics, paid once before).
The full sizes (320 train and 80 test images, 5 detector and 3 classifier epochs) are meant to fit 8 minutes on
one H200; --n-train, --epochs and the others scale them.
It writes OUT/gpu_check.json (every figure, the device name, the torch, ultralytics and timm versions and
the date) and OUT/gpu_check.md (the table for BENCHMARKS.md), and prints the table. Exit 0 when every step
ran (whatever the figures), 1 with a one-line reason when one failed.

    python bench/gpu_check.py                          # one CUDA GPU (make gpu-check); writes work/gpu_check/
    python bench/gpu_check.py --tiny --out /tmp/check  # the same steps at tiny sizes on the CPU, under a minute
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

OVERHEAD_GOAL = 0.05  # the pipeline may cost at most 5 % of bare ultralytics' training speed

# (setting, full size on one GPU, tiny size on the CPU)
SIZES = {
    "n_train": (320, 12), "n_test": (80, 4), "synth_size": (2430, 256), "png_size": (1024, 128), "n_folds": (5, 2),
    "detector_model": ("yolov8s.yaml", "yolov8n.yaml"), "detector_imgsz": (1024, 64), "detector_epochs": (5, 1),
    "detector_batch": (16, 8), "classifier_backbone": ("efficientnet_b0", "test_efficientnet"),
    "classifier_imgsz": (512, 64), "classifier_epochs": (3, 1), "classifier_batch": (32, 8),
}


class StepFailed(Exception):
    """A step of the check failed; the message is the one line printed."""


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0],
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("work/gpu_check"),
                    help="folder for gpu_check.json and gpu_check.md (default: work/gpu_check)")
    ap.add_argument("--tiny", action="store_true",
                    help="tiny sizes on the CPU (12 images of 256 px, 128 px PNGs, 2 folds, yolov8n.yaml at 64 px and "
                         "timm's test_efficientnet at 64 px for one epoch): the same steps in under a minute")
    ap.add_argument("--work", type=Path, default=None,
                    help="folder for the synthetic data and the work folder (default: a new temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the data and work folder (default: deleted at the end)")
    ap.add_argument("--n-train", type=int, default=None, help="synthetic train images (default: 320; tiny: 12)")
    ap.add_argument("--n-test", type=int, default=None, help="synthetic test images (default: 80; tiny: 4)")
    ap.add_argument("--epochs", type=int, default=None, help="detector training epochs (default: 5; tiny: 1)")
    ap.add_argument("--classifier-epochs", type=int, default=None, help="classifier epochs (default: 3; tiny: 1)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="detector training pairs (vinbig, ultralytics alone), alternating which goes first; the "
                         "best of each counts (default: 1)")
    ap.add_argument("--set", dest="overrides", metavar="SECTION.KEY=VALUE", action="append", default=[],
                    help="a vinbig config override given to every step, the ultralytics-alone run included "
                         "(repeatable), e.g. --set detector.model=yolov8m.yaml")
    ap.add_argument("-v", "--verbose", action="store_true", help="the log of every vinbig step and of ultralytics")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.epochs is not None:
        args.detector_epochs = args.epochs
    for name, (full, tiny) in SIZES.items():
        if getattr(args, name, None) is None:
            setattr(args, name, tiny if args.tiny else full)
    if min(args.n_train, args.n_test, args.detector_epochs, args.classifier_epochs, args.repeats) < 1:
        ap.error("--n-train, --n-test, --epochs, --classifier-epochs and --repeats must be at least 1")
    return args


# --------------------------------------------------------------------------- the machine


def device_name(cuda: bool) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo and its core count."""
    import torch

    if cuda:
        return torch.cuda.get_device_name(0)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} ({os.cpu_count()} cores)"


def versions() -> dict:
    import timm
    import torch
    import ultralytics

    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "ultralytics": ultralytics.__version__, "timm": timm.__version__}


class Clock:
    """Wall time and GPU memory peak of a block (the GPU synchronized at both ends; memory None on the CPU)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.seconds = 0.0
        self.memory_gib: float | None = None

    @contextlib.contextmanager
    def __call__(self):
        import torch

        if self.cuda:
            gc.collect()  # an earlier step's models and batches do not count in this one's peak
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            yield self
        finally:
            if self.cuda:
                torch.cuda.synchronize()
                self.memory_gib = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            self.seconds = time.perf_counter() - start


# --------------------------------------------------------------------------- the steps


class Check:
    """The check's folders and settings, and the `vinbig` commands it runs (in this process)."""

    def __init__(self, args: argparse.Namespace, root: Path, cuda: bool):
        self.args, self.cuda = args, cuda
        self.data, self.work = root / "data", root / "work"
        det_device, cls_device = ("0", "cuda") if cuda else ("cpu", "cpu")
        self.overrides = [
            f"synth.n_train={args.n_train}", f"synth.n_test={args.n_test}", f"synth.size={args.synth_size}",
            "synth.abnormal_fraction=0.5", f"images.size={args.png_size}", f"folds.n_folds={args.n_folds}",
            f"detector.model={args.detector_model}", f"detector.imgsz={args.detector_imgsz}",
            f"detector.epochs={args.detector_epochs}", f"detector.batch={args.detector_batch}",
            f"detector.device={det_device}", "detector.amp=true", "detector.plots=false",
            "detector.close_mosaic=0",  # mosaic throughout, as in 35 of the default 40 epochs
            f"classifier.backbone={args.classifier_backbone}", f"classifier.imgsz={args.classifier_imgsz}",
            f"classifier.epochs={args.classifier_epochs}", f"classifier.batch={args.classifier_batch}",
            f"classifier.device={cls_device}", "classifier.amp=true",
        ]
        if args.tiny:  # one process: starting workers costs more than 12 small images
            self.overrides += ["synth.workers=1", "images.workers=1", "detector.workers=0", "classifier.workers=0"]
        self.overrides += args.overrides  # the user's last, so that they win

    def config(self) -> dict:
        from vinbig.config import load_config

        return load_config(overrides=self.overrides)

    def vinbig(self, step: str, *argv: str) -> None:
        """``vinbig ARGV`` with the check's settings; a non-zero exit raises StepFailed with vinbig's error."""
        from vinbig.app.cli import main

        errors = _Errors()
        logging.getLogger().addHandler(errors)
        try:
            code = main([*argv, *(a for o in self.overrides for a in ("--set", o)),
                         *([] if self.args.verbose else ["-q"])], pipeline=True)  # every step gets every --set
        finally:
            logging.getLogger().removeHandler(errors)
        if code != 0:
            raise StepFailed(f"{step}: 'vinbig {argv[0]}' exited {code}" + (f": {errors.last}" if errors.last else ""))


class _Errors(logging.Handler):
    """Keeps the last error message logged (vinbig prints a user's error as one line)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage().strip().splitlines()[0] if record.getMessage().strip() else ""


def make_data(check: Check) -> dict:
    """Synthetic DICOMs, their PNGs and the folds; the seconds of each."""
    data, work = check.data, check.work
    seconds = {}
    steps = [("synth", ["synth", "--out", str(data)])]
    steps += [(f"images_{split}", ["images", "--src", str(data / split), "--out", str(work / "images" / split)])
              for split in ("train", "test")]
    steps += [("folds", ["folds", "--train-csv", str(data / "train.csv"), "--out", str(work)])]
    for name, argv in steps:
        start = time.perf_counter()
        check.vinbig(f"data ({name})", *argv)
        seconds[name] = round(time.perf_counter() - start, 2)
    a = check.args
    return {"n_train": a.n_train, "n_test": a.n_test, "synth_size": a.synth_size, "png_size": a.png_size,
            "n_folds": a.n_folds, "seconds": seconds}


class AmpRecorder:
    """Records what ultralytics' AMP check (vinbig's offline one) answered in the last training."""

    def __init__(self):
        from detector import follow_log_level  # noqa: F401  (ultralytics offline before it is imported)
        import ultralytics.engine.trainer as trainer

        self.trainer, self.check = trainer, trainer.check_amp
        self.answers: list[bool] = []
        trainer.check_amp = self

    def __call__(self, model) -> bool:
        ok = bool(self.check(model))
        self.answers.append(ok)
        return ok

    def used(self) -> bool:
        """Whether the last training ran with AMP (its check passed; not asked: amp was off)."""
        used = bool(self.answers and self.answers[-1])
        self.answers.clear()
        return used


def train_detector(check: Check, amp: AmpRecorder) -> dict:
    """Fold 0 through `vinbig train-detector`, then by ultralytics alone: images per second of each.

    Before either: fold 0's dataset is written (timed on its own: train-detector then finds it up to date) and a
    short untimed ultralytics training warms what a process does once (torch's lazy imports, the first kernels
    on the device), so that neither run pays it for the other.
    """
    from detector import OfflineDetectionTrainer, fold_dataset, follow_log_level, resolve_model, train_args
    from ultralytics import YOLO
    from vinbig.artifacts import Work, read_folds

    work = Work(check.work)
    config = check.config()
    cfg = config["detector"]
    n_train = int((read_folds(work)["fold"] != 0).sum())
    images = n_train * cfg["epochs"]

    def ultralytics_alone(step: str, run_dir: Path, **changes) -> None:
        args = {**train_args(cfg, work.data_yaml(0), run_dir), **changes}
        try:
            YOLO(resolve_model(cfg["model"])).train(trainer=OfflineDetectionTrainer, verbose=follow_log_level(),
                                                    **args)
        except Exception as e:
            raise StepFailed(f"{step}: {_reason(e)}") from None

    def run_vinbig():
        extra = ["--overwrite"] if work.checkpoint("detector", 0, "last").is_file() else []
        check.vinbig("detector training (vinbig train-detector)", "train-detector", "--work", str(work.root),
                     "--fold", "0", *extra)

    def run_bare():
        ultralytics_alone("detector training (ultralytics alone)", work.root / "ultralytics_alone" / "fold0")

    def clear_caches():
        for cache in work.detector_data(0).glob("labels/*.cache"):
            cache.unlink()  # each run scans the labels, as a first run does

    start = time.perf_counter()
    try:
        fold_dataset(work, 0, config["folds"]["outside_boxes"])
    except Exception as e:
        raise StepFailed(f"detector dataset of fold 0: {_reason(e)}") from None
    dataset_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ultralytics_alone("warm-up training (ultralytics alone)", work.root / "warm_up" / "fold0", epochs=1,
                      fraction=2 * cfg["batch"] if n_train > 2 * cfg["batch"] else 1.0)
    warm_up_seconds = time.perf_counter() - start
    amp.used()

    runs = {"vinbig": [], "ultralytics": []}
    for i in range(check.args.repeats):
        order = (("vinbig", run_vinbig), ("ultralytics", run_bare))
        for name, fn in order if i % 2 == 0 else order[::-1]:
            clear_caches()
            clock = Clock(check.cuda)
            with clock():
                fn()
            runs[name].append({"seconds": round(clock.seconds, 2), "images_per_s": round(images / clock.seconds, 2),
                               "gpu_memory_peak_gib": clock.memory_gib, "amp": amp.used()})
    best = {name: max(r, key=lambda x: x["images_per_s"]) for name, r in runs.items()}
    overhead = best["ultralytics"]["images_per_s"] / best["vinbig"]["images_per_s"] - 1
    return {"model": cfg["model"], "imgsz": cfg["imgsz"], "epochs": cfg["epochs"], "batch": cfg["batch"],
            "workers": cfg["workers"], "device": cfg["device"], "amp_asked": cfg["amp"], "plots": cfg["plots"],
            "train_images": n_train, "val_images": int(len(read_folds(work)) - n_train),
            "dataset_seconds": round(dataset_seconds, 2), "warm_up_seconds": round(warm_up_seconds, 2),
            "repeats": check.args.repeats,
            "order": "fold 0's dataset written, an untimed warm-up training, then vinbig and ultralytics alone "
                     "(alternating which goes first when repeated; label caches removed before each run)",
            "vinbig": best["vinbig"], "ultralytics": best["ultralytics"], "runs": runs,
            "overhead": round(overhead, 4), "overhead_goal": OVERHEAD_GOAL, "meets_goal": overhead <= OVERHEAD_GOAL}


def predict_test(check: Check) -> dict:
    """`vinbig predict-detector --split test --tta hflip` over every fold, with FP16 (CUDA only) and without."""
    import detector
    from vinbig.artifacts import Work, fold_ids, read_folds, read_meta
    from vinbig.config import load_config
    from vinbig.errors import VinbigError

    work = Work(check.work)
    folds = fold_ids(read_folds(work))
    trained = work.checkpoint("detector", 0)
    for k in folds[1:]:  # fold 0's weights stand in for the others: the speed is the same
        work.checkpoint("detector", k).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(trained, work.checkpoint("detector", k))
    n_images = len(read_meta(work.images("test")))
    passes = n_images * len(folds) * 2
    result = {"folds": len(folds), "tta": ["none", "hflip"], "test_images": n_images, "model_passes": passes,
              "weights": f"fold 0's trained best.pt copied as the weights of folds {folds[1:]} (the speed does not "
                         "depend on the weights)"}
    cfg = load_config(overrides=check.overrides)["detector"]
    fp16_arg = ({k: v for k, v in detector.predict_args(cfg, detector.prediction_device(0)).items()
                 if k in ("half", "quantize")} if check.cuda else {})
    modes = (("fp16", True), ("fp32", False)) if check.cuda else (("fp32", False),)
    for mode, half in modes:  # vinbig predicts in FP16 on CUDA; the fp32 run does not
        clock = Clock(check.cuda)
        try:
            with clock():
                detector.predict(work, "test", cfg, tta=["hflip"], half=half)  # as predict-detector does
        except VinbigError as e:
            raise StepFailed(f"test prediction ({mode}): {e}") from None
        result[mode] = {"seconds": round(clock.seconds, 2), "images_per_s": round(n_images / clock.seconds, 2),
                        "model_passes_per_s": round(passes / clock.seconds, 2),
                        "gpu_memory_peak_gib": clock.memory_gib, **({"predict_arg": fp16_arg} if half else {})}
    if not check.cuda:
        result["fp16"] = {"not_applicable": "FP16 prediction runs on CUDA only; on the CPU vinbig predicts in FP32"}
    return result


def train_classifier(check: Check) -> dict:
    """One fold of `vinbig train-classifier`: images per second and the GPU memory peak."""
    from vinbig.artifacts import Work, read_folds

    work = Work(check.work)
    cfg = check.config()["classifier"]
    n_train = int((read_folds(work)["fold"] != 0).sum())
    clock = Clock(check.cuda)
    with clock():
        check.vinbig("classifier training (vinbig train-classifier)", "train-classifier", "--work", str(work.root),
                     "--fold", "0")
    return {"backbone": cfg["backbone"], "imgsz": cfg["imgsz"], "epochs": cfg["epochs"], "batch": cfg["batch"],
            "workers": cfg["workers"], "device": cfg["device"], "amp": bool(cfg["amp"] and check.cuda),
            "train_images": n_train, "seconds": round(clock.seconds, 2),
            "images_per_s": round(n_train * cfg["epochs"] / clock.seconds, 2), "gpu_memory_peak_gib": clock.memory_gib}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def _reason(e: BaseException) -> str:
    """A user's error (vinbig's own) as its message, anything else with its type too."""
    from vinbig.errors import VinbigError

    return _first_line(e) if isinstance(e, VinbigError) else f"{type(e).__name__}: {_first_line(e)}"


# --------------------------------------------------------------------------- the report


def _gib(value) -> str:
    return "-" if value is None else f"{value:.2f} GiB"


def table(r: dict) -> str:
    """The Markdown table for BENCHMARKS.md."""
    d, det, pred, cls = r["data"], r["detector_train"], r["detector_predict"], r["classifier_train"]
    v = r["versions"]
    amp = lambda on: "AMP on" if on else "AMP off"  # noqa: E731
    det_set = f"{det['model']} at {det['imgsz']} px, {det['epochs']} epoch(s) of {det['train_images']} images, " \
              f"batch {det['batch']}"
    lines = [
        f"GPU check on **{r['device']}** ({r['date']}{', tiny sizes' if r['tiny'] else ''}): `{r['command']}`",
        "",
        f"torch {v['torch']} (CUDA {v['cuda']}), ultralytics {v['ultralytics']}, timm {v['timm']}; "
        f"{d['n_train']} train and {d['n_test']} test synthetic images at {d['synth_size']} px, PNGs at "
        f"{d['png_size']} px, {d['n_folds']} folds (made in {sum(d['seconds'].values()):.0f} s)",
        "",
        "| step | settings | images/s | GPU memory peak |",
        "|---|---|---|---|",
        f"| detector training, `vinbig train-detector` | {det_set}, {amp(det['vinbig']['amp'])} | "
        f"{det['vinbig']['images_per_s']:.2f} | {_gib(det['vinbig']['gpu_memory_peak_gib'])} |",
        f"| detector training, ultralytics alone | the same, {amp(det['ultralytics']['amp'])} | "
        f"{det['ultralytics']['images_per_s']:.2f} | {_gib(det['ultralytics']['gpu_memory_peak_gib'])} |",
        f"| pipeline overhead | ultralytics alone / vinbig - 1 (goal <= {OVERHEAD_GOAL:.0%}) | "
        f"**{det['overhead']:+.1%}** | |",
    ]
    for mode in ("fp16", "fp32"):
        p = pred[mode]
        what = f"test prediction, {pred['folds']} folds x hflip, {mode.upper()}"
        if "not_applicable" in p:
            lines.append(f"| {what} | not applicable: {p['not_applicable']} | - | - |")
        else:
            lines.append(f"| {what} | {pred['test_images']} images, {pred['model_passes']} model passes "
                         f"({p['model_passes_per_s']:.2f}/s) | {p['images_per_s']:.2f} | "
                         f"{_gib(p['gpu_memory_peak_gib'])} |")
    lines += [
        f"| classifier training, `vinbig train-classifier` | {cls['backbone']} at {cls['imgsz']} px, {cls['epochs']} "
        f"epoch(s) of {cls['train_images']} images, batch {cls['batch']}, {amp(cls['amp'])} | "
        f"{cls['images_per_s']:.2f} | {_gib(cls['gpu_memory_peak_gib'])} |",
        "",
        f"Images/s: training images x epochs (prediction: test images) / seconds of the whole call, validation "
        f"included. Prediction: {pred['weights']}.",
    ]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> str:
    from vinbig.artifacts import atomic_path

    out.mkdir(parents=True, exist_ok=True)
    text = table(report)
    for name, content in (("gpu_check.json", json.dumps(report, indent=2) + "\n"), ("gpu_check.md", text)):
        with atomic_path(out / name) as tmp:
            tmp.write_text(content)
    return text


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace, root: Path) -> dict:
    import torch

    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda and not args.tiny:
        raise StepFailed("no CUDA GPU is visible to torch: the full check needs one (--tiny runs the same steps at "
                         "tiny sizes on the CPU)")
    if cuda:
        torch.ones(1, device="cuda").sum().item()  # the CUDA context, before any clock starts
    from classifier import train_fold  # noqa: F401  (the imports before any clock starts, as for ultralytics alone)
    from detector import predict, train_fold as train_detector_fold  # noqa: F401
    import timm  # noqa: F401

    amp = AmpRecorder()
    check = Check(args, root, cuda)
    report = {"date": datetime.date.today().isoformat(), "device": device_name(cuda),
              "device_kind": "cuda" if cuda else "cpu", "tiny": args.tiny,
              "command": " ".join(["python bench/gpu_check.py", *args.argv]), "versions": versions(),
              "overrides": check.overrides}
    steps = (("data", lambda: make_data(check)), ("detector_train", lambda: train_detector(check, amp)),
             ("detector_predict", lambda: predict_test(check)), ("classifier_train", lambda: train_classifier(check)))
    for key, step in steps:
        start = time.perf_counter()
        print(f"gpu_check: {key} ...", flush=True)
        report[key] = step()
        print(f"gpu_check: {key} done in {time.perf_counter() - start:.1f} s", flush=True)
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    root = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    if args.work and (root / "work").exists():
        print(f"gpu_check failed: {root / 'work'} exists (a kept earlier check?); remove it or give another --work",
              file=sys.stderr)
        return 1
    start = time.perf_counter()
    try:
        report = run(args, root)
        report["total_seconds"] = round(time.perf_counter() - start, 1)
        text = write_report(report, args.out)
    except StepFailed as e:
        print(f"gpu_check failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gpu_check: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug or a broken install: one line, not a traceback (-v shows it)
        if args.verbose:
            traceback.print_exc()
        print(f"gpu_check failed: {type(e).__name__}: {_first_line(e)}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"gpu_check: data and work folder kept in {root}")
        elif not args.work:
            shutil.rmtree(root, ignore_errors=True)
        else:
            shutil.rmtree(root / "data", ignore_errors=True)
            shutil.rmtree(root / "work", ignore_errors=True)
    print()
    print(text)
    print(f"gpu_check: {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'} "
          f"written in {report['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
