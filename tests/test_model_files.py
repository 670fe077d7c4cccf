"""Loading a model never runs code, and the folders vinbig cleans up hold only what it wrote.

A checkpoint is a pickle: a payload in it (a function the file names, called while it is unpickled) must be refused,
in one line naming the file and the global, on every path that loads one (``vinbig predict``, ``predict-detector``,
``train-detector --resume``, ``detector.model: x.pt``, ``vinbig export``, ultralytics' own loader), and no marker
file may appear. An export holds no pickle (safetensors and yaml), predicts as the work folder's best.pt does, and
every architecture a run can use loads. ``vinbig export`` and ``vinbig predict`` claim their output folder with a
manifest (vinbig.manifest) and remove only files it lists.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import classifier_checkpoint, detector_checkpoint, own_work
from tiny import set_args
from vinbig.app.cli import main
from vinbig.artifacts import Work
from vinbig.manifest import Manifest

FOLDS = 3  # the session's synthetic work folder's
CONFIG = ["images.size=128", "detector.imgsz=64", "detector.conf=0.000001", "detector.predict_batch=4",
          "classifier.imgsz=64", "classifier.predict_batch=4", "classifier.workers=0"]
SYSTEM = f"{os.system.__module__}.system"  # the global a payload calling os.system asks for (posix.system)


class Payload:
    """Unpickled, runs ``touch MARKER``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class LayerCall:
    """Unpickled, calls ultralytics' DetectionModel with a config whose activation ultralytics would ``eval``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        from ultralytics.nn.tasks import DetectionModel

        cfg = {"activation": f"__import__('os').system('touch {self.marker}')", "nc": 1,
               "backbone": [[-1, 1, "Conv", [16, 3, 2]]], "head": [[[0], 1, "Detect", ["nc"]]]}
        return DetectionModel, (cfg,)


def payload_checkpoint(path: Path, marker: Path, how: str = "hidden") -> Path:
    """A checkpoint at `path` that touches `marker` when unpickled: ``hidden``, one extra key of a real best.pt;
    ``bare``, nothing but the payload; ``layer``, a real best.pt with a key that calls an ultralytics model class."""
    if how == "bare":
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(Payload(marker), path)
        return path
    detector_checkpoint(path, seed=0)
    ckpt = torch.load(path, weights_only=False)  # the test's own file
    ckpt["extra"] = Payload(marker) if how == "hidden" else LayerCall(marker)
    torch.save(ckpt, path)
    return path


def ultralytics_checkpoint(path: Path, arch: str) -> Path:
    """A checkpoint as ultralytics' trainer saves last.pt: the model and its EMA in half precision, the optimizer's
    state, the training arguments and metrics, of a tiny untrained `arch` (built from its yaml)."""
    import detector._offline  # noqa: F401
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import DEFAULT_CFG_DICT

    torch.manual_seed(0)
    model = DetectionModel(arch, nc=14, verbose=False)
    with torch.no_grad():
        for head in (*model.model[-1].cv2, *model.model[-1].cv3):
            head[-1].bias.normal_(0, 1)  # boxes above conf from an untrained model
    model.names = {i: f"class {i}" for i in range(14)}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sum(p.float().pow(2).sum() for p in model.parameters()).backward()
    optimizer.step()  # momentum buffers in the optimizer's state, as after an epoch
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"date": "2025-01-01T00:00:00", "version": "8.4", "epoch": 0, "best_fitness": 0.1, "model": None,
                "ema": model.half(), "updates": 1, "optimizer": optimizer.state_dict(), "scaler": None,
                "train_args": {**DEFAULT_CFG_DICT, "imgsz": 64}, "train_metrics": {"metrics/mAP50(B)": 0.0},
                "train_results": {"epoch": [1]}}, path)
    return path


def one_error(caplog) -> str:
    [error] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "\n" not in error
    return error


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def models(synth_work, tmp_path_factory) -> tuple[Path, Path]:
    """(a work folder over the session's synthetic images with every fold's tiny best.pt of both stages, its export)."""
    root = tmp_path_factory.mktemp("model_files")
    work = own_work(synth_work, root)
    w = Work(work)
    for k in range(FOLDS):
        detector_checkpoint(w.checkpoint("detector", k), seed=k, perturb=True, biases=True)
        classifier_checkpoint(w.checkpoint("classifier", k), seed=k, std=50)
    assert main(["export", "--work", str(work), "--out", str(root / "export"), "-q", *set_args(CONFIG)]) == 0
    return work, root / "export"


def work_from(export: Path, synth_work, root: Path) -> Path:
    """What the inference notebook does: the export copied into an empty work folder, with the test images."""
    from vinbig.app.kaggle import copy_work

    work = root / "from_export"
    copy_work(export, work)
    (work / "images").mkdir()
    for split in ("train", "test"):
        (work / "images" / split).symlink_to(synth_work.work / "images" / split, target_is_directory=True)
    return work


def dicoms(synth_work, n: int = 2) -> list[Path]:
    return sorted((synth_work.data / "test").glob("*.dicom"))[:n]


# --------------------------------------------------------------------------- payloads are refused


@pytest.mark.parametrize("how", ["hidden", "bare", "layer"])
def test_a_payload_checkpoint_is_refused_on_every_path_and_never_runs(work_copy, tmp_path, caplog, how):
    """predict-detector, vinbig predict on a work folder, train-detector --resume, detector.model: x.pt and vinbig
    export: each refuses the file in one line naming it and the global it asks for; no marker appears."""
    work, marker = work_copy.work, tmp_path / "MARKER"
    w = Work(work)
    glob = SYSTEM if how != "layer" else "ultralytics.nn.tasks.DetectionModel"
    for k in range(FOLDS):
        payload_checkpoint(w.checkpoint("detector", k), marker, how)
    given = payload_checkpoint(tmp_path / "start.pt", marker, how)
    last = payload_checkpoint(w.checkpoint("detector", 0, "last"), marker, how)
    dicom = dicoms(work_copy, 1)[0]
    commands = [
        (["predict-detector", "--work", str(work), "--split", "test"], w.checkpoint("detector", 0)),
        (["predict", "--model", str(work), str(dicom), "--out", str(tmp_path / "pred")], w.checkpoint("detector", 0)),
        (["train-detector", "--work", str(work), "--fold", "0", "--resume"], last),
        (["train-detector", "--work", str(work), "--fold", "1", "--set", f"detector.model={given}"], given),
        (["export", "--work", str(work), "--out", str(tmp_path / "export")], w.checkpoint("detector", 0)),
    ]
    for args, path in commands:
        caplog.clear()
        assert main([*args, "-q"]) == 2, args
        error = one_error(caplog)
        assert str(path) in error and f"'{glob}'" in error and "not loaded" in error, (args, error)
        assert not marker.exists(), args
    assert not (tmp_path / "export" / "config.yaml").exists()


def test_ultralytics_own_loader_is_restricted_in_a_vinbig_process(tmp_path):
    """What ultralytics loads itself (YOLO(path), a resumed trainer, strip_optimizer) goes through the restricted
    loader once vinbig's detector is imported."""
    import detector  # noqa: F401
    import detector._offline  # noqa: F401
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import strip_optimizer

    marker = tmp_path / "MARKER"
    path = payload_checkpoint(tmp_path / "best.pt", marker)
    with pytest.raises(Exception, match=SYSTEM.replace(".", r"\.")):
        YOLO(str(path))
    before = path.read_bytes()
    strip_optimizer(path)  # ultralytics skips a file it cannot load, with a warning
    assert not marker.exists() and path.read_bytes() == before


