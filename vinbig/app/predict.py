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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from vinbig import log
from vinbig.artifacts import (BOX, CLASS_NAMES, DEFAULT_RUN, DETECTOR_PRED_COLUMNS, DICOM_SUFFIXES, ERROR_COLUMNS,
                              NO_FINDING, Work, atomic_path, check_writable, config_path, images_command, train_command,
                              write_csv, write_fix, writing)
from vinbig.app.kaggle import EXPORT_CONFIG  # written last by 'vinbig export': it marks a complete export
from vinbig.errors import ArtifactError, UserError
from vinbig.manifest import Manifest
from vinbig.options import Outcome
from vinbig.runs import STAGES

logger = logging.getLogger("vinbig")

COLUMNS = ("file", "image_id", "class_id", "class_name", "score", *BOX, "p_abnormal", "gate")
# the gate's decision per image (fusion/_gate.py): what the "gate" column holds
GATES = {
    "off": "no classifier (or fusion.gate false): the boxes stand alone",
    "normal": "P(abnormal) < fusion.low: 'No finding' alone, the boxes dropped",
    "unsure": "fusion.low <= P(abnormal) < fusion.high: the boxes and 'No finding' with score 1 - P(abnormal)",
    "abnormal": "P(abnormal) >= fusion.high: the boxes alone",
    "no box": "P(abnormal) >= fusion.low but the detectors found no box: 'No finding' alone",
}
EXPORT_COMMAND = "vinbig export --work WORK --out {root}"
TABLES = ("predictions.csv", "predictions.json", "errors.csv")
_PREFETCH = 1  # batches of DICOMs read ahead by background threads while the models run (0: read when needed)


# --------------------------------------------------------------------------- the model folder


def _bad_model(root: Path, what: str) -> UserError:
    return UserError(f"--model {root}: {what}; give the folder '{EXPORT_COMMAND.format(root='DIR')}' writes (or "
                     "a work folder with trained folds)")


def model_kind(root: Path) -> str:
    """"export" (a complete ``vinbig export``) or "work" (a work folder); a one-line UserError names what is missing
    and the command that makes it."""
    root = Path(root)
    if not root.exists():
        raise _bad_model(root, "not found")
    if not root.is_dir():
        raise _bad_model(root, "is a file, not a folder")
    if (root / EXPORT_CONFIG).is_file():
        if not (root / "folds.csv").is_file():
            raise UserError(f"--model {root}: {root / 'folds.csv'} not found, so the export is damaged; run "
                            f"'{EXPORT_COMMAND.format(root=root)}' again")
        return "export"
    if (root / "folds.csv").is_file():
        work = Work(root)
        if not work.images("train").is_dir() and not work.labels.is_file():  # what training reads
            raise UserError(f"--model {root}: {root / EXPORT_CONFIG} not found, so the export is incomplete (it is "
                            f"written last); run '{EXPORT_COMMAND.format(root=root)}' again")
        return "work"
    raise _bad_model(root, f"neither {EXPORT_CONFIG} (an export) nor folds.csv (a work folder) is there")


def _saved(root: Path, stage: str, run: str | None = None) -> Path | None:
    """The config training saved beside the weights of `run` (any run when None) in the work folder `root`."""
    pattern = f"{run or '*'}/fold*/{config_path('.', stage).name}"
    found = sorted((root / stage).glob(pattern))
    return found[0] if found else None


def config_files(root: Path, run: Mapping[str, str] | None = None) -> list[Path]:
    """The model's config files, read between --config and --set: an export's config.yaml, or a work folder's saved
    configs (`run`: ``{stage: run}`` whose own saved config to take), then fusion.yaml when it exists."""
    root = Path(root)
    if model_kind(root) == "export":
        files = [root / EXPORT_CONFIG]
    else:
        images = config_path(Work(root).images("train"), "images")
        if not images.is_file() and run is None:
            logger.warning("%s not found (the settings the training PNGs were converted with): new DICOMs are "
                           "converted with the config's images settings, which may differ from training's; finish "
                           "'%s' or give the --set images.... of training", images,
                           images_command(Work(root).images("train")))
        files = [images, *(_saved(root, stage, (run or {}).get(stage)) for stage in STAGES)]
    files.append(Work(root).fusion_config)
    return [f for f in files if f is not None and f.is_file()]


def _device(args: argparse.Namespace, cfg: dict) -> dict:
    """The devices of the detector and classifier sections: --device, else what --set gave, else null (the GPU of
    this session if any, else the CPU: the model's folder may hold training's device)."""
    out = {s: dict(v) for s, v in cfg.items()}
    for section in STAGES:
        if args.device is not None:
            out[section]["device"] = args.device
        elif not any(o.replace(" ", "").startswith(f"{section}.device=") for o in args.overrides):
            out[section]["device"] = None
    return out


