"""The Kaggle notebooks: the commands they call, a run as on Kaggle on the tiny synthetic dataset (tests/tiny.py's
config), and the wheel they install. `vinbig export` and `copy_work` alone: tests/test_export.py.

The training notebook runs twice, one fold per session, the second continuing the first's work folder, as a
user does within Kaggle's session limit; the inference notebook then predicts the test images from the export
alone, in a fresh work folder. Parameters are injected the papermill way: a cell after the `parameters` cell.
"""

from __future__ import annotations

import ast
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
import torch
import yaml
from safetensors.torch import load_file

from vinbig.artifacts import DETECTOR_PRED_COLUMNS

from tiny import N_FOLDS, TINY

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

def with_parameters(name: str, **params) -> nbformat.NotebookNode:
    """notebooks/`name` with `params` set in a cell after its parameters cell."""
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    values = "\n".join(f"{k} = {(str(v) if isinstance(v, Path) else v)!r}" for k, v in params.items())
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(values, metadata={"tags": ["injected-parameters"]}))
    return nb


def run_in(nb: nbformat.NotebookNode, cwd: Path) -> nbformat.NotebookNode:
    """Execute `nb` in a python3 kernel in `cwd`, its outputs written into it; a failing cell raises."""
    from nbclient import NotebookClient

    cwd.mkdir(parents=True, exist_ok=True)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def execute(name: str, cwd: Path, **params) -> nbformat.NotebookNode:
    """Run notebooks/`name` in a python3 kernel in `cwd` with `params` set after its parameters cell."""
    return run_in(with_parameters(name, **params), cwd)


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
def trained(synth_work, tmp_path_factory) -> Kaggle:
    """The training notebook in two sessions: fold 0, then fold 1 on top of the first session's WORK, on the session's
    synthetic dataset (read only, as /kaggle/input is)."""
    assert N_FOLDS == 2, "two sessions of one fold each"
    root = tmp_path_factory.mktemp("kaggle")
    data = synth_work.data
    common = dict(DATA=data, WHEELS=root / "input" / "no-wheels", SET=TINY, TTA="hflip", ALLOW_CPU=True)
    first = root / "session0" / "working"
    first_nb = execute("kaggle_train.ipynb", first, WORK=first / "work", EXPORT=first / "vinbig-models",
                       FOLDS=[0], **common)
    second = root / "session1" / "working"
    # the classifier as on a two-GPU machine: under torchrun, two processes (here on the CPU, gloo)
    train_nb = execute("kaggle_train.ipynb", second, WORK=second / "work", EXPORT=second / "vinbig-models",
                       FOLDS=[1], PREVIOUS=[str(first / "work")], CLASSIFIER_PROCESSES=2, **common)
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


def _argument(node: ast.expr) -> list[str]:
    """A `run(...)` argument as the command line gets it: a literal as written; `*[...]` its literal flags (`*TTA_ARGS`:
    none); a computed value (WORK, f"{DATA}/test", k, GPUS) a placeholder the parser accepts: its first literal, or
    "1" (a fold, a count of jobs)."""
    if isinstance(node, ast.Constant):
        return [str(node.value)]
    literals = [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    if isinstance(node, ast.Starred):
        return literals
    return [literals[0] if literals else "1"]


def vinbig_calls(path: Path) -> list[list[str]]:
    """The argument lists of every vinbig command a notebook runs (its `run(COMMAND, ...)` helper)."""
    calls = []
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "code":
            for node in ast.walk(ast.parse(cell.source)):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "run":
                    calls.append([a for arg in node.args for a in _argument(arg)])
    return calls


NOTEBOOK_COMMANDS = {
    "kaggle_train.ipynb": {"images", "folds", "train", "train-detector", "train-classifier", "predict-detector",
                           "predict-classifier", "tune", "report", "export"},
    "kaggle_inference.ipynb": {"images", "predict-detector", "predict-classifier", "fuse"},
}


@pytest.mark.parametrize("name", sorted(NOTEBOOK_COMMANDS))
def test_the_kaggle_notebooks_call_commands_and_names_vinbig_has(name):
    """A notebook's cells stop at the first command the CLI no longer takes: every `run(...)` parses (with the
    notebook's --config and --set), every name it imports from vinbig exists, and the inference notebook reads the
    config file 'vinbig export' writes."""
    import importlib

    from vinbig.app.cli import build_parser
    from vinbig.app.kaggle import EXPORT_CONFIG

    path = ROOT / "notebooks" / name
    calls = vinbig_calls(path)
    assert {argv[0] for argv in calls} == NOTEBOOK_COMMANDS[name]
    for argv in calls:
        try:
            build_parser().parse_args(argv + ["--config", "c.yaml", "--set", "images.size=128"])
        except SystemExit:
            pytest.fail(f"{name}: vinbig {' '.join(argv)} is not a valid command line (see the error above)")
    source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] == "vinbig":
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{name}: from {node.module} import {alias.name}"
    if name == "kaggle_inference.ipynb":
        assert f'Path(MODELS, "{EXPORT_CONFIG}")' in source


