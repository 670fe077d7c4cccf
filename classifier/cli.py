"""The `vinbig` subcommands of the classifier stage (registered by vinbig.cli)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

logger = logging.getLogger("vinbig")


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from classifier import train_fold
    from classifier._train import check_fresh
    from vinbig import log
    from vinbig.artifacts import Work, config_path
    from vinbig.cli import resolve
    from vinbig.config import save_config

    cfg = resolve(args, "classifier", ["backbone", "weights", "imgsz", "epochs", "batch", "device"])
    out_dir = Work(args.work).fold_dir("classifier", args.fold)
    check_fresh(out_dir, args.resume, args.overwrite)  # before its config is replaced
    rank0 = int(os.environ.get("RANK", 0)) == 0
    if not rank0:
        log.setup(-1)  # under torchrun only rank 0 reports progress
    elif not args.resume:
        save_config(cfg, config_path(out_dir, "classifier"), ["classifier"])
    result = train_fold(args.work, args.fold, cfg["classifier"], resume=args.resume, overwrite=args.overwrite)
    if rank0 and args.resume:  # only once last.pt was accepted: a refused resume leaves the run's config as it was
        save_config(cfg, config_path(out_dir, "classifier"), ["classifier"])
    logger.info("fold %d: best validation AUC %.4f at epoch %d; best.pt, last.pt and summary.csv in %s",
                args.fold, result["best_auc"], result["best_epoch"] + 1, result["out_dir"])
    return 0


def cmd_predict_classifier(args: argparse.Namespace) -> int:
    from classifier import predict
    from vinbig.artifacts import Work, config_path
    from vinbig.cli import resolve
    from vinbig.config import save_config

    cfg = resolve(args, "classifier", ["tta", "device"])
    result = predict(args.work, args.split, cfg["classifier"])
    # WORK/preds/config_classifier_{split}.yaml, beside the predictions it made
    save_config(cfg, config_path(Work(args.work).preds, f"classifier_{args.split}"), ["classifier"])
    logger.info("%s predictions in %s", args.split, result["path"])
    return 0


def register(add) -> None:
    """Add this stage's subcommands with ``add(name, func, help, description)``."""
    p = add("train-classifier", cmd_train_classifier, "train the 'No finding' classifier on one fold",
            "Train a timm model (classifier.backbone, one logit: P(abnormal)) on the PNGs of WORK/images/train "
            "of folds != K and validate on fold K. Writes WORK/classifier/fold{K}/: summary.csv (a row per "
            "epoch), best.pt (best validation AUC), last.pt and config_classifier.yaml. Several GPUs: "
            "torchrun --nproc_per_node N -m vinbig.cli train-classifier ... (classifier.batch is per GPU).")
    p.add_argument("--work", required=True, type=Path, metavar="WORK", help="work folder")
    p.add_argument("--fold", required=True, type=int, metavar="K", help="the fold to validate on")
    p.add_argument("--resume", action="store_true", help="continue from last.pt at its epoch + 1")
    p.add_argument("--overwrite", action="store_true", help="start over even if WORK/classifier/foldK holds a run")
    p.add_argument("--backbone", help="timm model name (config classifier.backbone)")
    p.add_argument("--weights", metavar="PATH", help="local weights file to start from (config classifier.weights)")
    p.add_argument("--imgsz", type=int, help="input size in px (config classifier.imgsz)")
    p.add_argument("--epochs", type=int, help="training epochs (config classifier.epochs)")
    p.add_argument("--batch", type=int, help="images per batch and process (config classifier.batch)")
    p.add_argument("--device", help="cpu, cuda, cuda:0 (config classifier.device; default: GPU if any)")

    p = add("predict-classifier", cmd_predict_classifier, "score out-of-fold or test images with the fold models",
            "oof: each fold's best.pt scores its validation images, and the OOF AUC and the gate's operating "
            "point are reported. test: every fold's best.pt scores every image of WORK/images/test; rows "
            "with fold -1 hold the mean over folds. Writes WORK/preds/classifier_{split}.csv "
            "(image_id,fold,p_abnormal).")
    p.add_argument("--work", required=True, type=Path, metavar="WORK", help="work folder")
    p.add_argument("--split", required=True, choices=("oof", "test"), help="which images to score")
    p.add_argument("--tta", choices=("none", "hflip"), help="test-time augmentation (config classifier.tta)")
    p.add_argument("--device", help="cpu, cuda, cuda:0 (config classifier.device; default: GPU if any)")
