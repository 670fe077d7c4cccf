"""`vinbig predict`: a second opinion on new radiographs, from an exported model (or a work folder).

    vinbig predict --model MODEL INPUT... --out DIR [--dicom-out]

MODEL is what ``vinbig export`` writes (``config.yaml`` marks it complete) or a work folder with trained folds.
Each INPUT is a DICOM file (any name) or a folder searched for ``.dicom`` and ``.dcm`` files. Every image is read
and converted once, as ``vinbig images`` converts (:func:`vinbig.dicom.read_dicom`, long side ``images.size``,
kept in memory: no PNG is written), then, batch by batch, goes through every fold model of every detector run
(each TTA set), every fold model of every classifier run, weighted boxes fusion and the "No finding" gate with
the model's tuned values (``fusion.yaml``), exactly as ``predict-detector``, ``predict-classifier`` and ``fuse``
treat test images. Writes into DIR::

    predictions.csv         file, image_id, class_id, class_name, score, x_min, y_min, x_max, y_max (original
                            DICOM pixels), p_abnormal, gate: one row per image (p_abnormal and the gate's
                            decision, no class) then one per box, highest score first; class 14 "No finding"
                            has a score and no box
    predictions.json        the same per image, with the SOP Instance UID, the settings used and the failures
    overlays/<image_id>.png the radiograph with its boxes, class names and scores (score >= --draw-thr)
    gsps/<image_id>.dcm     with --dicom-out: a Grayscale Softcopy Presentation State (highdicom) referencing the
                            source image, with the same boxes as graphic annotations and their labels as text
    errors.csv              file, image_id, reason of every input that failed (empty when none did)
    config_predict.yaml     the resolved config

The config: the defaults, ``--config``, then the model's own files (an export's ``config.yaml``; in a work folder,
``images/train/config_images.yaml`` and the ``config_detector.yaml`` / ``config_classifier.yaml`` that training
saved beside each run's weights, each run predicting with its own), then ``fusion.yaml`` (the values 'vinbig
tune' chose), then ``--set``. The devices are the session's (the GPU if there is one, else the CPU) unless
``--device`` or ``--set`` says otherwise.

A file that cannot be read is listed with its reason and the others go on; the command ends with a summary and
exits 1 when any input failed. Every file is written to a temporary name and renamed.

This module is the thin layer over the stages' in-memory calls (``detector.load_models(...).predict``,
``classifier.load_models(...).predict``, ``fusion.fuse_and_gate``, ``fusion.draw_predictions``): the model folder is
vinbig.app.model, the inputs vinbig.app.inputs, the files vinbig.app.results and vinbig.app.gsps.
"""

from __future__ import annotations


from __future__ import annotations

import argparse
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from vinbig import log
from vinbig.artifacts import BOX, NO_FINDING, check_writable, config_path
from vinbig.app.inputs import Image, find_inputs, read_batches, read_image  # noqa: F401 (the API)
from vinbig.app.model import Model, _device, config_files, load_models, open_model  # noqa: F401 (the API)
from vinbig.app.results import TABLES, Predictions, Result, format_summary, write_overlay, write_tables
from vinbig.errors import UserError
from vinbig.manifest import Manifest
from vinbig.options import Outcome

logger = logging.getLogger("vinbig")


