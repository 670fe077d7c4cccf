"""The `vinbig train-detector` and `vinbig predict-detector` subcommands (registered by vinbig.cli)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger("vinbig")


def _device(text: str):
    """``cpu``, ``0`` or ``0,1`` (several GPUs: DDP)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return [int(p) for p in parts] if len(parts) > 1 else text.strip()


def _folds(text: str) -> list[int]:
    return [int(f) for f in text.split(",") if f.strip()]


def cmd_train(args: argparse.Namespace) -> int:
    from detector._train import DetectorConfigError, summarize, train_fold
    from vinbig.artifacts import Work, config_path, fold_ids, read_folds
    from vinbig.cli import UserError, resolve
    from vinbig.config import save_config

    cfg = resolve(args, "detector", ["model", "epochs", "imgsz", "batch", "device", "workers"])
    work = Work(args.work)
    folds = fold_ids(read_folds(work))
    if args.fold not in folds:
        raise UserError(f"--fold {args.fold}: {work.folds} has folds {folds}")
    given = {k: getattr(args, k) for k in ("model", "epochs", "imgsz", "batch", "device", "workers")
             if getattr(args, k) is not None}
    try:
        run_dir = train_fold(work, args.fold, cfg["detector"], resume=args.resume, overwrite=args.overwrite,
                             resume_overrides=given)
    except DetectorConfigError as e:
        raise UserError(str(e)) from None
    if not args.resume:  # a resumed run keeps the config it started with
        save_config(cfg, config_path(run_dir, "detector"), ["detector"])
    logger.info("fold %d: %s", args.fold, summarize(run_dir))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from detector._predict import predict
    from vinbig.artifacts import Work, config_path
    from vinbig.cli import resolve
    from vinbig.config import save_config

    cfg = resolve(args, "detector", ["imgsz", "device", "conf", "predict_batch"])
    work = Work(args.work)
    out = predict(work, args.split, cfg["detector"], tta=args.tta or (), folds=args.folds, weights=args.weights)
    save_config(cfg, config_path(out.parent, f"detector_{args.split}"), ["detector"])
    return 0


def register(add) -> None:
    """Add this stage's subcommands with ``add(name, func, help, description)``."""
    p = add("train-detector", cmd_train, "train one fold's YOLOv8 detector (ultralytics)",
            "Write the ultralytics dataset of fold K (WORK/detector/data/foldK: linked PNGs, YOLO labels, "
            "data.yaml) and train a YOLOv8 on the other folds, validating on fold K, with the config's "
            "detector section. The model is an architecture yaml trained from scratch or a local .pt file; "
            "nothing is downloaded. Outputs: WORK/detector/foldK/ (weights/best.pt, weights/last.pt, "
            "results.csv, args.yaml, plots). Several GPUs: --device 0,1 (DDP). One fold per job spreads "
            "folds over machines.")
    p.add_argument("--work", required=True, type=Path, metavar="WORK", help="work folder (vinbig images and folds done)")
    p.add_argument("--fold", required=True, type=int, metavar="K", help="validation fold; trains on the others")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in WORK/detector/foldK")
    p.add_argument("--overwrite", action="store_true", help="start over even if WORK/detector/foldK holds a run")
    p.add_argument("--model", help="architecture yaml or local .pt (config detector.model)")
    p.add_argument("--epochs", type=int, help="epochs (config detector.epochs)")
    p.add_argument("--imgsz", type=int, help="image size in px (config detector.imgsz)")
    p.add_argument("--batch", type=int, help="batch size over all GPUs (config detector.batch)")
    p.add_argument("--device", type=_device, help="cpu, 0, or 0,1 for DDP on two GPUs (config detector.device)")
    p.add_argument("--workers", type=int, help="data-loader processes (config detector.workers)")

    p = add("predict-detector", cmd_predict, "predict boxes with the fold detectors",
            "oof: each fold's model predicts its own validation images; test: every fold's model predicts "
            "every image of WORK/images/test. Keeps low-confidence boxes (the metric does not punish them). "
            "--tta hflip adds the flipped image's boxes, flipped back, as a separate prediction set. Writes "
            "WORK/preds/detector_{oof,test}.parquet: image_id, fold, tta, class_id, score, x_min, y_min, "
            "x_max, y_max in original DICOM pixels, clipped to the image.")
    p.add_argument("--work", required=True, type=Path, metavar="WORK", help="work folder with trained folds")
    p.add_argument("--split", required=True, choices=["oof", "test"], help="which images to predict")
    p.add_argument("--tta", action="append", choices=["hflip"],
                   help="test-time augmentation: hflip adds the mirrored image's boxes as their own set")
    p.add_argument("--folds", type=_folds, metavar="0,1,2", help="only these folds (default: all of folds.csv)")
    p.add_argument("--weights", choices=["best", "last"], default="best", help="which checkpoint of each fold")
    p.add_argument("--imgsz", type=int, help="image size in px (config detector.imgsz)")
    p.add_argument("--device", type=_device, help="cpu or a GPU index (config detector.device)")
    p.add_argument("--conf", type=float, help="lowest confidence kept (config detector.conf)")
    p.add_argument("--batch", type=int, dest="predict_batch", help="images per batch (config detector.predict_batch)")
