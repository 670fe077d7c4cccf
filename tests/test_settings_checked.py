"""Every setting is checked before anything is touched: each value against the type and range its line of
configs/default.yaml declares, and the keys that name runs against the runs there are, wherever the value comes
from (an option, --set, --config, a run of the runs section, WORK/fusion.yaml, an export's config.yaml). A bad
value is one line naming where it came from, the key, the value and the rule, exit 2, and nothing on disk changes."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import gradient, make_dicom, own_work
from vinbig.app.cli import main
from vinbig.artifacts import DETECTOR_PRED_COLUMNS, Work, config_path, read_folds, read_labels
from vinbig.config import load_config, save_config, settings


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under `root` (links not followed): its kind and, for a file, its bytes' digest."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink() or path.is_dir():
                out[key] = ("link" if path.is_symlink() else "dir",)
            else:
                out[key] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return out


@pytest.fixture
def ctx(synth_work, tmp_path) -> dict[str, str]:
    """A work folder with a finished fold 0 of the detector and of the classifier (each with the config training
    saved beside it), out-of-fold predictions of both stages, an export, a DICOM to predict, and a folder of PNGs
    `vinbig images` wrote earlier: the paths, by name, for the commands of the table."""
    work = Work(own_work(synth_work, tmp_path))
    cfg = load_config()
    for stage in ("detector", "classifier"):
        for which in ("best", "last"):
            path = work.checkpoint(stage, 0, which)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"trained weights")
        save_config(cfg, config_path(work.fold_dir(stage, 0), stage), [stage, "runs"])
    folds = read_folds(work).set_index("image_id")["fold"]
    labels = read_labels(work)
    boxes = labels[labels["class_id"] != 14]
    preds = pd.DataFrame({"image_id": boxes["image_id"], "run": "default",
                          "fold": folds.reindex(boxes["image_id"]).to_numpy(), "tta": "none",
                          "class_id": boxes["class_id"].astype(np.int64), "score": 0.9,
                          **{c: boxes[c].astype(float) for c in ("x_min", "y_min", "x_max", "y_max")}})
    work.preds.mkdir()
    preds.loc[:, list(DETECTOR_PRED_COLUMNS)].to_parquet(work.detector_preds("oof"), index=False)
    pd.DataFrame({"image_id": folds.index, "run": "default", "fold": folds.to_numpy(),
                  "p_abnormal": np.linspace(0.01, 0.99, len(folds))}).to_csv(work.classifier_preds("oof"), index=False)
    export = tmp_path / "export"
    export.mkdir()
    shutil.copy(work.folds, export / "folds.csv")
    save_config(cfg, export / "config.yaml")
    (tmp_path / "in").mkdir()
    dicom = make_dicom(tmp_path / "in" / "a.dcm", gradient())
    src, png = tmp_path / "src", tmp_path / "png"
    src.mkdir()
    shutil.copy(dicom, src / "a.dcm")
    png.mkdir()
    (png / "a.png").write_bytes(b"a good PNG of an earlier run")
    save_config({"images": cfg["images"]}, config_path(png, "images"))
    return {"tmp": str(tmp_path), "work": str(work.root), "export": str(export), "dicom": str(dicom),
            "src": str(src), "png": str(png), "config": str(tmp_path / "mine.yaml"), "image": str(folds.index[0]),
            "fold": str(folds.iloc[0])}


PREDICT_DETECTOR = ["predict-detector", "--work", "{work}", "--split", "oof"]
TRAIN_DETECTOR = ["train-detector", "--work", "{work}", "--fold", "0", "--overwrite"]
TINY_RUN = ["--model", "yolov8n.yaml", "--epochs", "1", "--device", "cpu", "--workers", "0"]  # were it to train
PREDICT = ["predict", "--model", "{export}", "{dicom}", "--out", "{tmp}/out"]
FUSE = ["fuse", "--work", "{work}", "--split", "oof"]
TUNE = ["tune", "--work", "{work}"]
NAN_ROW = ("{work}/preds/classifier_oof.csv", "nan")  # the first row's p_abnormal made NaN

# (case, command, files written first {path: text}, the words of the one error line)
CASES = [
    # out-of-range detector values, in the detector's commands and in vinbig predict
    ("conf=2.0 predict-detector", [*PREDICT_DETECTOR, "--conf", "2.0"], {},
     ["--conf: detector.conf is 2.0", "from 0 to 1", "0..1"]),
    ("iou=-1 predict-detector", [*PREDICT_DETECTOR, "--set", "detector.iou=-1"], {},
     ["--set detector.iou=-1: detector.iou is -1", "0..1"]),
    ("max_det=0 predict-detector", [*PREDICT_DETECTOR, "--max-det", "0"], {}, ["detector.max_det is 0", "1.."]),
    ("conf=2.0 vinbig predict", [*PREDICT, "--set", "detector.conf=2.0"], {}, ["detector.conf is 2.0", "0..1"]),
    ("iou=-1 vinbig predict", [*PREDICT, "--set", "detector.iou=-1"], {}, ["detector.iou is -1", "0..1"]),
    ("max_det=0 vinbig predict", [*PREDICT, "--set", "detector.max_det=0"], {}, ["detector.max_det is 0", "1.."]),
    ("epochs=0 train-detector --overwrite", [*TRAIN_DETECTOR, "--epochs", "0"], {},
     ["--epochs: detector.epochs is 0", "at least 1"]),
    ("epochs=-1 train-detector --overwrite", [*TRAIN_DETECTOR, "--set", "detector.epochs=-1"], {},
     ["detector.epochs is -1", "at least 1"]),
    # sizes of 0: no 1x1 PNGs over the good ones, no silent 32 px
    ("images.size=0", ["images", "--src", "{src}", "--out", "{png}", "--size", "0"], {},
     ["images.size is 0", "at least 32"]),
    ("detector.imgsz=0 train-detector", [*TRAIN_DETECTOR, *TINY_RUN, "--imgsz", "0"], {},
     ["detector.imgsz is 0", "at least 32"]),
    ("detector.imgsz=0 vinbig predict", [*PREDICT, "--set", "detector.imgsz=0"], {}, ["detector.imgsz is 0", "32.."]),
    ("per-run key out of range", [*PREDICT_DETECTOR, "--set", "runs.detector={a: {conf: 2.0}}"], {},
     ["runs.detector.a: detector.conf is 2.0", "0..1"]),
    ("a list's item", [*TUNE, "--set", "fusion.tune_low=[0.1, 2]"], {}, ["fusion.tune_low[1] is 2", "0..1"]),
    ("a detector key given through detector.extra", [*TRAIN_DETECTOR, *TINY_RUN[:2], "--set",
                                                     "detector.extra={epochs: 0}"], {},
     ["detector.extra sets epochs, a key of the detector section itself", "set detector.epochs instead"]),
    ("images.percentiles upside down", ["images", "--src", "{src}", "--out", "{png}", "--percentiles", "99.5,0.5"],
     {}, ["images.percentiles is [99.5, 0.5]", "low first"]),
    ("null where none is allowed", [*PREDICT_DETECTOR, "--set", "detector.conf="], {},
     ["detector.conf expects float, got None"]),
    # a fixed set of values, checked the same everywhere
    ("tta misspelt predict-classifier", ["predict-classifier", "--work", "{work}", "--split", "oof", "--set",
                                         "classifier.tta=hfilp"], {},
     ["classifier.tta 'hfilp' is not one of none, hflip", "did you mean hflip"]),
    ("tta misspelt vinbig predict", [*PREDICT, "--set", "classifier.tta=hfilp"], {},
     ["classifier.tta 'hfilp' is not one of none, hflip"]),
    ("tta misspelt in an export's config.yaml", PREDICT, {"{export}/config.yaml": "classifier:\n  tta: hfilp\n"},
     ["{export}/config.yaml: classifier.tta 'hfilp' is not one of none, hflip"]),
    ("labels misspelt in a run", ["runs", "--set", "runs.detector={r: {labels: per-reader}}"], {},
     ["runs.detector.r: detector.labels 'per-reader' is not one of consolidated, per_reader"]),
    # names must name runs
    ("run_weights {defualt: 0} fuse", [*FUSE, "--set", "fusion.run_weights={defualt: 0}"], {},
     ["fusion.run_weights names defualt", "its detector runs are default", "did you mean default"]),
    ("run_weights {defualt: 0} in fusion.yaml", FUSE, {"{work}/fusion.yaml": "fusion:\n  run_weights: {defualt: 0}\n"},
     ["{work}/fusion.yaml: fusion.run_weights names defualt"]),
    ("run_weights {defualt: 0} report", ["report", "--work", "{work}", "--set", "fusion.run_weights={defualt: 0}"],
     {}, ["fusion.run_weights names defualt"]),
    ("run_weights {defualt: 0} vinbig predict", [*PREDICT, "--set", "fusion.run_weights={defualt: 0}"], {},
     ["fusion.run_weights names defualt"]),
    ("classifier_weights naming no run tune", [*TUNE, "--set", "fusion.classifier_weights={b3: 1}"], {},
     ["fusion.classifier_weights names b3", "its classifier runs are default"]),
    ("classifier_weights naming no run export", ["export", "--work", "{work}", "--out", "{tmp}/exported", "--set",
                                                 "fusion.classifier_weights={b3: 1}"], {},
     ["fusion.classifier_weights names b3"]),
    ("a weight that is not finite", [*FUSE, "--set", "fusion.run_weights={default: .nan}"], {},
     ["fusion.run_weights.default is nan", "finite"]),
    # run names YAML reads as numbers or booleans
    ("run named 1", ["runs", "--set", "runs.detector={1: {imgsz: 640}}"], {},
     ["runs.detector has a name YAML reads as a number (int)", "quote it", "'1'"]),
    ("run named off", ["runs", "--config", "{config}"], {"{config}": "runs:\n  detector:\n    off: {imgsz: 640}\n"},
     ["{config}: runs.detector has a name YAML reads as the boolean false", "'off'"]),
    ("run named yes", ["predict-classifier", "--work", "{work}", "--split", "oof", "--set",
                       "runs.classifier={yes: {tta: hflip}}"], {},
     ["runs.classifier has a name YAML reads as the boolean true", "'yes'"]),
    ("weights keyed by a number", [*FUSE, "--set", "fusion.run_weights={1: 0.5}"], {},
     ["fusion.run_weights has a name YAML reads as a number (int)"]),
    # tune refuses what fuse refuses
    ("tune with all classifier weights 0", [*TUNE, "--set", "fusion.classifier_weights={default: 0}"], {},
     ["fusion.classifier_weights gives every run (default) weight 0"]),
    # a type error names the file that holds it
    ("type error in --config", [*PREDICT_DETECTOR, "--config", "{config}"], {"{config}": "detector:\n  conf: high\n"},
     ["{config}: detector.conf expects float, got 'high'", "default.yaml"]),
    ("type error in fusion.yaml", FUSE, {"{work}/fusion.yaml": "fusion:\n  low: abc\n"},
     ["{work}/fusion.yaml: fusion.low expects float, got 'abc'"]),
    ("type error in an export's config.yaml", PREDICT, {"{export}/config.yaml": "detector:\n  imgsz: big\n"},
     ["{export}/config.yaml: detector.imgsz expects int, got 'big'"]),
    # a NaN P(abnormal)
    ("NaN in classifier_oof.csv fuse", FUSE, dict([NAN_ROW]),
     ["{work}/preds/classifier_oof.csv", "line 2 (image {image}, run default, fold {fold}): p_abnormal nan",
      "run 'vinbig predict-classifier --work {work} --split oof' again"]),
    ("NaN in classifier_oof.csv tune", TUNE, dict([NAN_ROW]), ["{work}/preds/classifier_oof.csv", "line 2"]),
]


def _fill(text: str, ctx: dict[str, str]) -> str:
    """`text` with each ``{name}`` of `ctx` replaced (YAML braces stay)."""
    for name, value in ctx.items():
        text = text.replace(f"{{{name}}}", value)
    return text


@pytest.mark.parametrize("case, argv, files, words", CASES, ids=[c[0] for c in CASES])
def test_a_bad_setting_stops_the_command_before_it_touches_anything(case, argv, files, words, ctx, capsys):
    for path, text in files.items():
        path = Path(_fill(path, ctx))
        if text == "nan":  # the first data row's p_abnormal
            lines = path.read_text().splitlines()
            lines[1] = ",".join([*lines[1].split(",")[:-1], "nan"])
            text = "\n".join(lines) + "\n"
        path.write_text(text)
    before = snapshot(Path(ctx["tmp"]))
    capsys.readouterr()
    assert main([_fill(a, ctx) for a in argv] + ["-q"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    for w in words:
        assert _fill(w, ctx) in err[0], err[0]
    assert snapshot(Path(ctx["tmp"])) == before
    # what a user relies on: the finished fold keeps its weights and the config they were trained with
    work = Work(ctx["work"])
    assert config_path(work.fold_dir("detector", 0), "detector").is_file()
    assert work.checkpoint("detector", 0, "last").read_bytes() == b"trained weights"


# --------------------------------------------------------------------------- the declarations


@pytest.mark.parametrize("s", settings(), ids=lambda s: s.name)
def test_every_numeric_key_declares_its_range_and_its_default_lies_in_it(s):
    numeric = re.search(r"\b(int|float)\b", s.type) and "|" not in s.type.split("[")[0]
    if numeric:
        assert s.range, f"{s.name}: '# ({s.type}) ...' declares no range; write e.g. '# ({s.type}, 0..1) ...'"
    assert s.check(s.default, "configs/default.yaml") == s.default


def test_the_declared_choices_are_the_ones_the_stages_know():
    from classifier._data import BALANCE
    from classifier._predict import TTA
    from classifier._train import SCHEDULES
    from detector._dataset import LABEL_MODES
    from folds._images import PNG_STRATEGIES
    from fusion._fuse import ENGINES
    from vinbig.artifacts import OUTSIDE_BOXES
    from vinbig.boxes import WBF_CONF_TYPES
    from vinbig.dicom import VOI_MODES

    known = {"classifier.balance": BALANCE, "classifier.tta": TTA, "classifier.sched": SCHEDULES,
             "detector.labels": LABEL_MODES, "images.png_strategy": tuple(PNG_STRATEGIES), "fusion.engine": ENGINES,
             "folds.outside_boxes": OUTSIDE_BOXES, "folds.conf_type": WBF_CONF_TYPES,
             "fusion.conf_type": WBF_CONF_TYPES, "fusion.tune_conf_type": WBF_CONF_TYPES, "images.voi": VOI_MODES}
    declared = {s.name: tuple(s.range.split("|")) for s in settings()}
    for name, values in known.items():
        assert sorted(declared[name]) == sorted(values), name


@pytest.mark.parametrize("override, value", [
    ("classifier.weights=null", None),  # nullable: null is allowed
    ("detector.device=[0, 1]", [0, 1]),
    ("detector.batch=-1", -1),  # an alternative of the range -1|1..
    ("fusion.high=1.01", 1.01),
    ("runs.detector={a: , b: {imgsz: 640}}", {"a": {}, "b": {"imgsz": 640}}),  # a run written `a:` changes nothing
    ("runs.detector={'1': {imgsz: 640}}", {"1": {"imgsz": 640}}),  # a quoted name is a name
])
def test_values_in_range_and_allowed_nulls_pass(override, value):
    section, key = override.split("=")[0].split(".")
    assert load_config(overrides=[override])[section][key] == value
