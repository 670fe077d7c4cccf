"""The `vinbig train-classifier` and `vinbig predict-classifier` subcommands."""

from __future__ import annotations

import argparse
import logging
import os

from vinbig.artifacts import Work, config_path
from vinbig.config import settings
from vinbig.options import Outcome, given, predict_arguments, train_arguments
from vinbig.runs import one_run, others, run_argument, run_config, run_names, select

logger = logging.getLogger("vinbig")

# The keys each command reads. Prediction takes the backbone and the input size from each fold's checkpoint, and
# reads the loader's, the device's and the TTA's keys, and gate_miss for the OOF report; training reads every key
# but the TTA and gate_miss (predict_batch: its validation batch), and the tracking keys (vinbig.tracking: where the
# epochs are logged), which are not saved with the weights: they do not change them.
PREDICTION_ONLY = ("classifier.tta", "classifier.gate_miss")
PREDICT_KEYS = ("classifier.device", "classifier.predict_batch", "classifier.workers", "classifier.amp",
                *PREDICTION_ONLY)
TRAIN_KEYS = tuple(s.name for s in settings("classifier") if s.name not in PREDICTION_ONLY)


def cmd_train_classifier(args: argparse.Namespace, cfg: dict) -> Outcome:
    from classifier import train_fold
    from vinbig import log
    from vinbig.tracking import Tracking

    rank0 = int(os.environ.get("RANK", 0)) == 0
    if not rank0:
        log.setup(-1)  # under torchrun only rank 0 reports progress
    name = one_run(cfg, "classifier", args.run)
    # the run's own section (command-line options over its keys) is saved with its weights
    cfg["classifier"] = run_config(cfg, "classifier", name, given(args).get("classifier", {}))
    result = train_fold(args.work, args.fold, cfg["classifier"], resume=args.resume, overwrite=args.overwrite,
                        run=name, tracking=Tracking.of(cfg))
    logger.info("%sfold %d: best validation AUC %.4f at epoch %d; best.pt, last.pt and summary.csv in %s",
                f"run {name}, " if len(run_names(cfg, "classifier")) > 1 else "", args.fold, result.best_auc,
                result.best_epoch + 1, result.out_dir)
    # saved once the run is done (or last.pt was accepted for --resume), by rank 0 only
    return Outcome(0, config_path(result.out_dir, "classifier") if rank0 else None)


def cmd_predict_classifier(args: argparse.Namespace, cfg: dict) -> Outcome:
    from classifier import predict

    chosen = select(cfg, "classifier", args.runs)
    runs = {name: run_config(cfg, "classifier", name, given(args).get("classifier", {})) for name in chosen}
    keep = others(cfg, "classifier", chosen)
    result = predict(args.work, args.split, cfg["classifier"], runs=runs, keep_runs=keep)
    logger.info("%s predictions in %s", args.split, result.path)
    # WORK/preds/config_classifier_{split}.yaml, beside the predictions it made
    return Outcome(0, config_path(Work(args.work).preds, f"classifier_{args.split}"))


def register(add) -> None:
    """Add this stage's subcommands with ``add(name, func, help, description, options=..., reads=...)``."""
    p = add("train-classifier", cmd_train_classifier, "train the 'No finding' classifier on one fold",
            "Train a timm model (classifier.backbone, one logit: P(abnormal)) on the PNGs of WORK/images/train "
            "of folds != K and validate on fold K. Writes WORK/classifier/RUN/fold{K}/ (RUN: one of the config's "
            "runs.classifier, 'default' when none is declared; --run NAME when there are several): summary.csv "
            "(a row per "
            "epoch), best.pt (best validation AUC), last.pt and config_classifier.yaml. One process uses one GPU; "
            "several GPUs: torchrun --standalone --nproc_per_node N -m vinbig train-classifier ... (each process "
            "takes GPU LOCAL_RANK; classifier.batch and classifier.workers are per process). --resume continues "
            "on this session's device and processes, whatever the run started on. Each epoch is logged to "
            "progress.json in the fold's folder and to the tracker of tracking.backend (none: off; "
            "docs/tracking.md).", options=TRAIN_KEYS, reads=["runs.classifier", "tracking"],
            saves=("classifier", "runs"))
    train_arguments(p, "classifier")
    run_argument(p, "classifier", many=False)

    p = add("predict-classifier", cmd_predict_classifier, "score out-of-fold or test images with the fold models",
            "Every run of the config's runs.classifier (or --run NAME, keeping the other runs' rows): "
            "oof: each fold's best.pt scores its validation images, and the OOF AUC and the gate's operating "
            "point are reported. test: every fold's best.pt scores every image of WORK/images/test; rows "
            "with fold -1 hold the mean over folds. Writes WORK/preds/classifier_{split}.csv "
            "(image_id,run,fold,p_abnormal). --batch is the prediction batch (classifier.predict_batch).",
            options=PREDICT_KEYS, aliases={"--batch": "predict_batch"}, reads=["runs.classifier"])
    predict_arguments(p)
    run_argument(p, "classifier", many=True)