def test_a_label_cache_is_read_without_unpickling_anything_but_arrays(tmp_path):
    """ultralytics' label caches (detector/RUN/data/foldK/labels/*.cache) are pickles too: one that names a function
    is not loaded (ultralytics then scans the labels again), one ultralytics wrote loads as it was."""
    import pickle

    import detector  # noqa: F401
    import detector._offline  # noqa: F401
    import ultralytics.data.dataset as dataset
    from ultralytics.data.utils import save_dataset_cache_file

    marker = tmp_path / "MARKER"
    good = {"labels": [{"im_file": "a.png", "shape": (64, 80), "cls": np.zeros((1, 1), np.float32),
                        "bboxes": np.ones((1, 4), np.float32), "normalized": True, "bbox_format": "xywh"}],
            "hash": "h", "results": (1, 0, 0, 0, 1), "msgs": []}
    save_dataset_cache_file("", tmp_path / "good.cache", good, "1.0.3")
    loaded = dataset.load_dataset_cache_file(tmp_path / "good.cache")
    assert loaded["hash"] == "h" and np.array_equal(loaded["labels"][0]["bboxes"], good["labels"][0]["bboxes"])
    save_dataset_cache_file("", tmp_path / "train.cache", {**good, "hash": Payload(marker)}, "1.0.3")
    with pytest.raises(pickle.UnpicklingError, match=SYSTEM.replace(".", r"\.")):
        dataset.load_dataset_cache_file(tmp_path / "train.cache")
    assert not marker.exists()