@dataclass
class Model:
    """The model of --model: the resolved config, folds, each run's stage section and every checkpoint."""

    root: Path
    kind: str
    cfg: dict
    folds: list[int]
    detectors: dict[str, dict]  # run -> detector section
    classifiers: dict[str, dict]  # run -> classifier section; empty: the gate is off
    detector_paths: dict[tuple[str, int], Path] = field(default_factory=dict)
    classifier_paths: dict[tuple[str, int], Path] = field(default_factory=dict)


def _sections(root: Path, kind: str, cfg: dict, stage: str, args: argparse.Namespace | None) -> dict[str, dict]:
    """``{run: stage section}``: an export's config.yaml gives every run; in a work folder each run takes the
    config saved beside its own weights (under --config and --set)."""
    from vinbig.options import resolve
    from vinbig.runs import check_weights, run_config, run_names, weight_of

    key = "run_weights" if stage == "detector" else "classifier_weights"
    names, weights = run_names(cfg, stage), cfg["fusion"][key]
    check_weights(weights, names, key)
    out = {}
    for run in names:
        if weight_of(weights, run) == 0:
            logger.info("the %s run %s is left out: fusion.%s gives it weight 0", stage, run, key)
            continue
        run_cfg = cfg
        if kind == "work" and args is not None and _saved(root, stage, run) is not None:
            run_cfg = _device(args, resolve(args, config_files(root, {stage: run})))
        out[run] = run_config(run_cfg, stage, run)
    return out


def open_model(root: Path, cfg: dict, args: argparse.Namespace | None = None) -> Model:
    """Check --model: folds.csv, every run's detector for every fold, the classifiers (all of a run's folds or none).
    A missing file is one UserError naming it and the command that makes it."""
    from vinbig.app.kaggle import has_weights, model_paths, work_folds

    root = Path(root)
    kind = model_kind(root)
    work = Work(root)
    folds = work_folds(work)
    model = Model(root, kind, cfg, folds, _sections(root, kind, cfg, "detector", args), {})

    def made_by(stage: str, k: int, run: str) -> str:
        if kind == "export":
            return (f"the export lacks it: train it ('{train_command(Work('WORK'), stage, k, run)}') and run "
                    f"'{EXPORT_COMMAND.format(root=root)}' again")
        return f"run '{train_command(work, stage, k, run)}'"

    def present(stage: str, path: Path) -> Path | None:
        """What stands for the fold's best.pt `path`: in an export its safetensors file (an export holds no pickle),
        in a work folder best.pt or that; None when missing."""
        tensors = path.with_suffix(".safetensors")
        if kind == "work":
            return path if has_weights(stage, path) else None
        if tensors.is_file() and path.with_suffix(".yaml").is_file():
            return tensors
        if path.is_file():
            raise UserError(f"--model {root}: {path} is the pickled checkpoint of an export made before vinbig "
                            f"exported weights as safetensors, and loading a pickle can run code, so an export's is "
                            f"never read; export its work folder again into a new folder: "
                            f"'{EXPORT_COMMAND.format(root='DIR')}'")
        return None

    def missing(path: Path) -> Path:
        """The file of the fold's best.pt `path` that is not there: of an export, its safetensors or yaml file."""
        if kind == "work":
            return path
        return next((p for p in (path.with_suffix(".safetensors"), path.with_suffix(".yaml")) if not p.is_file()), path)

    for (run, k), path in model_paths(work, "detector", list(model.detectors), folds).items():
        if present("detector", path) is None:
            what = f"fold {k}" + (f" of the detector run {run}" if run != DEFAULT_RUN else " of the detector")
            raise UserError(f"--model {root}: {missing(path)} not found ({what}); {made_by('detector', k, run)}"
                            f"{work.old_layout_hint('detector')}")
        model.detector_paths[run, k] = path
    for run, section in _sections(root, kind, cfg, "classifier", args).items():
        paths = {k: path for (_, k), path in model_paths(work, "classifier", [run], folds).items()}
        have = [k for k, p in paths.items() if present("classifier", p) is not None]
        if not have:
            logger.info("no classifier%s in %s: the 'No finding' gate stays off", "" if run == DEFAULT_RUN else
                        f" run {run}", root)
            continue
        for k, path in paths.items():
            if k not in have:
                raise UserError(f"--model {root}: {missing(path)} not found, while folds {have} have a classifier; "
                                f"{made_by('classifier', k, run)}")
        model.classifiers[run] = section
        model.classifier_paths.update({(run, k): p for k, p in paths.items()})
    return model


# --------------------------------------------------------------------------- the models, loaded


@dataclass
class Loaded:
    """Every model in memory and how each predicts."""

    detectors: dict[tuple[str, int], object]  # (run, fold) -> ultralytics YOLO
    detector_args: dict[str, dict]  # run -> ultralytics predict() arguments
    sets: list[str]  # the detector's TTA sets: "none", "hflip"
    classifiers: dict[str, dict[int, tuple]]  # run -> {fold: (torch model, imgsz)}
    classifier_cfg: dict[str, dict]  # run -> classifier section
    classifier_device: object = None  # torch.device
    batch: int = 16


