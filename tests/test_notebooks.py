"""The Kaggle notebooks, run as on Kaggle on a tiny synthetic dataset; `vinbig export`; the wheel they install.

The training notebook runs twice, one fold per session, the second continuing the first's work folder, as a
user does within Kaggle's session limit; the inference notebook then predicts the test images from the export
alone, in a fresh work folder. Parameters are injected the papermill way: a cell after the `parameters` cell.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from vinbig.artifacts import DETECTOR_PRED_COLUMNS
from vinbig.app.cli import main

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# tiny sizes: the whole job in seconds on a CPU; the fusion grid is one WBF setting and two gates
TINY_SET = [
    "images.size=128", "images.workers=1", "folds.n_folds=2",
    "detector.model=yolov8n.yaml", "detector.imgsz=64", "detector.epochs=1", "detector.batch=8",
    "detector.device=cpu", "detector.workers=0", "detector.plots=false", "detector.conf=0.000001",
    "classifier.backbone=test_efficientnet", "classifier.imgsz=64", "classifier.epochs=1", "classifier.batch=8",
    "classifier.workers=0", "classifier.device=cpu", "classifier.predict_batch=16",
    "fusion.tune_iou_thr=[0.4]", "fusion.tune_skip_box_thr=[0.0]", "fusion.tune_conf_type=[avg]",
    "fusion.tune_low=[0.0,0.1]", "fusion.tune_high=[0.9]", "fusion.workers=1", "fusion.report_images=1",
]


def execute(name: str, cwd: Path, **params) -> nbformat.NotebookNode:
    """Run notebooks/`name` in a python3 kernel in `cwd` with `params` set after its parameters cell."""
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    values = "\n".join(f"{k} = {(str(v) if isinstance(v, Path) else v)!r}" for k, v in params.items())
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(values, metadata={"tags": ["injected-parameters"]}))
    cwd.mkdir(parents=True, exist_ok=True)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def printed(nb: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def has_png(nb: nbformat.NotebookNode) -> bool:
    return any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []))


@dataclass(frozen=True)
class Kaggle:
    data: Path
    first: Path  # WORK of the session that trained fold 0
    first_export: Path
    first_nb: nbformat.NotebookNode
    work: Path  # WORK of the session that trained fold 1 and did the rest
    export: Path
    train_nb: nbformat.NotebookNode


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Kaggle:
    """The training notebook in two sessions: fold 0, then fold 1 on top of the first session's WORK."""
    root = tmp_path_factory.mktemp("kaggle")
    data = root / "input" / "competition"
    assert main(["synth", "--out", str(data), "--n-train", "24", "--n-test", "4", "--size", "160", "--workers", "1",
                 "--set", "synth.abnormal_fraction=0.5", "-q"]) == 0
    common = dict(DATA=data, WHEELS=root / "input" / "no-wheels", SET=TINY_SET, TTA="hflip")
    first = root / "session0" / "working"
    first_nb = execute("kaggle_train.ipynb", first, WORK=first / "work", EXPORT=first / "vinbig-models",
                       FOLDS=[0], **common)
    second = root / "session1" / "working"
    train_nb = execute("kaggle_train.ipynb", second, WORK=second / "work", EXPORT=second / "vinbig-models",
                       FOLDS=[1], PREVIOUS=[str(first / "work")], **common)
    return Kaggle(data, first / "work", first / "vinbig-models", first_nb, second / "work",
                  second / "vinbig-models", train_nb)


# --------------------------------------------------------------------------- the committed notebooks


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebook_has_no_outputs_and_one_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), f"{path.name}: clear the outputs"
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and nb.cells[tagged[0]].cell_type == "code"
    assert tagged[0] < 4, "the parameters cell comes near the top"


def test_both_kaggle_notebooks_are_there():
    assert {p.name for p in NOTEBOOKS} >= {"kaggle_train.ipynb", "kaggle_inference.ipynb"}


# --------------------------------------------------------------------------- the notebooks on Kaggle


