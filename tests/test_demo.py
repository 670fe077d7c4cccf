"""`vinbig demo` end to end: every stage, real code, tiny sizes; then a rerun that skips the finished work."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from vinbig.submission import validate_submission
from vinbig.app.cli import main
from vinbig.config import load_config
from vinbig.app.demo import demo_config_path
from vinbig.submission import score_files

from tiny import N_FOLDS, SYNTH, TINY, set_args

STAGES = ["synthetic data", "convert images", "folds", "train detectors", "train classifiers", "predict",
          "tune fusion", "submission", "report", "total"]


def _demo(out, capsys) -> str:
    assert main(["demo", "--out", str(out), "-q", *set_args(SYNTH + TINY)]) == 0
    return capsys.readouterr().out


def _mtimes(work, pattern):
    return {p: p.stat().st_mtime_ns for p in sorted(work.glob(pattern))}


@pytest.mark.slow
def test_demo_runs_every_stage_and_a_rerun_skips_the_training(tmp_path, capsys):
    out = _demo(tmp_path / "demo", capsys)
    data, work = tmp_path / "demo" / "data", tmp_path / "demo" / "work"

    # a valid submission with every test image of the sample submission, in its order
    sample = pd.read_csv(data / "sample_submission.csv")
    sub = pd.read_csv(work / "submission.csv")
    n_test = load_config(overrides=SYNTH)["synth"]["n_test"]
    assert list(sub.image_id) == list(sample.image_id) and len(sub) == n_test
    assert validate_submission(work / "submission.csv", data / "sample_submission.csv",
                               work / "images" / "test" / "meta.csv") == []
    # the report, the tuned fusion values, every fold of both stages
    for name in ("per_class_ap.png", "pr_curves.png", "metrics.csv"):
        assert (work / "report" / name).stat().st_size > 0
    assert list((work / "report" / "overlays").glob("*.png"))
    assert (work / "fusion.yaml").is_file()
    runs = list(load_config(demo_config_path())["runs"]["detector"])
    assert len(runs) == 2  # the demo fuses two detector runs
    for k in range(N_FOLDS):
        for run in runs:
            assert (work / "detector" / run / f"fold{k}" / "weights" / "best.pt").is_file()
        assert (work / "classifier" / "default" / f"fold{k}" / "best.pt").is_file()

    # the summary: the OOF table beside the "No finding" baseline, the paths, a time for every stage
    assert "No finding AP" in out and str(work / "submission.csv") in out and str(work / "report") in out
    vinbig_map, baseline_map = map(float, re.search(r"mAP over \d+ classes\s+([\d.]+)\s+([\d.]+)", out).groups())
    metrics = pd.read_csv(work / "report" / "metrics.csv")
    assert vinbig_map == pytest.approx(metrics.loc[metrics.present, "ap"].mean(), abs=1e-4)  # the report agrees
    # the baseline scores only "No finding": its mean is that class's AP over the classes present
    baseline_14 = float(re.search(r"^14  No finding\s+\d+\s+[\d.]+\s+([\d.]+)$", out, flags=re.M).group(1))
    assert baseline_map == pytest.approx(baseline_14 / metrics.present.sum(), abs=1e-4) and baseline_14 > 0
    oof = pd.read_parquet(work / "preds" / "detector_oof.parquet")
    assert set(oof.tta) == {"none", "hflip"} and set(oof.run) == set(runs)

    # the synthetic leaderboard: the ensemble, each run alone and "No finding", OOF and test mAP, the test mAP being
    # what 'vinbig score' gives against the private truth
    board = dict((what.strip(), (float(a), float(b))) for what, a, b in
                 re.findall(r"^(ensemble|run \S+ alone|'No finding' for every image)\s+([\d.]+)\s+([\d.]+)$", out,
                            flags=re.M))
    assert list(board) == ["ensemble", *(f"run {r} alone" for r in runs), "'No finding' for every image"]
    assert board["ensemble"][0] == pytest.approx(vinbig_map, abs=1e-4)
    assert board["'No finding' for every image"][0] == pytest.approx(baseline_map, abs=1e-4)
    truth = data / "private" / "test_labels.csv"
    assert board["ensemble"][1] == pytest.approx(score_files(truth, work / "submission.csv").mean_ap, abs=1e-4)
    for r in runs:
        assert board[f"run {r} alone"][1] == pytest.approx(
            score_files(truth, work / f"submission_{r}.csv").mean_ap, abs=1e-4)
    times = dict(re.findall(r"^  (\S.*?)\s+([\d.]+) s$", out, flags=re.M))
    assert list(times) == STAGES
    assert float(times["total"]) >= sum(float(v) for k, v in times.items() if k != "total") - 1

    # a rerun keeps the dataset and the trained folds, and makes the outputs again
    weights = _mtimes(work, "*/*/fold*/**/*.pt")
    dicoms = _mtimes(data, "*/*.dicom")
    out2 = _demo(tmp_path / "demo", capsys)
    assert weights and _mtimes(work, "*/*/fold*/**/*.pt") == weights and _mtimes(data, "*/*.dicom") == dicoms
    assert "synthetic data" not in dict(re.findall(r"^  (\S.*?)\s+([\d.]+) s$", out2, flags=re.M))
    assert validate_submission(work / "submission.csv", data / "sample_submission.csv") == []


def test_demo_config_is_small_and_commented_like_the_default():
    """configs/demo.yaml holds only known keys (load_config rejects others), each with a comment."""
    cfg = load_config(demo_config_path())
    assert cfg["detector"]["model"] == "yolov8n.yaml" and cfg["detector"]["device"] is None
    assert cfg["folds"]["n_folds"] == 2 and len(cfg["runs"]["detector"]) == 2  # two runs of two folds: four trainings
    for line in demo_config_path().read_text().splitlines():
        if line.startswith("  ") and ":" in line:
            assert "# (" in line, f"demo.yaml key without a '# (type) meaning' comment: {line}"


def test_demo_failure_names_the_stage_and_how_to_go_on(tmp_path, capsys):
    """A stage that fails stops the demo with exit 2, naming the stage, its command and the rerun."""
    code = main(["demo", "--out", str(tmp_path / "d"), "-q", "--set", "synth.n_train=4", "--set", "synth.n_test=1",
                 "--set", "synth.size=64", "--set", "folds.n_folds=5"])
    err = capsys.readouterr().err
    assert code == 2
    assert "stage 'folds'" in err and "vinbig folds --train-csv" in err and "Rerun the same 'vinbig demo'" in err