def load_models(model: Model, tta: Sequence[str]) -> Loaded:
    """Load every model of `model` with its stage's one loader (all readable before the first image is read): an
    export's from its safetensors and yaml files only (no pickle is read), a work folder's best.pt through the
    restricted loader."""
    import classifier
    import detector

    from detector._offline import follow_log_level  # first: ultralytics offline

    follow_log_level()
    work, pickles = Work(model.root), model.kind == "work"
    detectors = {(run, k): detector.load_fold_model(work, k, "best", path, run, pickles=pickles)
                 for (run, k), path in model.detector_paths.items()}
    device = detector.prediction_device(model.cfg["detector"]["device"])
    args = {run: detector.predict_args(section, device) for run, section in model.detectors.items()}
    loaded = Loaded(detectors, args, list(dict.fromkeys(["none", *tta])), {}, dict(model.classifiers),
                    batch=min(s["predict_batch"] for s in model.detectors.values()))
    if model.classifiers:
        loaded.classifier_device = classifier.resolve_device(model.cfg["classifier"]["device"])
        for (run, k), path in model.classifier_paths.items():
            made_by = train_command(work, "classifier", k, run)
            loaded.classifiers.setdefault(run, {})[k] = classifier.load_classifier(
                path, loaded.classifier_device, made_by, classifier.load_checkpoint(path, made_by, pickles=pickles))
    return loaded


# --------------------------------------------------------------------------- reading the DICOMs


@dataclass
class Image:
    """One input, read and converted: its header (no pixel data), the 8-bit pixels at the conversion size."""

    file: Path
    image_id: str
    header: object  # pydicom Dataset, as read_dicom parsed it, without its pixel data
    width: int  # original DICOM columns
    height: int  # original DICOM rows
    image: object  # numpy uint8 array, long side images.size (as `vinbig images` writes the PNG)
    voi: str
    window: tuple[float, float]
    seconds: float = 0.0


def find_inputs(inputs: Sequence[Path], out: Path | None = None) -> tuple[list[Path], list[dict]]:
    """The DICOM files of `inputs` (a file as given; a folder searched for .dicom and .dcm files, sorted, leaving
    out the output folder `out` and its GSPS files), each once, and error rows for inputs that are not there,
    folders without DICOMs, paths that are not UTF-8 (named with the bytes escaped) and unusable or repeated image
    ids (the file name without its suffix, as `vinbig images` names the PNGs)."""
    from folds._images import _check_ids, find_dicoms

    skip = Path(out).resolve() if out is not None else None
    files, errors, seen = [], [], set()
    for path in map(Path, inputs):
        if path.is_dir():
            found = [f for f in find_dicoms(path) if skip is None or not f.resolve().is_relative_to(skip)]
            if not found:
                errors.append({"file": shown(path), "image_id": "", "reason": f"no {' or '.join(DICOM_SUFFIXES)} "
                               "file in this folder or under it"})
        elif path.is_file():
            found = [path]
        else:
            errors.append({"file": shown(path), "image_id": shown(path.stem), "reason": "not found"})
            continue
        for f in found:
            if shown(f) != str(f):
                errors.append({"file": shown(f), "image_id": shown(f.stem), "reason": "the path is not UTF-8 text "
                               "(its undecodable bytes are shown as \\xNN); rename the folder or file in UTF-8"})
            elif f.resolve() not in seen:
                seen.add(f.resolve())
                files.append(f)
    files, bad = _check_ids(files)
    return files, errors + bad


def shown(path: Path | str) -> str:
    """`path` as text that can be written anywhere: bytes of a name that are not UTF-8 (held by Python as lone
    surrogates) shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def read_image(path: Path, images: Mapping) -> Image:
    """`path` converted as `vinbig images` converts it (``images`` config section), in memory, with the header
    read_dicom parsed (for the GSPS and the SOP Instance UID). Raises DicomError."""
    from vinbig.dicom import convert

    t = time.perf_counter()
    px, image = convert(path, size=images["size"], voi=images["voi"], percentiles=tuple(images["percentiles"]))
    return Image(Path(path), Path(path).stem, px.header, px.width, px.height, image, px.voi,
                 (px.window_low, px.window_high), time.perf_counter() - t)


def _read_or_error(path: Path, images: Mapping) -> Image | dict:
    from vinbig.dicom import failure_reason

    try:
        return read_image(path, images)
    except Exception as e:  # one bad file must never stop the others
        return {"file": str(path), "image_id": path.stem, "reason": failure_reason(e)}


def read_batches(files: Sequence[Path], images: Mapping, batch: int, prefetch: int = _PREFETCH
                 ) -> Iterator[list[Image | dict]]:
    """`files` read `batch` at a time, in order (an Image, or an error row for a file that cannot be read);
    background threads read up to `prefetch` batches ahead while the models work on the current one."""
    from vinbig.parallel import prefetched

    read = partial(_read_or_error, images=images)
    with contextlib.closing(prefetched(read, files, batch, prefetch, name="read-dicom")) as batches:
        for _, images_or_errors in batches:  # closed with this generator: the reads not started are cancelled
            yield images_or_errors


# --------------------------------------------------------------------------- one batch through every model


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


def _meta(images: Sequence[Image]):
    """meta.csv's sizes of the batch (image_id index): original and converted width and height."""
    import pandas as pd

    return pd.DataFrame({"width": [i.width for i in images], "height": [i.height for i in images],
                         "png_width": [i.image.shape[1] for i in images],
                         "png_height": [i.image.shape[0] for i in images]},
                        index=pd.Index([i.image_id for i in images], name="image_id"))