def test_a_payload_beside_an_exports_safetensors_is_never_read(models, synth_work, tmp_path):
    """An export is read from its safetensors and yaml files only: a best.pt put beside them is not unpickled."""
    _, export = models
    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    marker = tmp_path / "MARKER"
    payload_checkpoint(copy / "detector/default/fold0/weights/best.pt", marker, "bare")
    payload_checkpoint(copy / "classifier/default/fold0/best.pt", marker, "bare")
    assert main(["predict", "--model", str(copy), *map(str, dicoms(synth_work, 1)), "--out", str(tmp_path / "out"),
                 "-q"]) == 0
    assert not marker.exists()


def test_an_export_made_before_safetensors_names_the_command_that_exports_again(models, synth_work, tmp_path, caplog):
    work, _ = models
    old = tmp_path / "old"
    shutil.copytree(work, old, symlinks=True, ignore=shutil.ignore_patterns("images", "labels.csv", "readers.csv"))
    (old / "config.yaml").write_text("images:\n  size: 128\n")  # what the export of an earlier vinbig held
    marker = tmp_path / "MARKER"
    payload_checkpoint(old / "detector/default/fold1/weights/best.pt", marker)
    assert main(["predict", "--model", str(old), *map(str, dicoms(synth_work, 1)), "--out", str(tmp_path / "out"),
                 "-q"]) == 2
    error = one_error(caplog)
    assert "export made before" in error and "'vinbig export --work WORK --out DIR'" in error
    assert not marker.exists() and not (tmp_path / "out").exists()
    caplog.clear()  # and exporting into it again is refused: nothing there can be told to be vinbig's
    before = {p: p.read_bytes() for p in old.rglob("*") if p.is_file()}
    assert main(["export", "--work", str(work), "--out", str(old), "-q"]) == 2
    error = one_error(caplog)
    assert f"--out {old} is an export made before" in error and "new or empty folder" in error
    assert {p: p.read_bytes() for p in old.rglob("*") if p.is_file()} == before


# --------------------------------------------------------------------------- what loads, and predicts the same


@pytest.mark.parametrize("arch", ["yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml"])
def test_every_architecture_loads_restricted_and_its_export_predicts_the_same(tmp_path, arch):
    from detector import export_weights, load_detector
    from detector._weights import load_exported

    pt = ultralytics_checkpoint(tmp_path / "weights" / "last.pt", arch)
    model = load_detector(pt, "fix")
    export_weights(pt, tmp_path / "export" / "best.pt", "fix")
    assert not (tmp_path / "export" / "best.pt").exists()
    again = load_exported(tmp_path / "export" / "best.pt", "fix")
    image = (np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8)
    a, b = (m.predict([image], imgsz=64, conf=1e-6, verbose=False, device="cpu")[0] for m in (model, again))
    assert len(a.boxes) > 0 and torch.equal(a.boxes.data, b.boxes.data)
    assert again.names == model.names