def predict(model: Model, inputs: Sequence[Path], out: Path, *, tta: Sequence[str] = ("hflip",),
            dicom_out: bool = False, draw_thr: float | None = None, draw_max: int = 20) -> Predictions:
    """Predict every DICOM of `inputs` with `model` and write DIR `out` (see the module docstring)."""
    t_start = time.perf_counter()
    out = Path(out)
    f, images_cfg = model.cfg["fusion"], model.cfg["images"]
    draw_thr = f["report_score_thr"] if draw_thr is None else float(draw_thr)
    files, failed = find_inputs(inputs, out)
    if not files and not failed:
        raise UserError("no input: give DICOM files or folders of them")
    manifest = Manifest.claim(out, "predict", "--out of 'vinbig predict'")  # not another command's folder
    check_writable(out, folder=True)  # before any model loads
    for sub in ("overlays", *(("gsps",) if dicom_out else ())):
        check_writable(out / sub, folder=True)
    import fusion

    fusion.check_fusion(f)
    seconds = dict.fromkeys(("load", "read", "detector", "classifier", "fusion", "writing"), 0.0)
    sets = list(dict.fromkeys(["none", *tta]))
    results: list[Result] = []
    # every file this run may write, recorded before it is written: a rerun removes only what vinbig wrote here
    manifest.add([*TABLES, config_path(".", "predict").name, *(f"{sub}/{f.stem}.{ext}" for f in files
                  for sub, ext in (("overlays", "png"), *((("gsps", "dcm"),) if dicom_out else ())))])
    if files:  # else nothing to load: every input failed already
        t = time.perf_counter()
        models = load_models(model, sets[1:])
        if dicom_out:  # imported now: its start-up is not the first image's writing time
            import highdicom  # noqa: F401

            logging.getLogger("highdicom").setLevel(max(logging.getLogger().getEffectiveLevel(), logging.WARNING))
        seconds["load"] = time.perf_counter() - t
        write = partial(_write_images, out=out, dicom_out=dicom_out, thr=draw_thr, most=draw_max)
        results = _predict_files(models, files, images_cfg, f, write, failed, seconds)
    t = time.perf_counter()
    settings = _settings(model, sets, f, draw_thr, draw_max)
    write_tables(out, results, failed, settings)
    _remove_stale(manifest, results)
    seconds["writing"] += time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t_start
    seconds["images"] = seconds["total"] - seconds["load"]
    return Predictions(out, results, failed, seconds, settings)


def _predict_files(models, files: Sequence[Path], images_cfg: Mapping, f: Mapping, write, failed: list,
                   seconds: dict) -> list[Result]:
    """Every file read, batch by batch, through the models, then written by `write` in a background thread; files
    that cannot be read go to `failed`, the time of each part to `seconds`."""
    gate_on = models.classifiers is not None and f["gate"]
    results: list[Result] = []
    bar = log.progress(total=len(files), unit="img", desc="predict")
    with ThreadPoolExecutor(1, thread_name_prefix="write") as writer:  # overlays and GSPS while the models run
        pending: list = []
        for batch in read_batches(files, images_cfg, models.batch):
            images = [i for i in batch if isinstance(i, Image)]
            failed += [i for i in batch if not isinstance(i, Image)]
            seconds["read"] += sum(i.seconds for i in images)
            if images:
                fused, p = _through_models(models, images, f, gate_on, seconds)
                pending.append(writer.submit(write, [_result(i, fused, p) for i in images]))
            while pending and (pending[0].done() or len(pending) > 2):
                _collect(pending.pop(0).result(), results, failed, seconds)
            bar.update(len(batch))
        for done in pending:
            _collect(done.result(), results, failed, seconds)
    bar.close()
    return results