def detect(loaded: Loaded, images: Sequence[Image]):
    """The rows (DETECTOR_PRED_COLUMNS) of every run x fold x TTA set on the batch, in the order predict-detector
    writes them: model by model (runs, then folds), each model's sets in order."""
    import cv2
    import pandas as pd

    from detector._predict import _predict_images

    ids, meta = [i.image_id for i in images], _meta(images)
    bgr = [cv2.cvtColor(i.image, cv2.COLOR_GRAY2BGR) for i in images]  # what cv2.imread of the PNG gives
    flipped = [cv2.flip(im, 1) for im in bgr] if "hflip" in loaded.sets else None
    frames = []
    for (run, fold), model in loaded.detectors.items():
        rows = _predict_images(model, ids, bgr, flipped, meta, fold, loaded.sets, loaded.detector_args[run], run)
        frames.append(rows)
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=list(DETECTOR_PRED_COLUMNS))
    return pd.concat(frames, ignore_index=True).loc[:, list(DETECTOR_PRED_COLUMNS)]


def classify(loaded: Loaded, images: Sequence[Image]):
    """predict-classifier's test rows of the batch (CLASSIFIER_PRED_COLUMNS): every fold of every classifier run,
    then each run's mean over folds as fold -1."""
    import numpy as np
    import pandas as pd
    import torch

    from classifier._data import PngDataset
    from classifier._model import cudnn_benchmark
    from classifier._predict import infer_folds

    ids = np.asarray([i.image_id for i in images], dtype=object)
    frames = []
    for run, models in loaded.classifiers.items():
        sizes = sorted({imgsz for _, imgsz in models.values()})
        resize = PngDataset([], None, tuple(sizes))  # the classifier's own resize of a PNG to its input size
        x = {s: torch.stack([resize._tensor(i.image, s) for i in images]) for s in sizes}
        cfg = loaded.classifier_cfg[run]
        with cudnn_benchmark(loaded.classifier_device):
            idx, p = infer_folds(models, [(x, None, torch.arange(len(images)))], loaded.classifier_device,
                                 cfg["amp"], cfg["tta"], desc=f"classifier {run}")
        per_fold = pd.concat([pd.DataFrame({"image_id": ids[idx], "run": run, "fold": k, "p_abnormal": v})
                              for k, v in p.items()], ignore_index=True)
        mean = per_fold.groupby("image_id", as_index=False, sort=False)["p_abnormal"].mean().assign(run=run, fold=-1)
        frames += [per_fold, mean]
    return pd.concat(frames, ignore_index=True) if frames else None


def fuse_and_gate(preds, images: Sequence[Image], p, f: Mapping):
    """The final rows (PRED_COLUMNS) of the batch: WBF of every set with the fusion section `f`, then the gate
    (`p`: P(abnormal) per image, None for off)."""
    from fusion._fuse import arrange, fuse
    from fusion._gate import apply_gate

    ids = [i.image_id for i in images]
    inp = arrange(preds, _meta(images), ids, f["weights"], f["run_weights"])
    fused = fuse(inp, iou_thr=f["iou_thr"], skip_box_thr=f["skip_box_thr"], conf_type=f["conf_type"],
                 engine=f["engine"], workers=1)  # a batch is far below what pays for a process
    return apply_gate(fused, ids, p, f["low"], f["high"])


def gate_decision(p: float | None, has_boxes: bool, low: float, high: float) -> str:
    """The gate's decision for one image (GATES), as fusion/_gate.py's apply_gate takes it."""
    if p is None or not math.isfinite(p):
        return "off"
    if p < low:
        return "normal"
    if not has_boxes:
        return "no box"
    return "unsure" if p < high else "abnormal"


# --------------------------------------------------------------------------- writing


