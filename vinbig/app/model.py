"""The model of `vinbig predict`: an export (what ``vinbig export`` writes) or a work folder with trained folds.

:func:`open_model` checks it (folds.csv, every run's detector of every fold, the classifiers: all of a run's folds
or none) and names what is missing with the command that makes it; :func:`load_models` loads every model through
its stage's face (``detector.load_models``, ``classifier.load_models``). :func:`config_files` are the model's own
config files, read between --config and --set.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from vinbig.artifacts import DEFAULT_RUN, Work, config_path, images_command, train_command
from vinbig.app.kaggle import EXPORT_CONFIG  # written last by 'vinbig export': it marks a complete export
from vinbig.errors import UserError
from vinbig.runs import STAGES

logger = logging.getLogger("vinbig")

EXPORT_COMMAND = "vinbig export --work WORK --out {root}"


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


def config_files(root: Path) -> list[Path]:
    """The model's config files, read between --config and --set: an export's config.yaml, or a work folder's saved
    configs (those of any run: each run's own is laid over its section by :func:`_sections`), then fusion.yaml when
    it exists."""
    root = Path(root)
    if model_kind(root) == "export":
        files = [root / EXPORT_CONFIG]
    else:
        images = config_path(Work(root).images("train"), "images")
        if not images.is_file():
            logger.warning("%s not found (the settings the training PNGs were converted with): new DICOMs are "
                           "converted with the config's images settings, which may differ from training's; finish "
                           "'%s' or give the --set images.... of training", images,
                           images_command(Work(root).images("train")))
        files = [images, *(_saved(root, stage) for stage in STAGES)]
    files.append(Work(root).fusion_config)
    return [f for f in files if f is not None and f.is_file()]


def _device(args: argparse.Namespace, cfg: dict) -> dict:
    """The devices of the detector and classifier sections: --device, else what --set gave, else null (the GPU of
    this session if any, else the CPU: the model's folder may hold training's device)."""
    from vinbig.options import explicit

    given = explicit(args)
    out = {s: dict(v) for s, v in cfg.items()}
    for section in STAGES:
        if args.device is not None:
            out[section]["device"] = args.device
        elif f"{section}.device" not in given:
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
    from vinbig.options import explicit
    from vinbig.runs import check_weights, run_config, run_names, weight_of

    key = "run_weights" if stage == "detector" else "classifier_weights"
    names, weights = run_names(cfg, stage), cfg["fusion"][key]
    check_weights(weights, names, key)
    out = {}
    for run in names:
        if weight_of(weights, run) == 0:
            logger.info("the %s run %s is left out: fusion.%s gives it weight 0", stage, run, key)
            continue
        # in a work folder, the config its training saved beside the run's weights, under what the command line
        # gave (cfg is resolved once, its devices already this session's)
        saved = _saved(root, stage, run) if kind == "work" and args is not None else None
        keep = (explicit(args) | {f"{s}.device" for s in STAGES}) if saved is not None else ()
        out[run] = run_config(cfg, stage, run, saved=saved, keep=keep)
    return out


def open_model(root: Path, cfg: dict, args: argparse.Namespace | None = None) -> Model:
    """Check --model: folds.csv, every run's detector for every fold, the classifiers (all of a run's folds or none).
    A missing file is one UserError naming it and the command that makes it."""
    from vinbig.app.kaggle import model_paths, work_folds
    from vinbig.artifacts import exported, has_weights

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
        tensors, arch = exported(path)
        if kind == "work":
            return path if has_weights(path) else None
        if tensors.is_file() and arch.is_file():
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
        return next((p for p in exported(path) if not p.is_file()), path)

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



@dataclass
class Models:
    """Every model of a Model in memory: the detectors (``detector.DetectorModels``) and the classifiers
    (``classifier.ClassifierModels``; None: the gate is off)."""

    detectors: object
    classifiers: object | None

    @property
    def batch(self) -> int:
        return self.detectors.batch


def load_models(model: Model, tta: Sequence[str]) -> Models:
    """Load every model of `model` with its stage's one loader (all readable before the first image is read): an
    export's from its safetensors and yaml files only (no pickle is read), a work folder's best.pt through the
    restricted loader."""
    import classifier
    import detector

    work, pickles = Work(model.root), model.kind == "work"
    detectors = detector.load_models(work, model.detectors, model.folds, tta=tta, pickles=pickles,
                                     device=model.cfg["detector"]["device"], paths=model.detector_paths)
    classifiers = None
    if model.classifiers:
        classifiers = classifier.load_models(work, model.classifiers, model.folds, pickles=pickles,
                                             device=model.cfg["classifier"]["device"], paths=model.classifier_paths)
    return Models(detectors, classifiers)
