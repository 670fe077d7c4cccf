"""The fusion stage end to end: fused and gated predictions of a split, the test submission.

In memory, :func:`fuse_and_gate`: the detector's boxes (every run/fold/TTA set, original pixels) and P(abnormal) in,
the final boxes and the gate's decision per image out; `vinbig fuse` (:func:`predict`, over the prediction files)
and `vinbig predict` (over images in memory) both come down to :func:`fused`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from typing import Mapping

from vinbig.artifacts import (CLASS_NAMES, NO_FINDING, TUNED_KEYS, ArtifactError, Work, check_writable, errors_path,
                              images_command, meta_path, read_classifier_preds, read_csv, writing)
from vinbig.config import load_config
from vinbig.log import some
from vinbig.metric import Result, average_precision, index_of, match
from vinbig.runs import check_weights, weight_of

from fusion._calibrate import check_knots
from fusion._fuse import Prepared, check_params, prepare
from fusion._levels import Arranged, check_levels
from fusion._gate import apply_gate, check_thresholds, gate_decisions, image_probabilities
from vinbig.submission import prediction_strings, read_sample, validate_submission, write_submission
from fusion._tune import oof_truth

logger = logging.getLogger(__name__)


def tuned_files(work: Work, tuned: bool = True) -> list[Path]:
    """``[WORK/fusion.yaml]`` (the values 'vinbig tune' chose) when `tuned` and it exists, else ``[]``; logged."""
    path = work.fusion_config
    if not tuned:
        logger.info("ignoring %s (--ignore-tuned)", path)
        return []
    if not path.is_file():
        logger.info("no %s: fusion values from the config (run 'vinbig tune' to choose them on OOF predictions)",
                    path)
        return []
    # read once, by load_config; the values in use are logged where fusion runs
    logger.info("tuned values from %s (%s), over the config; --set and the options still win", path,
                ", ".join(TUNED_KEYS))
    return [path]


def fusion_config(work: Work, config=None, overrides=(), tuned: bool = True) -> dict:
    """The config: defaults, the file `config`, WORK/fusion.yaml (the values 'vinbig tune' chose) when `tuned`
    and it exists, then the ``section.key=value`` `overrides`."""
    return load_config(config, overrides, extra=tuned_files(Work.of(work), tuned))


def gate_probabilities(work: Work, split: str, gate: bool, weights: dict | None = None) -> pd.Series | None:
    """P(abnormal) per image for the gate (the mean over classifier runs weighted by `weights`,
    fusion.classifier_weights), or None (gate off; logged with the reason)."""
    path = work.classifier_preds(split)
    if not gate:
        logger.info("gate off: fusion.gate is false")
        return None
    if not path.is_file():
        logger.info("gate off: no classifier predictions at %s (run 'vinbig predict-classifier --work %s "
                    "--split %s' to use it)", path, work.root, split)
        return None
    clf = read_classifier_preds(work, split)
    runs = list(pd.unique(clf["run"]))
    check_weights(weights or {}, runs, "classifier_weights")
    p = image_probabilities(clf, weights)
    logger.info("gate on: P(abnormal) of %d images from %s%s", len(p), path,
                f" (classifier runs {', '.join(f'{r}: {weight_of(weights or {}, r):g}' for r in runs)})"
                if len(runs) > 1 else "")
    return p


class Fused(NamedTuple):
    """The images of a split, their final predictions (PRED_COLUMNS, every image at least one row), a mask of the
    images that had no detector box at all and the gate's decision of each image (a key of fusion._gate.GATES)."""

    image_ids: np.ndarray
    preds: pd.DataFrame
    no_boxes: np.ndarray
    gate: np.ndarray


class OofScore(NamedTuple):
    """Fused, gated out-of-fold predictions scored against labels.csv."""

    result: Result
    preds: pd.DataFrame
    truth: pd.DataFrame


class Submission(NamedTuple):
    """The submission written and the validator's faults (none when it is valid)."""

    path: Path
    faults: list


def write_fused(sub: pd.DataFrame, out: Path) -> Path:
    """Write submission rows to `out` atomically; a write error (a full disk) is one ArtifactError naming `out`."""
    with writing(out, "free disk space or choose another --out (nothing was left half-written)"):
        return write_submission(sub, out)