# --------------------------------------------------------------------------- the notebooks on Kaggle


def errors(nb: nbformat.NotebookNode) -> list[str]:
    return [o.evalue for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.output_type == "error"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_training_notebook_stops_at_its_start_and_says_what_to_change(tmp_path):
    from nbclient.exceptions import CellExecutionError

    working = tmp_path / "working"
    nb = with_parameters("kaggle_train.ipynb", DATA=tmp_path / "input" / "no-data", WORK=working / "work",
                         EXPORT=working / "vinbig-models", WHEELS=tmp_path / "input" / "no-wheels")
    with pytest.raises(CellExecutionError):
        run_in(nb, working)  # ALLOW_CPU = False, the default
    [error] = errors(nb)
    assert error.startswith("no GPU in this session: training on the CPU takes days")
    assert "Settings > Accelerator > GPU T4 x2" in error and "P100 may lack kernels" in error
    assert "set ALLOW_CPU = True in Parameters" in error
    assert "kernels for:" in printed(nb) and "GPUs: none" in printed(nb)  # what the session has, printed first
    assert not (working / "work").exists()  # stopped before any command ran


@pytest.mark.slow
def test_a_session_that_leaves_folds_untrained_stops_before_predictions_and_exports_nothing(trained):
    assert (trained.first / "detector" / "default" / "fold0" / "weights" / "best.pt").is_file()
    assert (trained.first / "classifier" / "default" / "fold0" / "best.pt").is_file()
    assert not (trained.first / "detector" / "default" / "fold1").exists()
    assert "folds still to train: detector default fold 1, classifier default fold 1" in printed(trained.first_nb)
    if not torch.cuda.is_available():
        assert "no GPU; ALLOW_CPU = True: training on the CPU" in printed(trained.first_nb)
    assert not (trained.first / "preds").exists() and not trained.first_export.exists()


@pytest.mark.slow
def test_the_next_session_trains_the_rest_tunes_reports_and_exports(trained):
    work, export = trained.work, trained.export
    assert (work / "report" / "per_class_ap.png").is_file() and has_png(trained.train_nb)
    assert (work / "fusion.yaml").is_file()
    oof = pd.read_parquet(work / "preds" / "detector_oof.parquet")
    assert set(oof.fold) == {0, 1} and set(oof.tta) == {"none", "hflip"}
    # CLASSIFIER_PROCESSES = 2: fold 1's classifier trained under torchrun, its output (rank 0's) shown in the cell
    log = printed(trained.train_nb)
    assert "torchrun --standalone --nproc_per_node 2 -m vinbig train-classifier --work" in log
    assert log.count("x 2 process(es)") == 1 and "fold 1 epoch 1/1: train_loss" in log

    for name in ("config.yaml", "folds.csv", "fusion.yaml"):
        assert (export / name).is_file(), name
    assert not (export / "labels.csv").exists() and not (export / "images").exists()  # no train data needed
    for k in (0, 1):  # weights as data: safetensors and the architecture in yaml, no pickle
        for rel in (f"detector/default/fold{k}/weights/best", f"classifier/default/fold{k}/best"):
            assert (export / f"{rel}.safetensors").is_file() and (export / f"{rel}.yaml").is_file(), rel
    assert not list(export.rglob("*.pt"))
    # fold 0 is the first session's model, carried over
    ckpt = torch.load(trained.first / "detector/default/fold0/weights/best.pt", weights_only=False)
    first = (ckpt.get("ema") or ckpt["model"]).state_dict()
    exported = load_file(export / "detector/default/fold0/weights/best.safetensors")
    assert exported.keys() == first.keys()
    assert all(torch.equal(exported[k], first[k]) for k in first)
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
    assert "kernels for:" in printed(nb)
    if not torch.cuda.is_available():  # the export's device null: this CPU session predicts on its CPU
        assert "no GPU: predicting on the CPU. Expect it to be slow" in printed(nb)
    preds = pd.read_parquet(working / "work" / "preds" / "detector_test.parquet")
    assert list(preds.columns) == list(DETECTOR_PRED_COLUMNS) and set(preds.tta) == {"none", "hflip"}
    assert set(preds.fold) == {0, 1}
    classifier = pd.read_csv(working / "work" / "preds" / "classifier_test.csv")
    assert set(classifier.fold) == {-1, 0, 1}  # the gate was on
    png = pd.read_csv(working / "work" / "images" / "test" / "meta.csv")
    assert (png[["png_width", "png_height"]].max(axis=1) == 128).all()  # converted at the training size


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