@dataclass
class Result:
    """One image's prediction: its final boxes (original pixels), P(abnormal), the gate and its "No finding"."""

    image: Image
    boxes: object  # DataFrame: class_id, score, x_min..y_max; class 14 left out, highest score first
    no_finding: float | None
    p: float | None
    gate: str
    overlay: Path | None = None
    gsps: Path | None = None


def _drawn(boxes, thr: float, most: int):
    return boxes[boxes["score"] >= thr].head(most)


def _summary_line(r: Result) -> str:
    parts = [f"P(abnormal) {r.p:.2f}, gate {r.gate}" if r.p is not None else "gate off"]
    if r.no_finding is not None:
        parts.append(f"No finding {r.no_finding:.2f}")
    return ", ".join(parts)


def draw_overlay(r: Result, out: Path, thr: float, most: int) -> Path:
    """The converted radiograph with the boxes of score >= `thr` (at most `most`), each with its class name and
    score, and a line with the image id, P(abnormal), the gate and 'No finding'."""
    import cv2
    import numpy as np

    from fusion._report import _MIN_CANVAS, _label, class_colours
    from vinbig.boxes import to_png

    image = r.image.image
    zoom = max(1, math.ceil(_MIN_CANVAS / max(image.shape)))  # a small image enlarged, each pixel a square
    if zoom > 1:
        image = cv2.resize(image, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    scale = max(canvas.shape) / 1400
    colours = class_colours()
    shown = _drawn(r.boxes, thr, most)
    h, w = r.image.image.shape
    xy = np.rint(to_png(shown[list(BOX)].to_numpy(np.float64), r.image.width, r.image.height, w, h) * zoom).astype(int)
    order = list(range(len(shown)))[::-1]  # the highest score drawn last, on top
    for i in order:
        x1, y1, x2, y2 = xy[i]
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colours[int(shown["class_id"].iloc[i])], max(2, round(3 * scale)),
                      cv2.LINE_AA)
    for i in order:
        c, s = int(shown["class_id"].iloc[i]), float(shown["score"].iloc[i])
        _label(canvas, f"{CLASS_NAMES[c]} {s:.2f}", xy[i][0], xy[i][1] - 2, colours[c], 0.65 * scale + 0.2)
    more = len(r.boxes) - len(shown)
    lines = [f"{r.image.image_id[:24]}: {_summary_line(r)}",
             f"{len(shown)} box(es) with score >= {thr:g}" + (f" ({more} lower not drawn)" if more else "")
             + " - vinbig, not for diagnostic use"]
    size = min(_fit(line, canvas.shape[1], 0.55 * scale + 0.2) for line in lines)
    step = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, size, max(1, round(size * 2)))[0][1] * 1.9
    for i, line in enumerate(lines):
        _label(canvas, line, 0, round(canvas.shape[0] - (len(lines) - 1 - i) * step), (40, 40, 40), size)
    ok, buf = cv2.imencode(".png", canvas, _png_params())
    if not ok:
        raise ArtifactError(f"cannot encode the overlay {out} as PNG")
    _write_bytes(out, buf.tobytes())
    return out


def _png_params() -> list[int]:
    """Fast PNG settings for an overlay: zlib level 1 over PNG's Up filter, which turns the repeated rows of an
    enlarged image into zeros (a third of the time and the size of OpenCV's default on the demo's images)."""
    import cv2

    params = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV 4.12 and later
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
    return params


def _fit(text: str, width: int, scale: float) -> float:
    """`scale`, or the smaller font scale at which `text` fits into `width` pixels (fusion._report's font)."""
    import cv2

    w = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, round(scale * 2)))[0][0] + 4
    return scale if w <= width else scale * width / w


def _rerun_fix(e: OSError) -> str:
    """The fix of a failed write of an output: free space or mend the permission, then predict again."""
    return f"{write_fix(e)}, then run 'vinbig predict' again"


def _write_bytes(path: Path, data: bytes) -> None:
    with writing(path, _rerun_fix), atomic_path(path) as tmp:
        tmp.write_bytes(data)


# the patient and general study attributes a presentation state copies from its image: type 2, may be empty
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
          "StudyTime", "ReferringPhysicianName")