def test_predictions_of_an_export_equal_those_of_the_work_folders_best_pt(models, synth_work, tmp_path):
    """predict-detector and predict-classifier on a work folder made from the export (safetensors, no best.pt) give
    the very rows of the work folder's best.pt files."""
    work, export = models
    fresh = work_from(export, synth_work, tmp_path)
    assert not list(fresh.rglob("*.pt"))
    sets = set_args(CONFIG)
    for w in (work, fresh):
        assert main(["predict-detector", "--work", str(w), "--split", "test", "--tta", "hflip", "-q", *sets]) == 0
        assert main(["predict-classifier", "--work", str(w), "--split", "test", "-q", *sets]) == 0
    ours = pd.read_parquet(Work(fresh).detector_preds("test"))
    assert len(ours) > 0
    pd.testing.assert_frame_equal(ours, pd.read_parquet(Work(work).detector_preds("test")))
    pd.testing.assert_frame_equal(pd.read_csv(Work(fresh).classifier_preds("test")),
                                  pd.read_csv(Work(work).classifier_preds("test")))


def test_a_crafted_architecture_yaml_in_an_export_is_refused(models, synth_work, tmp_path, caplog):
    """The yaml of an export is data too: an activation ultralytics would eval, or a layer that is not one, is
    refused before any model is built."""
    import yaml

    _, export = models
    marker = tmp_path / "MARKER"
    for key, value in (("activation", f"__import__('os').system('touch {marker}')"), ("layer", "torch_load")):
        copy = tmp_path / f"export_{key}"
        shutil.copytree(export, copy)
        arch_file = copy / "detector/default/fold0/weights/best.yaml"
        doc = yaml.safe_load(arch_file.read_text())
        if key == "activation":
            doc["architecture"]["activation"] = value
        else:
            doc["architecture"]["backbone"][0][2] = value
        arch_file.write_text(yaml.safe_dump(doc))
        caplog.clear()
        assert main(["predict", "--model", str(copy), *map(str, dicoms(synth_work, 1)), "--out",
                     str(tmp_path / f"out_{key}"), "-q"]) == 2
        error = one_error(caplog)
        assert str(arch_file) in error and value in error, error
    assert not marker.exists()


def test_an_export_made_again_is_the_same_bytes(models, tmp_path):
    """An export is reproducible: the same work folder exported twice gives the same files, byte for byte (a
    safetensors header with two metadata keys came out in any order)."""
    work, export = models
    again = tmp_path / "again"
    assert main(["export", "--work", str(work), "--out", str(again), "-q", *set_args(CONFIG)]) == 0
    files = sorted(p.relative_to(export) for p in export.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    differ = [f for f in files if (export / f).read_bytes() != (again / f).read_bytes()]
    assert differ == []


def test_a_local_architecture_yaml_is_checked_before_ultralytics_builds_it(tmp_path):
    """detector.model: my.yaml is built by ultralytics, which evals its activation: a crafted one is refused, a copy
    of an ultralytics architecture passes."""
    import yaml
    from ultralytics.nn.tasks import yaml_model_load

    from detector._train import resolve_model
    from vinbig.errors import VinbigError

    arch = {k: v for k, v in yaml_model_load("yolov8n.yaml").items() if k in ("nc", "scales", "backbone", "head")}
    good = tmp_path / "mine.yaml"
    good.write_text(yaml.safe_dump(arch))
    assert resolve_model(str(good)) == str(good.resolve())

    marker = tmp_path / "MARKER"
    bad = tmp_path / "crafted.yaml"
    bad.write_text(yaml.safe_dump({**arch, "activation": f"__import__('os').system('touch {marker}')"}))
    with pytest.raises(VinbigError, match="the activation") as e:
        resolve_model(str(bad))
    assert str(bad) in str(e.value) and "give an ultralytics architecture yaml" in str(e.value)
    assert not marker.exists()


# --------------------------------------------------------------------------- export claims its --out


def test_export_into_another_work_folder_is_refused_and_changes_nothing(models, tmp_path, caplog):
    work, _ = models
    other = tmp_path / "b"
    shutil.copytree(work, other, symlinks=True)
    (other / "fusion.yaml").write_text("fusion:\n  low: 0.2\n")
    payload = Work(other)
    detector_checkpoint(payload.checkpoint("detector", 0, "best", "other"), seed=5)  # a run the export lacks
    before = {p: p.read_bytes() for p in other.rglob("*") if p.is_file()}
    assert main(["export", "--work", str(work), "--out", str(other), "-q"]) == 2
    error = one_error(caplog)
    assert error.startswith(f"--out of 'vinbig export' {other}:") and "give an empty or new folder" in error
    assert {p: p.read_bytes() for p in other.rglob("*") if p.is_file()} == before


def test_a_second_export_removes_only_what_the_first_one_wrote(models, tmp_path):
    work, _ = models
    out = tmp_path / "export"
    assert main(["export", "--work", str(work), "--out", str(out), "-q"]) == 0
    mine = out / "detector/default/fold9/weights/best.safetensors"  # the user's, named like a model: not listed
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"user")
    manifest = Manifest.read(out)
    assert manifest.kind == "export" and "detector/default/fold0/weights/best.safetensors" in manifest.files
    assert main(["export", "--work", str(work), "--out", str(out), "--no-classifier", "-q"]) == 0
    assert not list(out.glob("classifier/*/*/best.*")) and mine.read_bytes() == b"user"


