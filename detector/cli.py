"""The `vinbig train-detector` and `vinbig predict-detector` subcommands."""

from __future__ import annotations

import argparse
import logging

from vinbig.artifacts import Work, check_fold, config_path
from vinbig.config import settings
from vinbig.options import Outcome, given, predict_arguments, train_arguments
from vinbig.runs import one_run, others, run_argument, run_config, run_names, select

logger = logging.getLogger("vinbig")

# The keys each command reads. Prediction: ultralytics' predict() arguments (detector.predict_args), the batch and
# the device; training reads every other key of the section (detector._train passes those it does not read itself
# to ultralytics' train(), so that a new training setting is one line in configs/default.yaml), and the folds keys
# that make a run's labels (detector._dataset.fold_dataset) and place a box beyond its image, and the tracking keys
# (vinbig.tracking: where the epochs are logged), which are not saved with the weights: they do not change them.
PREDICTION_ONLY = tuple(f"detector.{k}" for k in ("conf", "iou", "max_det", "predict_batch"))
PREDICT_KEYS = ("detector.device", "detector.imgsz", *PREDICTION_ONLY)
TRAIN_KEYS = tuple(s.name for s in settings("detector") if s.name not in PREDICTION_ONLY)
TRAIN_FOLDS_KEYS = tuple(f"folds.{k}" for k in ("outside_boxes", "exclude_readers", "reader_weights", "iou_thr",
                                                 "conf_type"))


def _folds(text: str) -> list[int]:
    return [int(f) for f in text.split(",") if f.strip()]


def cmd_train(args: argparse.Namespace, cfg: dict) -> Outcome:
    from detector._train import train_fold
    from vinbig.tracking import Tracking

    work = Work(args.work)
    check_fold(work, args.fold)
    name = one_run(cfg, "detector", args.run)
    section = run_config(cfg, "detector", name, given(args).get("detector", {}))
    # folds.outside_boxes (--set folds.outside_boxes=clip): what a box of labels.csv beyond its image becomes
    run = train_fold(work, args.fold, section, resume=args.resume, overwrite=args.overwrite,
                     resume_overrides=given(args).get("detector", {}), outside_boxes=cfg["folds"]["outside_boxes"],
                     run=name, folds_cfg=cfg["folds"], tracking=Tracking.of(cfg))
    cfg["detector"] = section  # saved beside the weights: the run's own section
    logger.info("%sfold %d: %s", f"run {name}, " if len(run_names(cfg, "detector")) > 1 else "", args.fold,
                run.summary)
    # a resumed run keeps the config it started with (written now if its first session was killed before)
    saved = config_path(run.run_dir, "detector")
    return Outcome(0, None if args.resume and saved.is_file() else saved)


def cmd_predict(args: argparse.Namespace, cfg: dict) -> Outcome:
    from detector._predict import predict

    chosen = select(cfg, "detector", args.runs)
    runs = {name: run_config(cfg, "detector", name, given(args).get("detector", {})) for name in chosen}
    keep = others(cfg, "detector", chosen)
    result = predict(args.work, args.split, cfg["detector"], tta=args.tta or (), folds=args.folds,
                     weights=args.weights, runs=runs, keep_runs=keep)
    return Outcome(0, config_path(result.path.parent, f"detector_{args.split}"))


def register(add) -> None:
    """Add this stage's subcommands with ``add(name, func, help, description, options=..., reads=...)``."""
    p = add("train-detector", cmd_train, "train one fold's YOLO detector (ultralytics)",
            "Write the ultralytics dataset of fold K (WORK/detector/RUN/data/foldK: linked PNGs, YOLO labels, "
            "data.yaml) and train a YOLO detector on the other folds, validating on fold K, with the config's "
            "detector section. A box of labels.csv beyond its image stops the command with a list of them, "
            "unless --set folds.outside_boxes=clip (moved to the edge) or drop (left out). The model is an "
            "ultralytics YOLO detection yaml trained from scratch (yolov8n.yaml, yolo11n.yaml, yolo26n.yaml, any "
            "scale) or a local .pt file; nothing is downloaded; RT-DETR and segmentation, pose, OBB or "
            "classification models are refused before anything is written. Outputs: "
            "WORK/detector/RUN/foldK/ (weights/best.pt, weights/last.pt, results.csv, args.yaml, plots); RUN is "
            "one of the config's runs.detector, each the detector section with the keys it changes ('default' "
            "when none is declared; --run NAME when there are several). GPUs: "
            "detector.device null trains on every GPU torch sees (DDP over several; GPU 0 alone with --batch -1), "
            "--device 0,1 on those; --resume continues on this session's device, whatever the run started on. "
            "One fold per job spreads folds over machines. Each epoch is logged to WORK/detector/RUN/foldK/"
            "progress.json and to the tracker of tracking.backend (none: off; docs/tracking.md).",
            options=TRAIN_KEYS, reads=[*TRAIN_FOLDS_KEYS, "runs.detector", "tracking"],
            saves=("detector", "folds", "runs"))
    train_arguments(p, "detector")
    run_argument(p, "detector", many=False)

    p = add("predict-detector", cmd_predict, "predict boxes with the fold detectors of every run",
            "Every run of the config's runs.detector (or --run NAME) predicts with its own size and thresholds; "
            "oof: each fold's model predicts its own validation images; test: every fold's model predicts "
            "every image of WORK/images/test. Keeps low-confidence boxes (the metric does not punish them). "
            "--tta hflip adds the flipped image's boxes, flipped back, as a separate prediction set. Writes "
            "WORK/preds/detector_{oof,test}.parquet: image_id, run, fold, tta, class_id, score, x_min, y_min, "
            "x_max, y_max in original DICOM pixels, clipped to the image; with --run, the other runs' rows of the "
            "file are kept.", options=PREDICT_KEYS, aliases={"--batch": "predict_batch"}, reads=["runs.detector"])
    predict_arguments(p)
    run_argument(p, "detector", many=True)
    p.add_argument("--tta", action="append", choices=["hflip"],
                   help="test-time augmentation: hflip adds the mirrored image's boxes as their own set")
    p.add_argument("--folds", type=_folds, metavar="0,1,2", help="only these folds (default: all of folds.csv)")
    p.add_argument("--weights", choices=["best", "last"], default="best", help="which checkpoint of each fold")