def _through_models(models, images: Sequence[Image], f: Mapping, gate_on: bool, seconds: dict):
    """The fused and gated batch (every detector, the classifiers when the gate is on, fusion and the gate:
    fusion.Fused) and its P(abnormal) (None: gate off); the time of each part added to `seconds`."""
    import fusion
    import pandas as pd

    pixels = [i.image for i in images]
    meta = pd.DataFrame({"width": [i.width for i in images], "height": [i.height for i in images],
                         "png_width": [i.image.shape[1] for i in images],
                         "png_height": [i.image.shape[0] for i in images]},
                        index=pd.Index([i.image_id for i in images], name="image_id"))  # meta.csv's sizes
    with _quiet():
        t0 = time.perf_counter()
        boxes = models.detectors.predict(pixels, meta)
        t1 = time.perf_counter()
        clf = models.classifiers.predict(pixels, meta.index) if gate_on else None
        t2 = time.perf_counter()
        p = fusion.image_probabilities(clf, f["classifier_weights"]) if clf is not None else None
        fused = fusion.fuse_and_gate(boxes, meta, p, f, workers=1)  # a batch is far below what pays for a process
    seconds["detector"] += t1 - t0
    seconds["classifier"] += t2 - t1
    seconds["fusion"] += time.perf_counter() - t2
    return fused, p


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The stages' own per-call progress bars and info lines off: one bar for the whole command."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def _write_images(results: Sequence[Result], out: Path, dicom_out: bool, thr: float, most: int):
    """Each image's overlay (and GSPS): ``(results, failures, seconds)``; a GSPS the source cannot have is a failure
    of that image only. The pixels are let go once written (memory stays flat over many images)."""
    from vinbig.app.gsps import write_gsps

    t, failures = time.perf_counter(), []
    for r in results:
        r.overlay = write_overlay(r, out / "overlays" / f"{r.image.image_id}.png", thr, most)
        if dicom_out:
            try:
                r.gsps = write_gsps(r, out / "gsps" / f"{r.image.image_id}.dcm", thr, most)
            except ValueError as e:  # a source a presentation state cannot reference: its predictions stand
                failures.append({"file": str(r.image.file), "image_id": r.image.image_id, "reason": f"no GSPS: {e}"})
        r.image.image = None
    return results, failures, time.perf_counter() - t


def _collect(done, results: list, failed: list, seconds: dict) -> None:
    written, failures, spent = done
    results += written
    failed += failures
    seconds["writing"] += spent


def _result(image: Image, fused, p) -> Result:
    """The Result of `image` in the fused batch `fused` (fusion.Fused) with P(abnormal) `p`."""
    final = fused.preds
    rows = final[final["image_id"] == image.image_id]
    boxes = rows[rows["class_id"] != NO_FINDING].sort_values("score", ascending=False, kind="stable")
    nf = rows.loc[rows["class_id"] == NO_FINDING, "score"]
    pv = float(p[image.image_id]) if p is not None and image.image_id in p.index else None
    gate = str(fused.gate[list(fused.image_ids).index(image.image_id)])
    return Result(image, boxes[["class_id", "score", *BOX]].reset_index(drop=True),
                  float(nf.max()) if len(nf) else None, pv, gate)


def _settings(model: Model, sets: Sequence[str], f: Mapping, draw_thr: float, draw_max: int) -> dict:
    """What predicted: the model, its runs and their sizes, the TTA sets, the fusion values, what was drawn."""
    return {
        "model": str(model.root), "model_kind": model.kind, "folds": model.folds,
        "images": {k: model.cfg["images"][k] for k in ("size", "voi", "percentiles")},
        "detector_runs": {run: {k: s[k] for k in ("imgsz", "conf", "iou", "max_det")}
                          for run, s in model.detectors.items()},
        "tta": list(sets),
        "classifier_runs": {run: {"tta": s["tta"]} for run, s in model.classifiers.items()},
        "fusion": {k: f[k] for k in ("iou_thr", "skip_box_thr", "conf_type", "levels", "calibration", "weights",
                                     "run_weights", "classifier_weights", "low", "high")},
        "gate": bool(model.classifiers) and f["gate"], "draw_thr": draw_thr, "draw_max": draw_max,
    }


def _remove_stale(manifest: Manifest, results: Sequence[Result]) -> None:
    """The files an earlier run into the folder wrote (its manifest lists them) that this one did not: overlays and
    GSPS of images not predicted now. Nothing vinbig did not write is touched."""
    keep = [*TABLES, config_path(".", "predict").name,
            *(p.relative_to(manifest.folder).as_posix() for r in results for p in (r.overlay, r.gsps) if p is not None)]
    stale = manifest.remove_stale(keep)
    if stale:
        logger.info("removed %d file(s) an earlier run wrote into %s for images not predicted now", len(stale),
                    manifest.folder)


def _model_files(args: argparse.Namespace) -> list[Path]:
    return config_files(args.model)