@pytest.mark.slow
def test_a_session_that_leaves_folds_untrained_stops_before_predictions_and_exports_nothing(trained):
    assert (trained.first / "detector" / "fold0" / "weights" / "best.pt").is_file()
    assert (trained.first / "classifier" / "fold0" / "best.pt").is_file()
    assert not (trained.first / "detector" / "fold1").exists()
    assert "folds still to train: detector [1], classifier [1]" in printed(trained.first_nb)
    assert not (trained.first / "preds").exists() and not trained.first_export.exists()


@pytest.mark.slow
def test_the_next_session_trains_the_rest_tunes_reports_and_exports(trained):
    work, export = trained.work, trained.export
    assert (work / "report" / "per_class_ap.png").is_file() and has_png(trained.train_nb)
    assert (work / "fusion.yaml").is_file()
    oof = pd.read_parquet(work / "preds" / "detector_oof.parquet")
    assert set(oof.fold) == {0, 1} and set(oof.tta) == {"none", "hflip"}

    for name in ("config.yaml", "folds.csv", "fusion.yaml"):
        assert (export / name).is_file(), name
    assert not (export / "labels.csv").exists() and not (export / "images").exists()  # no train data needed
    for k in (0, 1):
        assert (export / f"detector/fold{k}/weights/best.pt").is_file()
        assert (export / f"classifier/fold{k}/best.pt").is_file()
    # fold 0 is the first session's model, carried over
    assert ((export / "detector/fold0/weights/best.pt").read_bytes()
            == (trained.first / "detector/fold0/weights/best.pt").read_bytes())
    assert not list(export.rglob("*.partial")) and not list(export.rglob("*.png"))
    cfg = yaml.safe_load((export / "config.yaml").read_text())
    assert cfg["images"]["size"] == 128 and cfg["detector"]["imgsz"] == 64  # the training sizes


@pytest.mark.slow
def test_inference_from_the_export_alone_writes_a_valid_submission(trained, tmp_path):
    from vinbig.submission import validate_submission

    working = tmp_path / "working"
    nb = execute("kaggle_inference.ipynb", working, DATA=trained.data, WHEELS=tmp_path / "input" / "no-wheels",
                 MODELS=trained.export, WORK=working / "work", SUBMISSION=working / "submission.csv", TTA="hflip",
                 SET=[])

    sub = pd.read_csv(working / "submission.csv")
    sample = pd.read_csv(trained.data / "sample_submission.csv")
    assert sub.image_id.tolist() == sample.image_id.tolist()
    assert validate_submission(working / "submission.csv", trained.data / "sample_submission.csv",
                               working / "work" / "images" / "test" / "meta.csv") == []
    assert f"{len(sample)} rows" in printed(nb)
    preds = pd.read_parquet(working / "work" / "preds" / "detector_test.parquet")
    assert list(preds.columns) == list(DETECTOR_PRED_COLUMNS) and set(preds.tta) == {"none", "hflip"}
    assert set(preds.fold) == {0, 1}
    classifier = pd.read_csv(working / "work" / "preds" / "classifier_test.csv")
    assert set(classifier.fold) == {-1, 0, 1}  # the gate was on
    png = pd.read_csv(working / "work" / "images" / "test" / "meta.csv")
    assert (png[["png_width", "png_height"]].max(axis=1) == 128).all()  # converted at the training size


# --------------------------------------------------------------------------- vinbig export


def fake_work(root: Path, detectors=(0, 1), classifiers=(), folds=(0, 1)) -> Path:
    """A work folder with folds.csv over `folds` and placeholder best.pt files for the folds named."""
    work = root / "work"
    work.mkdir(parents=True)
    pd.DataFrame({"image_id": [f"img{k}" for k in folds], "fold": list(folds)}).to_csv(work / "folds.csv", index=False)
    for k in detectors:
        (work / f"detector/fold{k}/weights").mkdir(parents=True)
        (work / f"detector/fold{k}/weights/best.pt").write_bytes(b"detector %d" % k)
    for k in classifiers:
        (work / f"classifier/fold{k}").mkdir(parents=True)
        (work / f"classifier/fold{k}/best.pt").write_bytes(b"classifier %d" % k)
    return work