def check_fusion(f: dict) -> None:
    """The fusion section's values, before any file is read."""
    check_params(f["iou_thr"], f["skip_box_thr"], f["conf_type"], f["engine"], f["weights"])
    check_levels(f["levels"], f["calibration"])
    check_knots(f["calibration_knots"])
    check_thresholds(f["low"], f["high"])
    check_weights(f["run_weights"], [], "run_weights")


def predict(work: Work | str | os.PathLike, split: str, f: dict, image_ids=None, runs=None) -> Fused:
    """Fuse and gate `split` with the fusion section `f`; `runs`: only these detector runs (None: all)."""
    work = Work.of(work)
    check_fusion(f)
    src = prepare(work, split, image_ids)
    return fused(src, split, f, gate_probabilities(work, split, f["gate"], f["classifier_weights"]), runs,
                 work.detector_preds(split))


def fuse_and_gate(boxes: pd.DataFrame, meta: pd.DataFrame, p: pd.Series | None, f: Mapping, image_ids=None, *,
                  workers: int | None = None) -> Fused:
    """In memory: the detector's `boxes` (DETECTOR_PRED_COLUMNS, original pixels: what ``detector.load_models(...)
    .predict`` gives) of the images `image_ids` (None: those of `meta`, in its order), fused with weighted boxes
    fusion over every run/fold/TTA set (flat or two-level, raw or rank-calibrated scores: fusion.levels,
    fusion.calibration) and gated with P(abnormal) `p` (by image id; None: the gate off), with the fusion section
    `f`. `meta`: each image's original width and height, indexed by image_id. `workers`: fusion
    processes (None: fusion.workers)."""
    check_fusion(f)
    ids = meta.index if image_ids is None else image_ids
    src = Prepared(boxes, meta, np.asarray(ids).astype(str), None, index_of(boxes["image_id"], meta.index))
    return fused(src, "the images", f, p, workers=workers)


def fused(src: Prepared, split: str, f: Mapping, p: pd.Series | None, runs=None, path=None, *,
          workers: int | None = None) -> Fused:
    """The prepared predictions `src` of `split` fused and gated with the fusion section `f` and P(abnormal) `p`:
    the runs `runs`, else every run of weight above 0 in fusion.run_weights (`path`, the prediction file, names
    the fault when a run is missing). `workers`: fusion processes (None: fusion.workers)."""
    run_weights = f["run_weights"] if runs is None else {}
    sets = Arranged(src.select(runs, run_weights, path), f["weights"], run_weights, f["levels"], f["calibration"],
                    f["calibration_knots"])
    inp = sets.inp
    logger.info("fusing %d images of %s: %d boxes from %d prediction sets (%s); iou_thr %g, skip_box_thr %g, %s%s",
                len(inp.image_ids), split, inp.n_boxes, len(inp.sets), ", ".join(inp.sets[:12]), f["iou_thr"],
                f["skip_box_thr"], f["conf_type"], _levels_text(sets))
    boxes = sets.fuse(iou_thr=f["iou_thr"], skip_box_thr=f["skip_box_thr"], conf_type=f["conf_type"],
                      engine=f["engine"], workers=f["workers"] if workers is None else workers)
    if p is not None:
        missing = ~pd.Index(inp.image_ids).isin(p.index)
        if missing.any():
            logger.warning("%d images have no P(abnormal) and keep their boxes without the gate: %s",
                           int(missing.sum()), some(inp.image_ids[missing]))
        logger.info("gate thresholds low %g, high %g", f["low"], f["high"])
    final = apply_gate(boxes, inp.image_ids, p, f["low"], f["high"])
    has_boxes = pd.Index(inp.image_ids).isin(boxes.loc[boxes["class_id"] != NO_FINDING, "image_id"])
    pv = np.full(len(inp.image_ids), np.nan) if p is None else p.reindex(inp.image_ids).to_numpy(np.float64)
    return Fused(inp.image_ids, final, np.diff(inp.offsets) == 0, gate_decisions(pv, has_boxes, f["low"], f["high"]))


def _levels_text(sets: Arranged) -> str:
    """How the runs are fused, for the log: '' for today's flat fusion of raw scores."""
    words = ["each run's sets fused first, then the runs" if sets.levels == "runs" else "",
             "scores rank-calibrated per run and class" if sets.calibration == "rank" else ""]
    return "".join(f"; {w}" for w in words if w)


class OofInputs(NamedTuple):
    """What scoring the out-of-fold predictions reads, read once for the ensemble and each run alone: the detector's
    predictions, P(abnormal) (None: gate off) and the truth of their images."""

    src: Prepared
    p: pd.Series | None
    truth: pd.DataFrame