def cmd_predict(args: argparse.Namespace, cfg: dict) -> Outcome:
    cfg = _device(args, cfg)
    model = open_model(args.model, cfg, args)
    try:
        pred = predict(model, args.inputs, args.out, tta=[] if args.tta == "none" else [args.tta],
                       dicom_out=args.dicom_out, draw_thr=args.draw_thr, draw_max=args.draw_max)
    except KeyboardInterrupt:
        logger.error("interrupted: predictions.csv, predictions.json and errors.csv are written once every input is "
                     "predicted, so %s holds none of this run (an earlier run's stay as they were, with some of "
                     "the overlays replaced); a rerun of the same command predicts every input again", args.out)
        return Outcome(130)
    print(format_summary(pred, args.dicom_out))
    return Outcome(1 if pred.failed else 0, config_path(args.out, "predict"))


# the config keys vinbig predict reads (set with --set only: the model's own config files give them)
READS = ("images.size", "images.voi", "images.percentiles", "detector.device", "detector.imgsz", "detector.conf",
         "detector.iou", "detector.max_det", "detector.predict_batch", "classifier.device", "classifier.amp",
         "classifier.tta", "classifier.predict_batch", "fusion.iou_thr", "fusion.skip_box_thr", "fusion.conf_type",
         "fusion.levels", "fusion.calibration", "fusion.calibration_knots", "fusion.weights", "fusion.run_weights", "fusion.classifier_weights", "fusion.engine", "fusion.gate",
         "fusion.low", "fusion.high", "fusion.report_score_thr", "runs")


def register(add) -> None:
    """Add `vinbig predict` with ``add(name, func, help, description, ...)``."""
    p = add("predict", cmd_predict, "a second opinion on new DICOMs: boxes, P(abnormal), overlays, DICOM GSPS",
            "Run an exported model (the folder 'vinbig export' writes, or a work folder with trained folds) on DICOM "
            "files or folders of them (.dicom, .dcm). Each image is converted as 'vinbig images' does (in memory) "
            "and goes through every fold of every detector run (with each TTA set), every classifier fold, weighted "
            "boxes fusion and the 'No finding' gate with the model's tuned fusion.yaml. Writes DIR/predictions.csv "
            "(file, image_id, class_id, class_name, score, x_min, y_min, x_max, y_max in original DICOM pixels, "
            "p_abnormal, gate: a row per image with P(abnormal) and the gate's decision, then its boxes), "
            "DIR/predictions.json (the same per image), DIR/overlays/IMAGE_ID.png (the boxes, class names and "
            "scores on the radiograph), DIR/errors.csv and, with --dicom-out, DIR/gsps/IMAGE_ID.dcm: a DICOM "
            "Grayscale Softcopy Presentation State a viewer (OHIF, Weasis, a PACS) overlays on the original. Config: "
            "the defaults, --config, the model's config.yaml (an export) or the configs saved beside its weights (a "
            "work folder), its fusion.yaml, then --set. A file that cannot be read is listed and the others go on; "
            "exits 1 when any input failed. Not for diagnostic use.", reads=READS, saves="all", extra=_model_files)
    p.add_argument("--model", required=True, type=Path, metavar="MODEL",
                   help="the folder 'vinbig export' wrote, or a work folder with every fold trained")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="DICOM files, or folders searched for "
                   ".dicom and .dcm files")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder to write (created if missing)")
    p.add_argument("--dicom-out", action="store_true", dest="dicom_out",
                   help="also write a DICOM GSPS per input into DIR/gsps/, referencing the source image")
    p.add_argument("--tta", choices=("hflip", "none"), default="hflip",
                   help="the detector's test-time augmentation: hflip adds each image's mirror as its own "
                        "prediction set (as make, the demo and the notebooks predict)")
    p.add_argument("--device", default=None, metavar="DEVICE",
                   help="cpu, a GPU index such as 0 (default: the GPU if there is one, else the CPU)")
    p.add_argument("--draw-thr", type=float, default=None, dest="draw_thr", metavar="SCORE",
                   help="boxes drawn on the overlays and in the GSPS: score at least this (default: the config's "
                        "fusion.report_score_thr); the tables hold every box")
    p.add_argument("--draw-max", type=int, default=20, dest="draw_max", metavar="N",
                   help="at most this many boxes drawn per image, the highest scores")
