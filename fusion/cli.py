"""The `vinbig` subcommands of the fusion stage: score, fuse, tune, validate, report."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vinbig.artifacts import Work, check_writable, config_path, source_path
from vinbig.errors import UserError
from vinbig.options import Outcome, work_argument

logger = logging.getLogger("vinbig")

# The keys of the fusion section each command reads: fusion and the gate (fuse), the grids of tune, the pictures of
# report.
FUSE_KEYS = tuple(f"fusion.{k}" for k in ("iou_thr", "skip_box_thr", "conf_type", "levels", "calibration",
                                           "calibration_knots", "weights", "run_weights", "classifier_weights",
                                           "engine", "workers", "gate", "low", "high"))
TUNE_KEYS = (*FUSE_KEYS, *(f"fusion.tune_{k}" for k in ("iou_thr", "skip_box_thr", "conf_type", "levels",
                                                         "calibration", "low", "high", "run_weights",
                                                         "run_weights_by")))
REPORT_KEYS = (*FUSE_KEYS, "fusion.report_images", "fusion.report_score_thr")
# tune and report log the OOF mAP they compute to the tracker of the tracking keys (vinbig.tracking: MLflow only)
TRACKING = "tracking"


def _tuned(args: argparse.Namespace) -> list[Path]:
    """WORK/fusion.yaml (the values 'vinbig tune' chose), read between --config and --set, unless --ignore-tuned."""
    from fusion._stage import tuned_files

    return tuned_files(_work(args), not getattr(args, "ignore_tuned", False))


def _work(args: argparse.Namespace) -> Work:
    if not args.work.is_dir():
        raise UserError(f"--work {args.work} is not a folder; give the work folder of 'vinbig folds' and the "
                        "prediction stages")
    return Work(args.work)


def _sample(args: argparse.Namespace, work) -> Path:
    """--sample, else DATA/sample_submission.csv of --data, else the source recorded by 'vinbig images'."""
    if getattr(args, "sample", None) is not None:
        return args.sample
    if getattr(args, "data", None) is not None:
        return args.data / "sample_submission.csv"
    recorded = source_path(work.images("test"))
    if recorded.is_file():
        return Path(recorded.read_text().strip()).parent / "sample_submission.csv"
    raise UserError("which sample_submission.csv? give --sample DATA/sample_submission.csv or --data DATA (the "
                    f"dataset {work.images('test')} was converted from); its source.txt, written by 'vinbig images', is missing")


def _report_faults(faults, name: str, limit: int = 50) -> None:
    for fault in faults[:limit]:
        logger.error("%s", fault.format(name))
    if len(faults) > limit:
        logger.error("... and %d more faults", len(faults) - limit)


# --------------------------------------------------------------------------- commands


def cmd_score(args: argparse.Namespace, cfg: dict) -> int:
    from vinbig.submission import score_files

    result = score_files(args.truth, args.submission)
    if result.ignored:
        logger.warning("%d predicted boxes are for images absent from %s and were ignored", result.ignored,
                       args.truth)
    print(result.to_json() if getattr(args, "json", False) else result.format())
    return 0


def cmd_fuse(args: argparse.Namespace, cfg: dict) -> Outcome:
    from fusion._stage import make_submission, score_oof, write_fused
    from vinbig.submission import prediction_strings

    work = _work(args)
    saved = config_path(work.root, "fusion")
    f = cfg["fusion"]
    out = getattr(args, "out", None)
    # before the fusion: a read-only WORK, an --out that is a folder or under a file (make_submission checks its own)
    for path in (saved, out if args.split == "oof" else None):
        if path is not None:
            check_writable(path)
    if args.split == "oof":
        result, final, _ = score_oof(work, f, runs=getattr(args, "runs", None))
        print(result.format())
        if out is not None:
            write_fused(prediction_strings(final, final["image_id"].unique()), out)
            logger.info("wrote the fused out-of-fold predictions to %s", out)
        return Outcome(0, saved)
    out, faults = make_submission(work, f, _sample(args, work), out, runs=getattr(args, "runs", None))
    if faults:
        _report_faults(faults, str(out))
        logger.error("%s fails validation with %d faults: a bug in the fusion stage, please report it", out,
                     len(faults))
        return Outcome(1, saved)
    logger.info("%s passes 'vinbig validate'", out)
    return Outcome(0, saved)


def cmd_tune(args: argparse.Namespace, cfg: dict) -> Outcome:
    from fusion._tune import format_runs, format_tables, tune, write_tuned

    from vinbig.tracking import Tracking, log_oof_map

    work = _work(args)
    f = cfg["fusion"]
    tracking = Tracking.of(cfg)
    tracking.check()  # a missing package and a read-only WORK before the grid, which can take long
    check_writable(work.fusion_config)
    best = tune(work, f)
    print(format_tables(best.table))
    if best.runs is not None:
        print("\n" + format_runs(best.runs))
    path = write_tuned(work.fusion_config, best)
    shown = {k: (f"{len(v)} run/class maps" if k == "calibration_knots" else v) for k, v in best.values.items()}
    print(f"best: {', '.join(f'{k}={v}' for k, v in shown.items())}: OOF mAP {best.map:.4f}"
          + (f" (config values: {best.before:.4f})" if best.before is not None else "") + f"; written to {path}")
    log_oof_map(work, tracking, "tune", best.map)
    return Outcome(0, config_path(work.root, "tune"))


def cmd_validate(args: argparse.Namespace, cfg: dict) -> int:
    from vinbig.submission import validate_submission

    meta = getattr(args, "meta", None)
    for path, what in ((args.sample, "--sample"), (meta, "--meta")):
        if path is not None and not path.is_file():
            raise UserError(f"{what} {path} not found")
    faults = validate_submission(args.submission, args.sample, meta)
    if faults:
        _report_faults(faults, str(args.submission), args.max_faults)
        logger.error("%s: %d faults", args.submission, len(faults))
        return 1
    logger.info("%s is a valid submission for %s%s", args.submission, args.sample,
                f" (boxes inside the images of {meta})" if meta else "")
    return 0


def cmd_report(args: argparse.Namespace, cfg: dict) -> Outcome:
    from fusion._report import claim_report, write_report
    from fusion._stage import format_run_ap, oof_inputs, run_results, score_oof
    from vinbig.tracking import Tracking, log_oof_map

    work = _work(args)
    tracking = Tracking.of(cfg)
    tracking.check()
    out = getattr(args, "out", None) or work.report
    overwrite = getattr(args, "overwrite", False)
    check_writable(out, folder=True)
    claim_report(out, overwrite).add([config_path(out, "fusion")])  # before the scoring: a folder not vinbig's report
    f = cfg["fusion"]
    inputs = oof_inputs(work, f)  # read once for the ensemble and each run alone
    result, final, truth = score_oof(work, f, curves=True, inputs=inputs)
    print(result.format())
    runs = run_results(work, f, inputs)
    if runs:
        print("\n" + format_run_ap(result, runs))
    write_report(work, result, final, truth, out, f["report_images"], f["report_score_thr"], runs=runs,
                 p_abnormal=inputs.p, low=f["low"], high=f["high"], overwrite=overwrite)
    log_oof_map(work, tracking, "report", result.mean_ap, {run: r.mean_ap for run, r in runs.items()})
    return Outcome(0, config_path(out, "fusion"))


# --------------------------------------------------------------------------- parsers


def _ignore_tuned(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ignore-tuned", action="store_true", dest="ignore_tuned",
                   help="do not read WORK/fusion.yaml (the values 'vinbig tune' chose)")


def register(add) -> None:
    """Add this stage's subcommands with ``add(name, func, help, description, options=...)``."""

    def command(*args, **kwargs) -> argparse.ArgumentParser:
        p = add(*args, **kwargs)
        p.argument_default = argparse.SUPPRESS  # options not given stay unset; --help shows no "(default: None)"
        return p

    p = command("score", cmd_score, "score a submission with the competition metric",
                "PASCAL VOC 2010 mAP at IoU > 0.4 over the 15 classes (No finding = box 0 0 1 1) of a submission "
                "file against a truth box table. Detections are ranked by confidence, ties in submission order; "
                "truth images missing from the submission count as unpredicted; classes absent from the truth are "
                "listed and left out of the mean. Prints a per-class table (AP, truth boxes, predictions). An "
                "unreadable file or a value that is not a finite number is refused (exit 2) with its file and line; "
                "class-14 boxes other than 0 0 1 1 are scored by IoU, as Kaggle does, with a warning.")
    p.add_argument("--truth", required=True, type=Path, metavar="TRUTH.csv",
                   help="image_id,class_id,x_min,y_min,x_max,y_max (WORK/labels.csv qualifies); class-14 boxes "
                        "may be empty")
    p.add_argument("--submission", required=True, type=Path, metavar="SUB.csv", help="image_id,PredictionString")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = command("fuse", cmd_fuse, "fuse the detector's prediction sets, apply the gate, write the submission",
                "Fuse every image's prediction sets (fold x TTA) of WORK/preds/detector_SPLIT.parquet with weighted "
                "boxes fusion (boxes normalized by the original image size of meta.csv), apply the 'No finding' "
                "gate with WORK/preds/classifier_SPLIT.csv when it exists. --split oof scores the result against "
                "WORK/labels.csv and prints the per-class table; --split test writes the submission (one row per "
                "image of the sample submission, in its order) and validates it. Values: config, then "
                "WORK/fusion.yaml (from 'vinbig tune'), then --set and the options below.", options=FUSE_KEYS,
                extra=_tuned)
    work_argument(p)
    p.add_argument("--split", required=True, choices=("oof", "test"), help="which predictions to fuse")
    p.add_argument("--sample", type=Path, metavar="CSV",
                   help="sample_submission.csv giving the test images and their order (default: "
                        "DATA/sample_submission.csv of --data, else of the dataset named in "
                        "WORK/images/test/source.txt, which 'vinbig images' writes)")
    p.add_argument("--data", type=Path, metavar="DATA",
                   help="the dataset folder (Kaggle layout) WORK was made from; its sample_submission.csv is the "
                        "default --sample")
    p.add_argument("--out", type=Path, metavar="SUB.csv",
                   help="submission to write (default WORK/submission.csv); with --split oof, where to write the "
                        "fused out-of-fold predictions in submission format (default: not written)")
    p.add_argument("--run", action="append", dest="runs", metavar="NAME",
                   help="fuse only this detector run's sets (repeatable; default: every run of the predictions, "
                        "weighted by fusion.run_weights), e.g. to score a run alone")
    _ignore_tuned(p)

    p = command("tune", cmd_tune, "choose WBF and gate values on the out-of-fold predictions",
                "Fuse the out-of-fold predictions with every WBF setting of the grid (config fusion.tune_iou_thr x "
                "tune_skip_box_thr x tune_conf_type, and with several detector runs x tune_levels x "
                "tune_calibration, the rank knots fitted on the out-of-fold boxes), score every gate pair (tune_low "
                "x tune_high) on top of each with the metric, print the table of what was tried and write the best "
                "values to WORK/fusion.yaml, which 'vinbig fuse', 'vinbig report' and 'vinbig predict' (through "
                "'vinbig export') then use. With several runs it then weighs them (tune_run_weights, a coordinate "
                "search) and prints each run alone and the ensemble with equal and with searched weights; "
                "tune_run_weights_by says which are written. Without classifier predictions only WBF is tuned. "
                "With tracking.backend mlflow the best OOF mAP is logged (docs/tracking.md).",
                options=TUNE_KEYS, reads=[TRACKING], saves=("fusion",))
    work_argument(p)

    p = command("validate", cmd_validate, "check a submission file, naming the line of every fault",
                "Check a submission against the sample submission: header, every image exactly once (rows in another "
                "order than the sample's, which Kaggle accepts, get a warning), groups of 6 numbers, class ids "
                "0..14, confidences in [0, 1], x_min < x_max and y_min < y_max, class 14 only with the box 0 0 1 1, and with --meta boxes inside the original "
                "image. Prints FILE:LINE: IMAGE: problem for each fault; exits 1 when there is one.")
    p.add_argument("submission", type=Path, metavar="SUB.csv", help="the submission to check")
    p.add_argument("--sample", required=True, type=Path, metavar="CSV", help="the competition's sample_submission.csv")
    p.add_argument("--meta", type=Path, metavar="META.csv",
                   help="meta.csv of the test images (WORK/images/test/meta.csv) to check boxes against the "
                        "original width and height")
    p.add_argument("--max-faults", type=int, default=50, dest="max_faults", help="faults to print at most")

    p = command("report", cmd_report, "the out-of-fold error browser and pictures: AP, PR curves, box overlays",
                "Fuse and gate the out-of-fold predictions as 'vinbig fuse --split oof' does and write to "
                "WORK/report/: index.html (open it in a browser, no server needed: the AP table, PR curves and an "
                "error browser of every image's TP, FP and missed boxes; thumbnails in images/), per_class_ap.png, "
                "pr_curves.png, metrics.csv and overlays/ (true boxes solid, predicted boxes dashed, on the PNGs of a "
                "few images per class). With several detector runs it also prints each run's per-class AP beside "
                "the ensemble's. A rerun removes the overlays and thumbnails of the earlier report that it does not "
                "write again, and only those (the folder's .vinbig-manifest.json lists them); a folder that is not "
                "a report of vinbig's is refused unless empty. With tracking.backend mlflow the OOF mAP, and each "
                "detector run's alone, are logged (docs/tracking.md).", options=REPORT_KEYS, reads=[TRACKING],
                saves=("fusion",), extra=_tuned)
    work_argument(p)
    p.add_argument("--out", type=Path, metavar="DIR", help="report folder (default WORK/report)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a folder that is not a report of vinbig's (one of an older vinbig, or a folder "
                        "of your own), replacing the files of the same names and removing nothing; never into "
                        "another command's output")
    _ignore_tuned(p)