def gsps(r: Result, thr: float, most: int):
    """A Grayscale Softcopy Presentation State (highdicom) on the source image: each box of score >= `thr` (at most
    `most`) a closed polyline in image pixels (DICOM's PIXEL units: 0,0 is the top left corner of the first
    pixel, as vinbig's boxes) with its class name and score as text, a line of text with P(abnormal) and the gate,
    and a series description that says it is not for diagnostic use. Raises ValueError for a source it cannot
    reference (a header without the UIDs a presentation state must share)."""
    import highdicom as hd
    import numpy as np
    from highdicom.pr import (AnnotationUnitsValues, GraphicAnnotation, GraphicLayer, GraphicObject,
                              GraphicTypeValues, GrayscaleSoftcopyPresentationState, TextObject)

    import vinbig

    ds = r.image.header
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
               if not str(ds.get(k, "")).strip()]
    if missing:
        raise ValueError(f"the source header lacks {', '.join(missing)}, which a presentation state references")
    ref = ds.copy()  # highdicom reads the image's size from it, and the patient and study it copies
    ref.Rows, ref.Columns = r.image.height, r.image.width
    for key in _TYPE2:  # type 2 (may be empty) in a presentation state; many exports leave them out
        if key not in ref:
            setattr(ref, key, "")
    layer = GraphicLayer(layer_name="VINBIG", order=1, description="vinbig predicted boxes: not for diagnostic use")
    shown = _drawn(r.boxes, thr, most)
    text_h = max(8.0, 0.022 * r.image.height)
    objects, texts = [], []
    for row in shown.itertuples():
        x0, y0, x1, y1 = (float(getattr(row, c)) for c in BOX)
        objects.append(GraphicObject(GraphicTypeValues.POLYLINE,
                                     np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float64),
                                     AnnotationUnitsValues.PIXEL))
        text = f"{CLASS_NAMES[int(row.class_id)]} {row.score:.2f}"
        top = y0 - text_h if y0 >= text_h else y0
        right = min(float(r.image.width), max(x1, x0 + 0.6 * text_h * len(text)))
        texts.append(TextObject(text, AnnotationUnitsValues.PIXEL, bounding_box=(x0, top, right, top + text_h),
                                text_justification="LEFT"))
    head = f"vinbig: {_summary_line(r)} - NOT FOR DIAGNOSTIC USE"
    texts.append(TextObject(head, AnnotationUnitsValues.PIXEL, text_justification="LEFT",
                            bounding_box=(0.0, 0.0, min(float(r.image.width), 0.6 * text_h * len(head)), text_h)))
    kwargs = {}
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":  # bone bright, as the image itself shows
        kwargs["presentation_lut_transformation"] = hd.PresentationLUTTransformation(
            presentation_lut_shape=hd.PresentationLUTShapeValues.INVERSE)
    if r.image.voi == "percentile":  # the file has no window: the one vinbig computed, so a viewer shows its view
        low, high = r.image.window
        kwargs["voi_lut_transformations"] = [hd.pr.SoftcopyVOILUTTransformation(
            window_center=(low + high) / 2, window_width=max(high - low, 1.0))]
    annotation = GraphicAnnotation([ref], layer, graphic_objects=objects or None, text_objects=texts)
    out = GrayscaleSoftcopyPresentationState(
        referenced_images=[ref], series_instance_uid=hd.UID(), series_number=990, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="vinbig", manufacturer_model_name="vinbig predict",
        software_versions=vinbig.__version__, device_serial_number="none", content_label="VINBIG",
        content_description="vinbig predicted boxes, not for diagnostic use", graphic_annotations=[annotation],
        graphic_layers=[layer], content_creator_name="vinbig^", **kwargs)
    out.SeriesDescription = "vinbig boxes - NOT FOR DIAGNOSTIC USE"
    return out


def write_gsps(r: Result, out: Path, thr: float, most: int) -> Path:
    ds = gsps(r, thr, most)
    with writing(out, _rerun_fix), atomic_path(out) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return out


