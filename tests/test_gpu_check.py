"""bench/gpu_check.py at tiny sizes on the CPU, as a user runs it: every figure in its JSON, a table naming the
device, a failed step as one line, and nothing reaching for the network."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import pytest

from vinbig.artifacts import DETECTOR_PRED_COLUMNS

from faults import guarded_env

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def run_check(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    """``python bench/gpu_check.py ARGS`` from the repository root with the network blocked; the network log."""
    env, log = guarded_env(tmp_path)
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)  # under a minute normally
    return proc, log.read_text() if log.exists() else ""


def test_the_network_guard_catches_a_connection(tmp_path):
    """The guard the other tests rely on: a process started with it logs and refuses a connection."""
    env, log = guarded_env(tmp_path)
    code = "import socket\ntry:\n    socket.create_connection(('example.com', 80), timeout=1)\nexcept OSError as e:\n" \
           "    print(e)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert "blocked by the test" in proc.stdout
    assert "create_connection(('example.com', 80)" in log.read_text()


def test_help_names_the_tiny_mode_and_the_outputs():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for words in ("--tiny", "--out", "--keep", "gpu_check.json", "gpu_check.md", "ultralytics alone"):
        assert words in proc.stdout, words


def test_tiny_check_on_the_cpu_writes_every_figure_and_a_table_naming_the_device(tmp_path):
    out, work = tmp_path / "out", tmp_path / "check"
    proc, network = run_check(tmp_path, "--tiny", "--out", str(out), "--work", str(work), "--keep")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert network == "", f"the check reached for the network:\n{network}"

    r = json.loads((out / "gpu_check.json").read_text())
    assert r["tiny"] is True and r["device_kind"] == "cpu" and r["device"].strip()
    assert abs((datetime.date.fromisoformat(r["date"]) - datetime.date.today()).days) <= 1
    for package in ("torch", "ultralytics", "timm"):
        assert r["versions"][package].split("+")[0] == version(package).split("+")[0]  # torch: 2.14.1+cu130
    assert r["total_seconds"] > 0

    folds = pd.read_csv(work / "work" / "folds.csv")
    n_train = int((folds.fold != 0).sum())
    assert r["data"]["n_folds"] == folds.fold.nunique() == 2 and r["data"]["n_train"] == len(folds) == 12

    det = r["detector_train"]
    assert (det["model"], det["imgsz"], det["epochs"], det["train_images"]) == ("yolov8n.yaml", 64, 1, n_train)
    for run in ("vinbig", "ultralytics"):
        figures = det[run]
        assert figures["seconds"] > 0
        assert figures["images_per_s"] > 0
        assert figures["images_per_s"] == pytest.approx(n_train * det["epochs"] / figures["seconds"], rel=0.01)
        assert figures["gpu_memory_peak_gib"] is None and figures["amp"] is False  # the CPU: no GPU, no AMP
    assert abs(det["overhead"] - (det["ultralytics"]["images_per_s"] / det["vinbig"]["images_per_s"] - 1)) < 1e-3
    assert det["overhead_goal"] == 0.05 and det["meets_goal"] == (det["overhead"] <= 0.05)
    # both runs trained: vinbig's fold and ultralytics' own run folder
    assert (work / "work" / "detector" / "default" / "fold0" / "weights" / "best.pt").is_file()
    assert (work / "work" / "ultralytics_alone" / "fold0" / "weights" / "best.pt").is_file()

    pred = r["detector_predict"]
    assert pred["folds"] == 2 and pred["tta"] == ["none", "hflip"] and pred["test_images"] == 4
    assert pred["model_passes"] == 4 * 2 * 2 and "copied" in pred["weights"]
    assert pred["fp32"]["images_per_s"] > 0 and pred["fp32"]["model_passes_per_s"] > 0
    assert pred["fp32"]["gpu_memory_peak_gib"] is None
    assert "not_applicable" in pred["fp16"] and "images_per_s" not in pred["fp16"]
    preds = pd.read_parquet(work / "work" / "preds" / "detector_test.parquet")
    assert set(preds.tta) <= {"none", "hflip"} and set(preds.fold) <= {0, 1} and set(preds.run) <= {"default"}
    assert list(preds.columns) == list(DETECTOR_PRED_COLUMNS)  # with the run column, boxes or none (1 tiny epoch)

    cls = r["classifier_train"]
    assert (cls["backbone"], cls["imgsz"], cls["epochs"], cls["train_images"]) == ("test_efficientnet", 64, 1, n_train)
    assert cls["images_per_s"] > 0 and cls["gpu_memory_peak_gib"] is None and cls["amp"] is False
    assert (work / "work" / "classifier" / "default" / "fold0" / "best.pt").is_file()

    table = (out / "gpu_check.md").read_text()
    assert r["device"] in table and "tiny sizes" in table
    for figure in (det["vinbig"]["images_per_s"], det["ultralytics"]["images_per_s"], pred["fp32"]["images_per_s"],
                   cls["images_per_s"]):
        assert f"{figure:.2f}" in table
    assert f"{det['overhead']:+.1%}" in table and "not applicable" in table
    assert table.strip() in proc.stdout  # printed as written


def test_a_failed_step_is_one_line_naming_it_and_exits_1(tmp_path):
    out, work = tmp_path / "out", tmp_path / "check"
    proc, network = run_check(tmp_path, "--tiny", "--out", str(out), "--work", str(work),
                              "--set", "detector.model=yolov9000.yaml")
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert network == ""
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("gpu_check failed: ") and "training" in line
    assert "'yolov9000.yaml' is not an ultralytics architecture nor a file" in line
    assert not (out / "gpu_check.json").exists()
    assert not (work / "work").exists() and not (work / "data").exists()  # no --keep: the work folder is removed