# --------------------------------------------------------------------------- vinbig predict's --out


def predict(export: Path, inputs, out: Path, *extra: str) -> int:
    return main(["predict", "--model", str(export), *map(str, inputs), "--out", str(out), "-q", *extra])


def test_predict_removes_only_the_files_it_wrote_and_refuses_a_folder_it_did_not_make(models, synth_work, tmp_path,
                                                                                      caplog, monkeypatch):
    _, export = models
    first, second = dicoms(synth_work, 2)
    monkeypatch.chdir(tmp_path)
    assert predict(export, [first, second], Path("out")) == 0  # a relative --out
    out = tmp_path / "out"
    assert Manifest.read(out).owns(f"overlays/{first.stem}.png")
    mine = out / "overlays" / "mine.png"
    mine.write_bytes(b"the user's")
    assert predict(export, [second], Path("out")) == 0
    assert sorted(p.name for p in (out / "overlays").iterdir()) == sorted(["mine.png", f"{second.stem}.png"])

    for kind in ("report", None):  # a report folder, a folder of the user's: neither is written into or cleaned
        folder = tmp_path / f"other_{kind}"
        (folder / "overlays").mkdir(parents=True)
        (folder / "overlays" / f"{first.stem}.png").write_bytes(b"kept")
        if kind:
            Manifest(folder, kind, [f"overlays/{first.stem}.png"]).save()
        caplog.clear()
        assert predict(export, [second], folder) == 2
        assert f"--out of 'vinbig predict' {folder}" in one_error(caplog)
        assert (folder / "overlays" / f"{first.stem}.png").read_bytes() == b"kept"
        assert not (folder / "predictions.csv").exists()


def test_a_folder_name_that_is_not_utf8_is_listed_and_the_others_predicted(models, synth_work, tmp_path):
    _, export = models
    first, second = dicoms(synth_work, 2)
    inputs = tmp_path / "inputs"
    strange = inputs / os.fsdecode(b"M\xfcller")
    strange.mkdir(parents=True)
    shutil.copy(first, strange / "a.dcm")
    shutil.copy(second, inputs / second.name)
    out = tmp_path / "out"
    assert predict(export, [inputs], out) == 1
    table = pd.read_csv(out / "predictions.csv", dtype={"image_id": str})
    assert set(table["image_id"]) == {second.stem}
    errors = pd.read_csv(out / "errors.csv")
    assert list(errors["file"]) == [f"{inputs}/M\\xfcller/a.dcm"] and "not UTF-8" in errors["reason"][0]
    assert (out / "predictions.json").is_file()


def test_ctrl_c_says_a_rerun_starts_over(models, synth_work, tmp_path, monkeypatch, caplog):
    import vinbig.app.predict as predict_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict_module, "_predict_files", interrupted)
    assert predict(models[1], dicoms(synth_work, 1), tmp_path / "out") == 130
    error = one_error(caplog)
    assert "predicts every input again" in error and "continue" not in error
