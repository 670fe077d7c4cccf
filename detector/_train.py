"""Train one fold's YOLO detector with ultralytics, offline, into ``WORK/detector/fold{k}/``."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from vinbig.artifacts import DEFAULT_RUN, Work, config_path, train_command
from vinbig.config import settings
from vinbig.devices import parse_device
from vinbig.errors import ConfigError
from vinbig.tracking import Tracker, Tracking

logger = logging.getLogger(__name__)

# keys of the detector section that vinbig reads itself; every other key goes to ultralytics' train() under its
# own name, so that a new training setting is one line in configs/default.yaml
VINBIG_KEYS = ("model", "device", "extra", "conf", "iou", "max_det", "predict_batch", "labels", "exclude_readers",
               "reader_weights")
TRAIN_KEYS = tuple(s.key for s in settings("detector") if s.key not in VINBIG_KEYS)


# the heads of the architectures vinbig trains: ultralytics' DetectionModel, one box and one class per detection
DETECT_HEADS = ("Detect", "v10Detect")
DETECT_YAMLS = "yolov8n.yaml, yolo11n.yaml, yolo26n.yaml"
# what a head that is not a detector's makes (by the head's name without YOLO26's "26")
_OTHER_TASKS = {"Segment": "segmentation", "Pose": "pose", "OBB": "oriented-box (OBB)", "Classify": "classification",
                "Depth": "depth", "SemanticSegment": "semantic segmentation"}


def check_detection(arch, model: str) -> None:
    """Refuse, in one line, an ultralytics architecture (a model yaml as a dict) that vinbig does not train: an
    RT-DETR (ultralytics' RTDETR model and trainer), a segmentation, pose, oriented-box, classification or
    open-vocabulary (YOLO-World, YOLOE) model. Any YOLO detection architecture is taken (YOLOv3 to YOLO26)."""
    head = arch["head"][-1][2] if isinstance(arch, dict) and arch.get("head") else None
    if head in DETECT_HEADS:
        return
    fix = f"use a YOLO detection yaml: {DETECT_YAMLS}"
    if head == "RTDETRDecoder":
        raise ConfigError(f"detector.model {model} is an RT-DETR, which vinbig does not train (it needs "
                          f"ultralytics' RTDETR model and trainer); {fix}")
    name = str(head)
    task = _OTHER_TASKS.get(name.removesuffix("26"))
    kind = ("an open-vocabulary (YOLO-World or YOLOE)" if name.startswith(("World", "YOLOE")) else
            f"{'an' if task[0] in 'aeio' else 'a'} {task}" if task else "another kind of")
    raise ConfigError(f"detector.model {model} is {kind} model (its head is {name}), and vinbig trains box "
                      f"detectors only; {fix}")


def resolve_model(model: str) -> str:
    """`model` as ultralytics takes it: a built-in architecture yaml, or an existing local .pt or .yaml file. An
    architecture that is not a YOLO box detector is refused (:func:`check_detection`); a .pt is checked once it is
    loaded (train_fold)."""
    path = Path(model).expanduser()
    if path.suffix == ".pt":
        if not path.is_file():
            raise ConfigError(
                f"detector.model: weights file {path} not found. Nothing is downloaded: put the .pt file "
                f"(e.g. yolov8s.pt from github.com/ultralytics/assets/releases) at {path.resolve()}, "
                f"or train from scratch with --set detector.model=yolov8s.yaml")
        return str(path.resolve())
    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(
            f"detector.model: {model!r} is neither an architecture yaml ({DETECT_YAMLS}, yolov8s.yaml ...) "
            "nor a .pt weights file")
    if path.is_file():  # a local architecture: ultralytics evals its activation, so it is checked first
        import yaml

        from detector._weights import check_architecture

        try:
            arch = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ConfigError(f"detector.model: {path} is not a readable YAML file ({e.__class__.__name__}); give "
                              "an ultralytics architecture yaml") from None
        check_architecture(arch, path, "give an ultralytics architecture yaml (e.g. a copy of yolov8s.yaml)")
        check_detection(arch, model)
        return str(path.resolve())
    from ultralytics.nn.tasks import yaml_model_load

    try:
        arch = yaml_model_load(model)  # ultralytics' cfg/models (yolo11s.yaml: yolo11.yaml at scale s); no download
    except FileNotFoundError:
        raise ConfigError(
            f"detector.model: {model!r} is not an ultralytics architecture nor a file; use e.g. {DETECT_YAMLS} "
            "(scales n, s, m, l, x), or the path of a local .yaml or .pt") from None
    check_detection(arch, model)
    return model


def training_device(device, batch) -> str:
    """The config's `device` (null, cpu, 0, "0,1" or [0, 1]) as ultralytics trains on it on this machine now.

    null is every GPU torch sees (DDP over several), else the CPU; but with `batch` -1 (ultralytics' AutoBatch, one
    GPU only) null takes GPU 0 alone, with a warning, and two GPUs named are an error saying what to change.
    """
    spec = parse_device(device, "detector.device")
    resolved = spec.resolve()
    if len(resolved.gpus) > 1 and batch < 1:
        if spec.kind == "auto":
            logger.warning("detector.batch %s (AutoBatch) trains on one GPU only: GPU 0 of the %d torch sees; give "
                           "detector.batch a size (e.g. %d) to train on all of them with DDP", batch,
                           len(resolved.gpus), 8 * len(resolved.gpus))
            return "0"
        raise ConfigError(f"detector.batch {batch} (AutoBatch) works on one GPU only, and detector.device is "
                          f"{resolved.ultralytics}; give detector.batch a size (a multiple of {len(resolved.gpus)}, "
                          f"e.g. {8 * len(resolved.gpus)}) or a single GPU (detector.device {resolved.gpus[0]})")
    return resolved.ultralytics


def train_args(cfg: Mapping, data_yaml: Path, run_dir: Path) -> dict:
    """ultralytics train() arguments from the detector config section."""
    args = {k: cfg[k] for k in TRAIN_KEYS}
    args.update(data=str(data_yaml.resolve()), project=str(run_dir.parent.resolve()), name=run_dir.name,
                exist_ok=True, device=training_device(cfg["device"], cfg["batch"]), hsv_h=0.0, hsv_s=0.0)
    extra = dict(cfg.get("extra") or {})
    clash = sorted(set(extra) & {"data", "project", "name", "resume", "model"})
    if clash:
        raise ConfigError(f"detector.extra must not set {clash}: vinbig sets them (use --work and --fold)")
    args.update(extra)
    return args


# what a resumed ultralytics run may change; everything else comes from the run's own args.yaml. The device is
# always the resuming session's (the config's detector.device on this machine), never the one the run started on
RESUME_KEYS = ("imgsz", "batch", "device", "workers", "cache", "patience", "close_mosaic", "plots")


@dataclass(frozen=True)
class DetectorRun:
    """A fold's ultralytics run: ``run_dir`` holds weights/best.pt, weights/last.pt, results.csv and plots."""

    run_dir: Path
    trained: bool  # False: a finished run given --resume, left as it was

    @property
    def summary(self) -> str:
        return summarize(self.run_dir)


def train_fold(work: Work | str | os.PathLike, fold: int, cfg: Mapping, *, resume: bool = False,
               overwrite: bool = False, resume_overrides: Mapping | None = None,
               callbacks: Mapping[str, Callable] | None = None, outside_boxes: str = "error",
               run: str = DEFAULT_RUN, folds_cfg: Mapping | None = None,
               tracking: Tracking | None = None) -> DetectorRun:
    """Train fold `fold` of the run `run` (WORK/detector/RUN/foldK) with the run's detector section `cfg`.

    `resume` continues ``weights/last.pt`` of an interrupted run with the run's own arguments, changed
    only by `resume_overrides` (keys of RESUME_KEYS) and the device, which is always this session's (``cfg``'s
    device on this machine: a run started on two GPUs resumes on one, or on the CPU); a finished run is left
    as it is. `callbacks` maps ultralytics callback events (``on_fit_epoch_end`` ...) to functions of the
    trainer (ultralytics hands them to the workers of a DDP run over several GPUs, where every rank runs them).
    `outside_boxes` (folds.outside_boxes: error, clip or drop) says what a box of labels.csv beyond its image
    becomes.
    `cfg`'s labels, exclude_readers and reader_weights choose the training labels, with the folds section
    `folds_cfg` (see detector._dataset.fold_dataset).
    A damaged last.pt (or .pt given as detector.model) is an error naming the file and the fix; one that asks for
    a global outside the restricted loader's allow-list (detector._weights) is refused, naming the file and the global.
    Each epoch is logged to the fold's progress.json and the backend of `tracking` (vinbig.tracking; none by
    default), whose package is checked before anything is done.
    """
    from detector._dataset import fold_dataset
    from detector._offline import OfflineDetectionTrainer, follow_log_level, own_threads  # first: ultralytics offline
    from detector._weights import load_detector
    from ultralytics import YOLO

    verbose = follow_log_level()
    work = Work.of(work)
    tracker = Tracker(work, "detector", run, fold, tracking, cfg, resume)
    tracker.check()
    run_dir = work.fold_dir("detector", fold, run)
    last = work.checkpoint("detector", fold, "last", run)
    again = train_command(work, "detector", fold, run)
    if resume:
        if not last.is_file():
            raise ConfigError(f"--resume: no {last} to resume from; train without --resume first")
        model = load_detector(last, f"the run cannot continue from it: start fold {fold} over with "
                                f"'{again} --overwrite'")
        ckpt = model.ckpt or {}
        # A finished run's last.pt has no optimizer and epoch -1; given one, ultralytics would start a new
        # training on its default dataset (coco8, a download) instead of refusing.
        if ckpt.get("epoch", -1) < 0 or ckpt.get("optimizer") is None:
            logger.info("fold %d: the run in %s is finished; nothing to resume (--overwrite starts over)",
                        fold, run_dir)
            return DetectorRun(run_dir, False)
        _add_callbacks(model, _epochs(tracker))
        _add_callbacks(model, callbacks)
        data_yaml = work.data_yaml(fold, run)
        logger.info("fold %d: resuming %s after epoch %d", fold, last, ckpt["epoch"] + 1)
        changes = dict(resume_overrides or {})
        ignored = sorted(set(changes) - set(RESUME_KEYS))
        if ignored:
            logger.warning("fold %d: a resumed run keeps its own %s (%s); --overwrite starts a new run with them",
                           fold, ", ".join(ignored), run_dir / "args.yaml")
        changes = {k: v for k, v in changes.items() if k in RESUME_KEYS}
        batch = changes.get("batch", (ckpt.get("train_args") or {}).get("batch", cfg["batch"]))
        changes["device"] = training_device(changes.get("device", cfg["device"]), batch)
        started = (ckpt.get("train_args") or {}).get("device")
        logger.info("fold %d: resuming on device %s%s", fold, changes["device"],
                    f" (the run started on {started})" if started not in (None, "", changes["device"]) else "")
        epochs = int((ckpt.get("train_args") or {}).get("epochs", cfg["epochs"]))
        tracker.start(ckpt["epoch"] + 1, epochs, backend="," not in str(changes["device"]))
        with own_threads(), tracker.session():
            model.train(resume=True, trainer=OfflineDetectionTrainer, verbose=verbose, **changes,
                        **({"data": str(data_yaml.resolve())} if data_yaml.is_file() else {}))
        return DetectorRun(run_dir, True)
    if last.is_file() and not overwrite:
        raise ConfigError(
            f"{run_dir} already holds a run ({last}); use --resume to continue it or --overwrite to start over")

    model_path = resolve_model(cfg["model"])
    if model_path.endswith(".pt"):
        model = load_detector(model_path, "give another .pt file or an architecture yaml (e.g. yolov8s.yaml)",
                              ConfigError, "detector.model: ")
        check_detection(getattr(model.model, "yaml", None), cfg["model"])
    else:
        model = YOLO(model_path)
    data_yaml = fold_dataset(work, fold, outside_boxes, run=run, run_cfg=cfg, folds_cfg=folds_cfg)
    _add_callbacks(model, _epochs(tracker))
    _add_callbacks(model, callbacks)
    args = {"verbose": verbose, **train_args(cfg, data_yaml, run_dir)}
    ddp = f" (DDP over {len(str(args['device']).split(','))} GPUs)" if "," in str(args["device"]) else ""
    logger.info("fold %d: training %s at %d px for %d epochs on device %s%s into %s", fold, cfg["model"],
                cfg["imgsz"], cfg["epochs"], args["device"], ddp, run_dir)
    tracker.start(0, cfg["epochs"], backend=not ddp)  # a DDP launcher: its rank-0 worker opens the backend
    # an earlier run's config goes once this run starts writing (a run that fails while ultralytics sets it up, or
    # whose tracking cannot start, leaves the earlier weights and their config as they were); under DDP this
    # process is only the launcher, whose own trainer never reaches that point: at once
    saved = config_path(run_dir, "detector")
    if ddp:
        saved.unlink(missing_ok=True)
    else:
        model.add_callback("on_pretrain_routine_end", lambda trainer: saved.unlink(missing_ok=True))
    with own_threads(), tracker.session():
        model.train(trainer=OfflineDetectionTrainer, **args)
    return DetectorRun(run_dir, True)


def _add_callbacks(model, callbacks: Mapping[str, Callable] | None) -> None:
    for event, fn in (callbacks or {}).items():
        model.add_callback(event, fn)


class _Epochs:
    """ultralytics callbacks that log a fold's epochs to its Tracker, in the process that trains (rank 0 of a
    DDP run: ultralytics hands its workers the callbacks)."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker
        self.trained = False  # an epoch was trained since the last log: final_eval's on_fit_epoch_end is no epoch

    @staticmethod
    def _main() -> bool:
        from ultralytics.utils import RANK

        return RANK in {-1, 0}

    def on_train_start(self, trainer) -> None:
        if self._main():
            self.tracker.start(trainer.start_epoch, trainer.epochs)

    def on_train_epoch_end(self, trainer) -> None:
        self.trained = True

    def on_fit_epoch_end(self, trainer) -> None:
        if not (self.trained and self._main()):
            return
        self.trained = False
        metrics = {**trainer.label_loss_items(trainer.tloss, prefix="train"), **(trainer.metrics or {}),
                   **(trainer.lr or {})}
        self.tracker.epoch(trainer.epoch + 1, trainer.epochs, metrics, trainer.fitness)

    def on_train_end(self, trainer) -> None:
        if self._main():
            self.tracker.end(True)


def _epochs(tracker: Tracker) -> dict[str, Callable]:
    """The ultralytics callbacks (event: function) of :class:`_Epochs`."""
    log = _Epochs(tracker)
    return {event: getattr(log, event) for event in ("on_train_start", "on_train_epoch_end", "on_fit_epoch_end",
                                                      "on_train_end")}


def summarize(run_dir: Path) -> str:
    """One line on a finished run: epochs and the best validation mAP50 of results.csv."""
    import pandas as pd

    results = run_dir / "results.csv"
    if not results.is_file():
        return f"no results.csv in {run_dir}"
    df = pd.read_csv(results)
    df.columns = [c.strip() for c in df.columns]
    col = "metrics/mAP50(B)"
    if col not in df or df.empty:
        return f"{len(df)} epoch(s) in {results}"
    best = df.loc[df[col].idxmax()]
    return f"{len(df)} epoch(s); best val mAP50 {best[col]:.4f} at epoch {int(best['epoch'])}; weights in {run_dir / 'weights'}"
