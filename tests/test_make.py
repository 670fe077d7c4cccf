"""The Makefile's promises, checked with `make -n` (what it would run) on files of chosen ages: each target
runs the right `vinbig` commands, skips what is up to date, resumes an interrupted fold and retrains a fold
whose inputs changed. Nothing is trained here: the commands themselves are tested elsewhere."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def dirs(tmp_path):
    data, work = tmp_path / "data", tmp_path / "work"
    data.mkdir()
    for name in ("train.csv", "sample_submission.csv"):
        (data / name).write_text("")
    _age(data / "train.csv", data / "sample_submission.csv", t=1000)
    return data, work


def _age(*paths, t: float) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
        os.utime(p, (t, t))


def make(dirs, *goals, folds="0 1", dry_run=True) -> subprocess.CompletedProcess:
    data, work = dirs
    return subprocess.run(["make", *(["-n"] if dry_run else []), "-C", str(ROOT), *goals, f"DATA={data}",
                           f"WORK={work}", f"FOLDS={folds}"], capture_output=True, text=True)


def make_n(dirs, *goals, folds="0 1") -> list[str]:
    """The vinbig commands `make -n GOALS` would run (other lines, such as the venv's, are left out)."""
    r = make(dirs, *goals, folds=folds)
    assert r.returncode == 0, r.stderr
    return [line.split("/vinbig ", 1)[1] for line in r.stdout.splitlines() if "/bin/vinbig " in line]


def _trained(work: Path, t: float, folds=(0, 1)) -> None:
    """Everything up to the trained folds exists, made at time t (inputs at t - 1)."""
    _age(work / "images/train/meta.csv", work / "images/test/meta.csv", work / "folds.csv", t=t - 1)
    for k in folds:
        _age(work / f"detector/default/fold{k}/weights/last.pt", work / f"detector/default/fold{k}/.trained",
             work / f"classifier/default/fold{k}/last.pt", work / f"classifier/default/fold{k}/.trained", t=t)


def test_train_converts_the_train_images_makes_folds_and_trains_both_stages(dirs):
    data, work = dirs
    cmds = [c.split(" --config")[0] for c in make_n(dirs, "folds", "train")]
    assert cmds[:2] == [f"images --src {data}/train --out {work}/images/train",  # folds checks boxes against it
                        f"folds --train-csv {data}/train.csv --out {work}"]
    assert cmds[2:] == [
        f"train-detector --work {work} --run default --fold 0", f"train-detector --work {work} --run default --fold 1",
        f"train-classifier --work {work} --run default --fold 0",
        f"train-classifier --work {work} --run default --fold 1"]
    assert not any("--resume" in c or "--overwrite" in c for c in cmds)
    assert not any(f"{data}/test " in c for c in cmds)  # the test images wait for make predict


def test_up_to_date_folds_are_skipped_and_predict_converts_the_test_images(dirs):
    data, work = dirs
    _trained(work, t=2000)
    (work / "images/test/meta.csv").unlink()
    assert make_n(dirs, "train") == []
    cmds = [c.split(" --config")[0] for c in make_n(dirs, "predict")]
    convert = cmds.index(f"images --src {data}/test --out {work}/images/test --allow-errors")
    assert convert < cmds.index(f"predict-detector --work {work} --split test --tta hflip")
    assert sorted(cmds[:convert] + cmds[convert + 1:]) == sorted([f"predict-detector --work {work} --split oof --tta hflip",
                                       f"predict-detector --work {work} --split test --tta hflip",
                                       f"predict-classifier --work {work} --split oof",
                                       f"predict-classifier --work {work} --split test"])


def test_an_interrupted_fold_resumes_and_a_finished_one_is_kept_when_its_inputs_change(dirs):
    _, work = dirs
    _trained(work, t=2000)
    (work / "detector/default/fold1/.trained").unlink()  # stopped during training: last.pt without the stamp
    cmds = make_n(dirs, "train-detector")
    assert len(cmds) == 1 and " --fold 1 " in cmds[0] and cmds[0].endswith("--resume")
    # new folds: make never throws a finished fold away; it resumes it (a no-op) and says how to retrain
    _age(work / "folds.csv", t=3000)
    r = make(dirs, "train", folds="0")
    cmds = [line for line in r.stdout.splitlines() if "/bin/vinbig " in line]
    assert len(cmds) == 2 and all(c.endswith("--resume") for c in cmds) and "--overwrite" not in r.stdout
    assert f"{work}/detector/default/fold0 was trained before {work}/folds.csv changed" in r.stdout
    assert f"rm -r {work}/classifier/default/fold0" in r.stdout


def test_test_images_that_fail_do_not_stop_the_submission(dirs):
    data, work = dirs
    cmds = make_n(dirs, "images")
    assert any(c.startswith(f"images --src {data}/test ") and "--allow-errors" in c for c in cmds)
    assert not any(c.startswith(f"images --src {data}/train ") and "--allow-errors" in c for c in cmds)


def test_demo_takes_the_config_only_when_given(dirs, tmp_path):
    assert make_n(dirs, "demo")[0].strip() == "demo --out work/demo"
    r = make(dirs, "demo", f"CONFIG={tmp_path}/my.yaml", f"DEMO={tmp_path}/d")
    assert f"demo --out {tmp_path}/d --config {tmp_path}/my.yaml" in r.stdout


def test_submission_tunes_fuses_and_report_follows_the_tuned_values(dirs):
    data, work = dirs
    _trained(work, t=2000)
    preds = [work / "preds" / n for n in ("detector_oof.parquet", "detector_test.parquet", "classifier_oof.csv",
                                          "classifier_test.csv")]
    _age(*preds, t=2100)
    cmds = [c.split(" --config")[0] for c in make_n(dirs, "submission", "report")]
    assert cmds == [f"tune --work {work}", f"fuse --work {work} --split test --data {data}", f"report --work {work}"]
    _age(work / "fusion.yaml", t=2200)
    _age(work / "submission.csv", work / "report/metrics.csv", t=2300)
    assert make_n(dirs, "submission", "report") == []
    _age(work / "preds/detector_test.parquet", t=2400)  # new test predictions: only the submission is redone
    assert [c.split(" --config")[0] for c in make_n(dirs, "submission", "report")] == [
        f"fuse --work {work} --split test --data {data}"]


def test_a_path_with_a_space_is_refused_with_the_reason(dirs, tmp_path):
    r = make((dirs[0], tmp_path / "my work"), "train")
    assert r.returncode != 0 and "has a space" in r.stderr and not (tmp_path / "my work").exists()


def test_a_wrong_data_path_is_named_with_the_fix(dirs, tmp_path):
    _, work = dirs
    r = make((tmp_path / "nowhere", work), "folds", dry_run=False)  # stops before any vinbig command
    assert r.returncode != 0 and not work.exists()
    assert f"{tmp_path}/nowhere/train.csv not found" in r.stderr and "make synth" in r.stderr


def test_train_and_predict_follow_the_runs_of_the_config_and_runs_narrows_them(dirs, tmp_path):
    data, work = dirs
    config = tmp_path / "runs.yaml"
    config.write_text("runs:\n  detector: {a: {}, b: {imgsz: 320}}\n  classifier: {x: {}}\n")

    def cmds(*goals, **variables):
        r = subprocess.run(["make", "-n", "-C", str(ROOT), *goals, f"DATA={data}", f"WORK={work}", "FOLDS=0",
                            f"CONFIG={config}", *(f"{k}={v}" for k, v in variables.items())],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        lines = [line.split("/vinbig ", 1)[1].split(" --config")[0] for line in r.stdout.splitlines()
                 if "/bin/vinbig " in line]
        return [c for c in lines if c.startswith(("train-", "predict-"))]

    assert cmds("train") == [f"train-detector --work {work} --run a --fold 0",
                             f"train-detector --work {work} --run b --fold 0",
                             f"train-classifier --work {work} --run x --fold 0"]
    narrowed = cmds("train", "predict-detector", RUNS="b")
    assert narrowed[:2] == [f"train-detector --work {work} --run b --fold 0",
                            f"train-classifier --work {work} --run x --fold 0"]  # no classifier run named: all
    assert all(c.endswith("--run b") for c in narrowed[2:] if c.startswith("predict-detector")) and narrowed[2:]


def test_jobs_or_engine_train_every_run_and_fold_with_one_vinbig_train(dirs):
    """`make train JOBS=N` (or ENGINE=ray): the whole grid by `vinbig train`, FOLDS and RUNS passed on when given."""
    data, work = dirs

    def cmds(*goals, **variables):
        r = subprocess.run(["make", "-n", "-C", str(ROOT), *goals, f"DATA={data}", f"WORK={work}",
                            *(f"{k}={v}" for k, v in variables.items())], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return [line.split("/vinbig ", 1)[1].replace(" --config configs/default.yaml", "")
                for line in r.stdout.splitlines() if "/bin/vinbig train" in line]

    assert cmds("train", JOBS=2) == [f"train --work {work} --engine local --jobs 2"]  # every fold of the config
    assert cmds("train", ENGINE="ray", FOLDS="0 1", RUNS="a b") == [
        f"train --work {work} --engine ray --run a --run b --fold 0 --fold 1"]
    assert cmds("train-detector", "train-classifier", ENGINE="local", JOBS=3) == [
        f"train --work {work} --engine local --jobs 3 --stage detector",
        f"train --work {work} --engine local --jobs 3 --stage classifier"]
    per_fold = cmds("train-detector")  # without them: fold by fold
    assert per_fold and all(c.startswith("train-detector ") for c in per_fold)
