"""Named runs: several detector and classifier runs trained on one WORK's folds, predicted into one file per stage
and split (a `run` column), fused as one ensemble whose run weights `vinbig tune` chooses."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from conftest import own_work
from tiny import TINY, set_args
from vinbig.app.cli import main
from vinbig.artifacts import Work, read_classifier_preds, read_detector_preds
from vinbig.submission import validate_submission

RUNS = {"detector": {"a": {}, "b": {"imgsz": 96, "conf": 0.00001}},
        "classifier": {"x": {}, "y": {"imgsz": 96}}}


def vinbig(*args, config=None) -> int:
    return main([str(a) for a in args] + set_args(TINY) + (["--config", str(config)] if config else []) + ["-q"])


@pytest.fixture(scope="module")
def two_runs(synth_work, tmp_path_factory):
    """A WORK with two detector runs and two classifier runs, every fold trained and predicted, tuned and fused."""
    root = tmp_path_factory.mktemp("runs")
    work = own_work(synth_work, root)
    config = root / "runs.yaml"
    config.write_text(yaml.safe_dump({"runs": RUNS}))
    folds = sorted(pd.read_csv(work / "folds.csv")["fold"].unique())
    for stage, runs in RUNS.items():
        for run in runs:
            for k in folds:
                assert vinbig(f"train-{stage}", "--work", work, "--run", run, "--fold", k, config=config) == 0
    for split in ("oof", "test"):
        assert vinbig("predict-detector", "--work", work, "--split", split, "--tta", "hflip", config=config) == 0
        assert vinbig("predict-classifier", "--work", work, "--split", split, config=config) == 0
    assert vinbig("tune", "--work", work, config=config) == 0
    assert vinbig("fuse", "--work", work, "--split", "test", "--data", synth_work.data, config=config) == 0
    return Work(work), config, folds


def test_each_run_has_its_folds_and_its_own_config(two_runs):
    work, _, folds = two_runs
    for stage, runs in RUNS.items():
        for run in runs:
            for k in folds:
                assert work.checkpoint(stage, k, "best", run).is_file()
    saved = yaml.safe_load((work.fold_dir("detector", 0, "b") / "config_detector.yaml").read_text())
    assert saved["detector"]["imgsz"] == 96  # the run's own section is saved beside its weights
    saved = yaml.safe_load((work.fold_dir("detector", 0, "a") / "config_detector.yaml").read_text())
    assert saved["detector"]["imgsz"] == 64
    assert not (work.root / "detector" / "fold0").exists() and not (work.root / "classifier" / "fold0").exists()


def test_predictions_carry_the_run(two_runs):
    work, _, folds = two_runs
    for split in ("oof", "test"):
        det = read_detector_preds(work, split)
        assert set(det["run"]) == {"a", "b"} and set(det["tta"]) == {"none", "hflip"}
        assert set(det["fold"]) == set(folds)
        clf = read_classifier_preds(work, split)
        assert set(clf["run"]) == {"x", "y"}
    test = read_classifier_preds(work, "test")
    for run, g in test.groupby("run"):  # each run's fold -1 rows are its own mean over folds
        per_fold = g[g["fold"] >= 0].groupby("image_id")["p_abnormal"].mean()
        mean = g[g["fold"] == -1].set_index("image_id")["p_abnormal"]
        pd.testing.assert_series_equal(per_fold.sort_index(), mean.sort_index(), check_names=False, atol=1e-6)


def test_tune_chooses_a_weight_per_run(two_runs):
    work, _, _ = two_runs
    tuned = yaml.safe_load(work.fusion_config.read_text())["fusion"]
    assert set(tuned["run_weights"]) == {"a", "b"} and set(tuned["classifier_weights"]) == {"x", "y"}
    assert any(w > 0 for w in tuned["run_weights"].values())


def test_the_submission_fuses_every_set_and_is_valid(two_runs, synth_work, caplog):
    work, config, folds = two_runs
    assert validate_submission(work.submission, synth_work.data / "sample_submission.csv") == []
    caplog.clear()
    out = work.root / "alone.csv"
    with caplog.at_level("INFO", logger="fusion"):
        assert vinbig("fuse", "--work", work.root, "--split", "test", "--data", synth_work.data, "--run", "a",
                      "--out", out, config=config) == 0
    assert validate_submission(out, synth_work.data / "sample_submission.csv") == []
    sets = f"from {len(folds) * 2} prediction sets"
    assert any(sets in r.getMessage() for r in caplog.records), caplog.text  # run a alone: its folds x 2 TTA


def test_predicting_one_run_keeps_the_others_rows(two_runs, tmp_path):
    import shutil

    work, config, _ = two_runs
    copy = tmp_path / "work"
    shutil.copytree(work.root, copy, symlinks=True)
    before = read_detector_preds(Work(copy), "test")
    assert vinbig("predict-detector", "--work", copy, "--split", "test", "--run", "b", config=config) == 0
    after = read_detector_preds(Work(copy), "test")
    pd.testing.assert_frame_equal(after[after.run == "a"].reset_index(drop=True),
                                  before[before.run == "a"].reset_index(drop=True))
    assert set(after.loc[after.run == "b", "tta"]) == {"none"}  # b predicted again, without --tta


def test_several_runs_need_run_to_train(two_runs, caplog):
    work, config, _ = two_runs
    assert vinbig("train-detector", "--work", work.root, "--fold", 0, config=config) == 2
    assert "the config has 2 detector runs (a, b): give --run NAME" in caplog.text
    assert vinbig("train-detector", "--work", work.root, "--run", "c", "--fold", 0, config=config) == 2
    assert "'c' is not a detector run of the config; its runs are a, b" in caplog.text


def test_an_old_work_folder_says_how_to_move_its_folds(work_copy, caplog):
    old = work_copy.work / "detector" / "fold0" / "weights"
    old.mkdir(parents=True)
    (old / "best.pt").write_bytes(b"")
    assert vinbig("predict-detector", "--work", work_copy.work, "--split", "test") == 2
    assert "of a vinbig before named runs: move them into" in caplog.text


def test_report_shows_each_run_beside_the_ensemble(two_runs, capsys):
    work, config, _ = two_runs
    capsys.readouterr()
    assert vinbig("report", "--work", work.root, config=config) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.split()[-3:] == ["a", "b", "ensemble"])
    assert header.split()[:2] == ["id", "class"]
    assert (work.report / "index.html").is_file()


def test_the_report_page_of_a_trained_work_opens_in_chromium(two_runs, browser, tmp_path):
    """The page of a real (tiny) OOF output, two runs: no console error, every thumbnail loads, a column per run."""
    work, config, _ = two_runs
    if not (work.report / "index.html").is_file():
        assert vinbig("report", "--work", work.root, config=config) == 0
    browser.open((work.report / "index.html").as_uri())
    assert browser.problems() == []
    assert browser.js("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    headers = browser.js("Array.from(document.querySelectorAll('th')).map(t => t.textContent.trim())")
    assert {"AP ensemble", "AP a", "AP b"} <= set(headers), headers
    assert browser.screenshot(tmp_path / "report.png").stat().st_size > 0


def test_tune_leaves_out_a_run_the_config_weighs_zero_as_fuse_does(two_runs, tmp_path):
    import shutil

    work, config, _ = two_runs
    copy = tmp_path / "work"
    shutil.copytree(work.root, copy, symlinks=True)
    assert vinbig("tune", "--work", copy, "--set", "fusion.run_weights={a: 0}", config=config) == 0
    tuned = yaml.safe_load((copy / "fusion.yaml").read_text())["fusion"]
    assert set(tuned["run_weights"]) == {"b"}