def _none(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def _box(b) -> dict:
    """One box of Result.boxes (a row of itertuples) as predictions.csv and predictions.json give it."""
    c = int(b.class_id)
    return {"class_id": c, "class_name": CLASS_NAMES[c], "score": float(b.score),
            **{k: float(getattr(b, k)) for k in BOX}}


def table_rows(results: Sequence[Result]) -> list[dict]:
    """predictions.csv: per image its row (p_abnormal, gate), its boxes by score, then 'No finding'."""
    rows = []
    for r in results:
        base = {"file": str(r.image.file), "image_id": r.image.image_id}
        rows.append({**base, "p_abnormal": r.p, "gate": r.gate})
        rows += [{**base, **_box(b)} for b in r.boxes.itertuples()]
        if r.no_finding is not None:
            rows.append({**base, "class_id": NO_FINDING, "class_name": CLASS_NAMES[NO_FINDING],
                         "score": r.no_finding})
    return rows


def json_image(r: Result, out: Path) -> dict:
    return {
        "file": str(r.image.file), "image_id": r.image.image_id,
        "sop_instance_uid": str(r.image.header.get("SOPInstanceUID", "")) or None,
        "width": r.image.width, "height": r.image.height,
        "p_abnormal": _none(r.p), "gate": r.gate, "no_finding": _none(r.no_finding),
        "boxes": [_box(b) for b in r.boxes.itertuples()],
        "overlay": r.overlay.relative_to(out).as_posix() if r.overlay else None,
        "gsps": r.gsps.relative_to(out).as_posix() if r.gsps else None,
    }


# --------------------------------------------------------------------------- the command


@dataclass
class Predictions:
    """What `vinbig predict` did: the results, the inputs that failed, where it wrote, and the time of each part."""

    out: Path
    results: list[Result]
    failed: list[dict]
    # seconds of: read, detector, classifier, fusion, writing (work on the images, summed over threads); load (the
    # models), images (wall time after loading them), total (wall time of all)
    seconds: dict[str, float]
    settings: dict


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
    from fusion._fuse import check_params
    from fusion._gate import check_thresholds

    check_params(f["iou_thr"], f["skip_box_thr"], f["conf_type"], f["engine"], f["weights"])
    check_thresholds(f["low"], f["high"])
    seconds = dict.fromkeys(("load", "read", "detector", "classifier", "fusion", "writing"), 0.0)
    sets = list(dict.fromkeys(["none", *tta]))
    results: list[Result] = []
    # every file this run may write, recorded before it is written: a rerun removes only what vinbig wrote here
    manifest.add([*TABLES, config_path(".", "predict").name, *(f"{sub}/{f.stem}.{ext}" for f in files
                  for sub, ext in (("overlays", "png"), *((("gsps", "dcm"),) if dicom_out else ())))])
    if files:  # else nothing to load: every input failed already
        t = time.perf_counter()
        loaded = load_models(model, sets[1:])
        if dicom_out:  # imported now: its start-up is not the first image's writing time
            import highdicom  # noqa: F401

            logging.getLogger("highdicom").setLevel(max(logging.getLogger().getEffectiveLevel(), logging.WARNING))
        seconds["load"] = time.perf_counter() - t
        write = partial(_write_images, out=out, dicom_out=dicom_out, thr=draw_thr, most=draw_max)
        results = _predict_files(loaded, files, images_cfg, f, write, failed, seconds)
    t = time.perf_counter()
    settings = _settings(model, sets, f, draw_thr, draw_max)
    _write_tables(out, results, failed, settings)
    _remove_stale(manifest, results)
    seconds["writing"] += time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t_start
    seconds["images"] = seconds["total"] - seconds["load"]
    return Predictions(out, results, failed, seconds, settings)


def _predict_files(loaded: Loaded, files: Sequence[Path], images_cfg: Mapping, f: Mapping, write, failed: list,
                   seconds: dict) -> list[Result]:
    """Every file read, batch by batch, through the models, then written by `write` in a background thread; files
    that cannot be read go to `failed`, the time of each part to `seconds`."""
    gate_on = bool(loaded.classifiers) and f["gate"]
    results: list[Result] = []
    bar = log.progress(total=len(files), unit="img", desc="predict")
    with ThreadPoolExecutor(1, thread_name_prefix="write") as writer:  # overlays and GSPS while the models run
        pending: list = []
        for batch in read_batches(files, images_cfg, loaded.batch):
            images = [i for i in batch if isinstance(i, Image)]
            failed += [i for i in batch if not isinstance(i, Image)]
            seconds["read"] += sum(i.seconds for i in images)
            if images:
                final, p = _through_models(loaded, images, f, gate_on, seconds)
                pending.append(writer.submit(write, [_result(i, final, p, f) for i in images]))
            while pending and (pending[0].done() or len(pending) > 2):
                _collect(pending.pop(0).result(), results, failed, seconds)
            bar.update(len(batch))
        for done in pending:
            _collect(done.result(), results, failed, seconds)
    bar.close()
    return results


def _through_models(loaded: Loaded, images: Sequence[Image], f: Mapping, gate_on: bool, seconds: dict):
    """The final rows of a batch (every detector, the classifiers when the gate is on, fusion and the gate) and its
    P(abnormal) (None: gate off); the time of each part added to `seconds`."""
    from fusion._gate import image_probabilities

    with _quiet():
        t0 = time.perf_counter()
        preds = detect(loaded, images)
        t1 = time.perf_counter()
        clf = classify(loaded, images) if gate_on else None
        t2 = time.perf_counter()
        p = image_probabilities(clf, f["classifier_weights"]) if clf is not None else None
        final = fuse_and_gate(preds, images, p, f)
    seconds["detector"] += t1 - t0
    seconds["classifier"] += t2 - t1
    seconds["fusion"] += time.perf_counter() - t2
    return final, p


def _write_images(results: Sequence[Result], out: Path, dicom_out: bool, thr: float, most: int):
    """Each image's overlay (and GSPS): ``(results, failures, seconds)``; a GSPS the source cannot have is a failure
    of that image only. The pixels are let go once written (memory stays flat over many images)."""
    t, failures = time.perf_counter(), []
    for r in results:
        r.overlay = draw_overlay(r, out / "overlays" / f"{r.image.image_id}.png", thr, most)
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


def _result(image: Image, final, p, f: Mapping) -> Result:
    rows = final[final["image_id"] == image.image_id]
    boxes = rows[rows["class_id"] != NO_FINDING].sort_values("score", ascending=False, kind="stable")
    nf = rows.loc[rows["class_id"] == NO_FINDING, "score"]
    pv = float(p[image.image_id]) if p is not None and image.image_id in p.index else None
    return Result(image, boxes[["class_id", "score", *BOX]].reset_index(drop=True),
                  float(nf.max()) if len(nf) else None, pv, gate_decision(pv, len(boxes) > 0, f["low"], f["high"]))


def _settings(model: Model, sets: Sequence[str], f: Mapping, draw_thr: float, draw_max: int) -> dict:
    """What predicted: the model, its runs and their sizes, the TTA sets, the fusion values, what was drawn."""
    return {
        "model": str(model.root), "model_kind": model.kind, "folds": model.folds,
        "images": {k: model.cfg["images"][k] for k in ("size", "voi", "percentiles")},
        "detector_runs": {run: {k: s[k] for k in ("imgsz", "conf", "iou", "max_det")}
                          for run, s in model.detectors.items()},
        "tta": list(sets),
        "classifier_runs": {run: {"tta": s["tta"]} for run, s in model.classifiers.items()},
        "fusion": {k: f[k] for k in ("iou_thr", "skip_box_thr", "conf_type", "weights", "run_weights",
                                     "classifier_weights", "low", "high")},
        "gate": bool(model.classifiers) and f["gate"], "draw_thr": draw_thr, "draw_max": draw_max,
    }


def _write_tables(out: Path, results: Sequence[Result], failed: Sequence[dict], settings: dict) -> None:
    import pandas as pd

    table = pd.DataFrame(table_rows(results), columns=list(COLUMNS))
    table["class_id"] = table["class_id"].astype("Int64")
    with writing(out / "predictions.csv", _rerun_fix):
        write_csv(table, out / "predictions.csv", COLUMNS)
    with writing(out / "errors.csv", _rerun_fix):
        write_csv(pd.DataFrame(list(failed), columns=list(ERROR_COLUMNS)), out / "errors.csv", ERROR_COLUMNS)
    doc = {"settings": settings, "gates": GATES, "images": [json_image(r, out) for r in results],
           "failed": [dict(e) for e in failed]}
    _write_bytes(out / "predictions.json", json.dumps(doc, indent=1, allow_nan=False).encode())


def _remove_stale(manifest: Manifest, results: Sequence[Result]) -> None:
    """The files an earlier run into the folder wrote (its manifest lists them) that this one did not: overlays and
    GSPS of images not predicted now. Nothing vinbig did not write is touched."""
    keep = [*TABLES, config_path(".", "predict").name,
            *(p.relative_to(manifest.folder).as_posix() for r in results for p in (r.overlay, r.gsps) if p is not None)]
    stale = manifest.remove_stale(keep)
    if stale:
        logger.info("removed %d file(s) an earlier run wrote into %s for images not predicted now", len(stale),
                    manifest.folder)


def format_summary(pred: Predictions, dicom_out: bool, most: int = 10) -> str:
    """What the command prints at the end: counts, each image's top findings, the failures, time, outputs."""
    results, failed, out = pred.results, pred.failed, pred.out
    n_in = len(results) + len({e["file"] for e in failed if not e["reason"].startswith("no GSPS")})
    lines = ["", f"predicted {len(results)} of {n_in} input(s) with {pred.settings['model']}"]
    for r in results[:most]:
        top = ", ".join(f"{CLASS_NAMES[int(b.class_id)]} {b.score:.2f}" for b in r.boxes.head(3).itertuples())
        lines.append(f"  {r.image.image_id}: {top or 'no box'}; {_summary_line(r)}")
    if len(results) > most:
        lines.append(f"  ... and {len(results) - most} more in predictions.csv")
    if failed:
        lines.append(f"failed: {len(failed)} (errors.csv)")
        lines += [f"  {e['file']}: {e['reason']}" for e in failed[:20]]
        if len(failed) > 20:
            lines.append(f"  ... and {len(failed) - 20} more in {out / 'errors.csv'}")
    s, n = pred.seconds, len(results)
    models = s["detector"] + s["classifier"]
    lines.append(f"time: {s['total']:.1f} s: loading the models {s['load']:.1f} s, then {s['images'] / n:.3f} s per "
                 f"image (read and convert {s['read'] / n:.3f}, models {models / n:.3f}, fusion {s['fusion'] / n:.3f}, "
                 f"writing {s['writing'] / n:.3f})" if n else f"time: {s['total']:.1f} s")
    outputs = f"{out / 'predictions.csv'}, predictions.json, overlays/"
    lines.append(f"outputs: {outputs}" + (", gsps/" if dicom_out else "") + (", errors.csv" if failed else ""))
    return "\n".join(lines)


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
            "exits 1 when any input failed. Not for diagnostic use.", extra=_model_files)
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