@pytest.mark.parametrize("setup, words", [
    (lambda root: (root / "work").mkdir(), ["work/folds.csv not found", "vinbig folds"]),
    (lambda root: fake_work(root, detectors=(0,)), ["detector/fold1/weights/best.pt not found",
                                                     "vinbig train-detector --work", "--fold 1"]),
    (lambda root: fake_work(root, classifiers=(1,)), ["classifier/fold0/best.pt not found",
                                                      "train-classifier", "--no-classifier"]),
])
def test_export_names_the_missing_file_and_the_command_that_makes_it(tmp_path, caplog, setup, words):
    setup(tmp_path)
    out = tmp_path / "models"
    assert main(["export", "--work", str(tmp_path / "work"), "--out", str(out)]) == 2
    for w in words:
        assert w in caplog.text
    assert not (out / "config.yaml").exists()


def test_export_keeps_the_layout_and_removes_what_an_earlier_export_left(tmp_path):
    out = tmp_path / "models"
    stale = out / "detector/fold7/weights/best.pt"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    (out / "dataset-metadata.json").write_text("{}")  # what the user put there stays
    work = fake_work(tmp_path, classifiers=(0, 1))
    assert main(["export", "--work", str(work), "--out", str(out), "--set", "detector.imgsz=320", "-q"]) == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["classifier/fold0/best.pt", "classifier/fold1/best.pt", "config.yaml", "dataset-metadata.json",
                     "detector/fold0/weights/best.pt", "detector/fold1/weights/best.pt", "folds.csv"]
    assert (out / "classifier/fold1/best.pt").read_bytes() == b"classifier 1"
    assert yaml.safe_load((out / "config.yaml").read_text())["detector"]["imgsz"] == 320

    assert main(["export", "--work", str(work), "--out", str(out), "--no-classifier", "-q"]) == 0
    assert not list(out.glob("classifier/fold*/best.pt"))  # inference would otherwise use them


def test_copy_work_skips_what_is_there_and_the_detector_datasets(tmp_path):
    from vinbig.app.kaggle import copy_work

    src = fake_work(tmp_path / "a")
    (src / "detector/data/fold0").mkdir(parents=True)
    (src / "detector/data/fold0/data.yaml").write_text("path: .\n")
    (src / "folds.csv").chmod(0o444)  # an attached dataset is read-only
    dst = tmp_path / "b" / "work"
    assert copy_work(src, dst)["copied"] == 3  # folds.csv and two best.pt
    assert (dst / "folds.csv").stat().st_mode & 0o200  # the copy is writable
    assert (dst / "detector/fold1/weights/best.pt").read_bytes() == b"detector 1"
    assert not (dst / "detector/data").exists()
    assert copy_work(src, dst)["copied"] == 0
    (src / "folds.csv").chmod(0o644)
    (src / "folds.csv").write_text("image_id,fold\nimg0,0\n")
    assert copy_work(src, dst)["copied"] == 1 and (dst / "folds.csv").read_text() == "image_id,fold\nimg0,0\n"


# --------------------------------------------------------------------------- the wheel the notebooks install


def _source_only(folder: str, names: list[str]) -> list[str]:
    top = Path(folder) == ROOT
    return [n for n in names if n == "__pycache__" or (top and (n.startswith(".") or n.endswith(".egg-info")
                                                                 or n in ("data", "work", "build", "dist", "runs")))]


@pytest.mark.slow
def test_the_wheel_builds_offline_and_an_installed_vinbig_finds_its_configs(tmp_path):
    src = tmp_path / "src"  # a copy: the build writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT, src, ignore=_source_only)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True, text=True)
    wheel, = (tmp_path / "dist").glob("vinbig-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("vinbig", "folds", "detector", "classifier", "fusion"):
        assert f"{package}/__init__.py" in names, package
    assert {"vinbig/configs/default.yaml", "vinbig/configs/demo.yaml", "vinbig/app/kaggle.py"} <= names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "vinbig = vinbig.app.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-index", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True)
    code = ("from vinbig.config import default_config_path; from vinbig.app.demo import demo_config_path; "
            "print(default_config_path()); print(demo_config_path())")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, capture_output=True,
                         text=True).stdout.split()
    assert [Path(p) for p in out] == [site / "vinbig/configs/default.yaml", site / "vinbig/configs/demo.yaml"]
    assert all(Path(p).is_file() for p in out)