def oof_inputs(work: Work | str | os.PathLike, f: dict) -> OofInputs:
    """The out-of-fold inputs of fusion, read once (see :func:`score_oof`)."""
    work = Work.of(work)
    check_fusion(f)
    src = prepare(work, "oof")
    p = gate_probabilities(work, "oof", f["gate"], f["classifier_weights"])
    return OofInputs(src, p, oof_truth(work, src.image_ids))


def score_oof(work: Work | str | os.PathLike, f: dict, curves: bool = False, runs=None,
              inputs: OofInputs | None = None) -> OofScore:
    """Fused, gated out-of-fold predictions (of the detector runs `runs`; None: all) scored against labels.csv;
    `inputs`: those of :func:`oof_inputs`, when they were read before."""
    work = Work.of(work)
    src, p, truth = inputs or oof_inputs(work, f)
    final = fused(src, "oof", f, p, runs, work.detector_preds("oof")).preds
    return OofScore(average_precision(match(truth, final), curves=curves), final, truth)  # truth prepared


def run_results(work: Work | str | os.PathLike, f: dict, inputs: OofInputs | None = None) -> dict[str, Result]:
    """With several detector runs: each run alone, fused and gated as the ensemble is, scored on OOF (per-class AP
    and curves); {} with one run. `inputs`: those of :func:`oof_inputs`, when they were read before."""
    inputs = inputs or oof_inputs(work, f)
    runs = inputs.src.runs
    if len(runs) < 2:
        return {}
    out = {}
    for run in runs:
        logger.info("run %s alone:", run)
        out[str(run)] = score_oof(work, f, curves=True, runs=[run], inputs=inputs).result
    return out


def format_run_ap(ensemble: Result, runs: dict[str, Result]) -> str:
    """Per-class AP of each detector run alone and of the ensemble, side by side."""
    names = [*runs, "ensemble"]
    results = [*runs.values(), ensemble]
    width = max(9, *(len(n) + 1 for n in names))
    lines = [f"{'id':>2}  {'class':<20}" + "".join(f"{n:>{width}}" for n in names)]
    for c, name in enumerate(CLASS_NAMES):
        if not ensemble.present[c]:
            continue
        lines.append(f"{c:>2}  {name:<20}" + "".join(f"{r.ap[c]:>{width}.4f}" for r in results))
    lines.append(f"{'':>2}  {'mAP':<20}" + "".join(f"{r.mean_ap:>{width}.4f}" for r in results))
    return "\n".join(lines)


def failed_images(work: Work) -> list[str]:
    """Test images whose DICOM could not be converted (images/test/errors.csv)."""
    path = errors_path(work.images("test"))
    if not path.is_file():
        return []
    return read_csv(path, ["image_id"], images_command(work.images("test")), dtype={"image_id": str})["image_id"].tolist()


def make_submission(work: Work | str | os.PathLike, f: dict, sample: Path, out: Path | None = None,
                    runs=None) -> Submission:
    """Write the test submission (default WORK/submission.csv) for every image of `sample`, in its order, and
    validate it; `runs`: only these detector runs (None: all). That `out` can be written is checked before the
    fusion starts."""
    work = Work.of(work)
    out = Path(out or work.submission)
    if not Path(sample).is_file():
        raise ArtifactError(f"sample submission not found at {sample}; give --sample DATA/sample_submission.csv")
    expected = read_sample(sample)  # read once: validate_submission takes it as it is
    image_ids = np.asarray(expected, dtype=object)
    check_writable(out)
    image_ids, final, no_preds, _ = predict(work, "test", f, image_ids, runs)
    failed = set(failed_images(work)) & set(image_ids)
    if failed:
        logger.warning("%d test images whose DICOM failed to convert get '14 1 0 0 1 1': %s",
                       len(failed), some(sorted(failed)))
    other = [i for i in image_ids[no_preds] if i not in failed]
    if other:
        logger.warning("%d test images have no detector predictions and get '14 1 0 0 1 1': %s", len(other),
                       some(other))
    sub = prediction_strings(final, image_ids)
    write_fused(sub, out)
    logger.info("wrote %s: %d images, %d predicted groups", out, len(sub), len(final))
    meta = meta_path(work.images("test"))
    return Submission(out, validate_submission(out, expected, meta if meta.is_file() else None))
