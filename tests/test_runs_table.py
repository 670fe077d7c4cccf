"""`vinbig runs --work WORK`: the experiment table of what a work folder trained (one row per run and the ensemble:
the keys each run changed, its finished folds, its training time, its out-of-fold score), as text and as JSON."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import yaml

from conftest import own_work
from test_startup import HEAVY, loaded
from tiny import TINY, set_args
from vinbig.app.cli import main
from vinbig.app.runs import fold_seconds
from vinbig.artifacts import NO_FINDING, Work, read_classifier_preds, read_labels
from vinbig.config import load_config

RUNS = {"detector": {"a": {}, "b": {"seed": 1}}, "classifier": {"x": {}}}
KEYS = {"stage", "run", "changed", "disagree", "folds_trained", "n_folds", "folds", "train_seconds", "oof_map",
        "oof_auc"}


def vinbig(*args, config=None) -> int:
    return main([str(a) for a in args] + set_args(TINY) + (["--config", str(config)] if config else []) + ["-q"])


@pytest.fixture(scope="module")
def trained(synth_work, tmp_path_factory) -> Work:
    """A WORK of two folds: detector runs a and b (seed 1) and classifier run x, every fold trained, OOF predicted."""
    root = tmp_path_factory.mktemp("table")
    work = own_work(synth_work, root)
    folds = pd.read_csv(work / "folds.csv", dtype={"image_id": str})
    folds.assign(fold=folds["fold"] % 2).to_csv(work / "folds.csv", index=False)  # the shared WORK has 3 folds
    config = root / "runs.yaml"
    config.write_text(yaml.safe_dump({"runs": RUNS}))
    for stage, runs in RUNS.items():
        for run in runs:
            for k in (0, 1):
                assert vinbig(f"train-{stage}", "--work", work, "--run", run, "--fold", k, config=config) == 0
    assert vinbig("predict-detector", "--work", work, "--split", "oof", config=config) == 0
    assert vinbig("predict-classifier", "--work", work, "--split", "oof", config=config) == 0
    return Work(work)


def copy(work: Work, tmp_path) -> Work:
    shutil.copytree(work.root, tmp_path / "work", symlinks=True)
    return Work(tmp_path / "work")


def table(work: Work, capsys, *more) -> dict[tuple[str, str], dict]:
    """`vinbig runs --work WORK --json`, by (stage, run); stdout holds the JSON alone."""
    capsys.readouterr()
    assert main(["runs", "--work", str(work.root), "--json", "-q", *more]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(set(r) == KEYS for r in rows)
    return {(r["stage"], r["run"]): r for r in rows}


def text(work: Work, capsys) -> list[str]:
    capsys.readouterr()
    assert main(["runs", "--work", str(work.root), "-q"]) == 0
    return capsys.readouterr().out.splitlines()


def line_of(lines: list[str], stage: str, run: str) -> str:
    return next(line for line in lines if line.split()[:2] == [stage, run])


def test_json_has_each_run_its_changed_keys_folds_time_and_oof_score(trained, capsys):
    from fusion import oof_inputs, score_oof
    from sklearn.metrics import roc_auc_score

    rows = table(trained, capsys)
    assert set(rows) == {("detector", "a"), ("detector", "b"), ("classifier", "x"), ("fusion", "ensemble")}
    a, b, x = rows["detector", "a"], rows["detector", "b"], rows["classifier", "x"]
    assert b["changed"]["seed"] == 1 and "seed" not in a["changed"]  # b declared seed: 1; a keeps the default 0
    assert a["changed"]["imgsz"] == 64 and x["changed"]["backbone"] == "test_efficientnet"  # TINY's --set
    for row in (a, b, x):
        assert (row["folds_trained"], row["n_folds"], row["folds"]) == (2, 2, [0, 1]) and row["disagree"] == {}
        assert row["train_seconds"] > 0
    f = load_config()["fusion"]  # no config_fusion.yaml nor fusion.yaml in WORK: the defaults
    inputs = oof_inputs(trained, f)
    for run in ("a", "b"):
        assert rows["detector", run]["oof_map"] == pytest.approx(score_oof(trained, f, runs=[run], inputs=inputs)
                                                                 .result.mean_ap, abs=1e-12)
        assert rows["detector", run]["oof_auc"] is None
    assert rows["fusion", "ensemble"]["oof_map"] == pytest.approx(score_oof(trained, f, inputs=inputs).result.mean_ap,
                                                                  abs=1e-12)
    clf, labels = read_classifier_preds(trained, "oof"), read_labels(trained)
    abnormal = (labels.class_id != NO_FINDING).groupby(labels.image_id).any()
    assert x["oof_auc"] == pytest.approx(roc_auc_score(clf.image_id.map(abnormal).astype(int), clf.p_abnormal))
    assert x["oof_map"] is None


def test_each_run_is_scored_alone_with_the_fusion_values_of_work(trained, capsys, tmp_path):
    """Run b's OOF boxes made the truth's: b alone scores far above a alone, the ensemble between them; the fusion
    values are WORK's config_fusion.yaml over its fusion.yaml over the defaults."""
    from fusion import oof_inputs, score_oof

    work = copy(trained, tmp_path)
    preds = pd.read_parquet(work.detector_preds("oof"))
    truth = read_labels(work).query(f"class_id != {NO_FINDING}")
    fold = pd.read_csv(work.folds, dtype={"image_id": str}).set_index("image_id")["fold"]
    perfect = truth.assign(run="b", tta="none", score=0.9, fold=truth.image_id.map(fold))[list(preds.columns)]
    pd.concat([preds[preds.run == "a"], perfect]).to_parquet(work.detector_preds("oof"), index=False)
    (work.root / "fusion.yaml").write_text(yaml.safe_dump({"fusion": {"iou_thr": 0.5, "low": 0.0}}))
    rows = table(work, capsys)
    f = load_config(extra=[work.root / "fusion.yaml"])["fusion"]
    inputs = oof_inputs(work, f)
    for run in ("a", "b"):
        assert rows["detector", run]["oof_map"] == pytest.approx(score_oof(work, f, runs=[run], inputs=inputs)
                                                                 .result.mean_ap, abs=1e-12)
    ensemble = rows["fusion", "ensemble"]
    assert rows["detector", "a"]["oof_map"] < ensemble["oof_map"] < rows["detector", "b"]["oof_map"]
    assert ensemble["changed"] == {"iou_thr": 0.5, "low": 0.0}
    (work.root / "config_fusion.yaml").write_text(yaml.safe_dump({"fusion": {**f, "gate": False}}))
    assert table(work, capsys)["fusion", "ensemble"]["changed"] == {"iou_thr": 0.5, "gate": False, "low": 0.0}


def test_the_table_text_shows_the_same_aligned_under_a_header(trained, capsys):
    rows = table(trained, capsys)
    lines = text(trained, capsys)
    assert lines[0].split()[:2] == ["stage", "run"] and "OOF mAP@0.4" in lines[0] and "changed" in lines[0]
    for (stage, run), row in rows.items():
        line = line_of(lines, stage, run)
        assert line.index(run) == lines[0].index("run")  # aligned
        if row["oof_map"] is not None:
            assert f"{row['oof_map']:.4f}" in line
        if row["oof_auc"] is not None:
            assert f"{row['oof_auc']:.4f}" in line
        if stage != "fusion":
            assert " 2/2 " in line
    assert "seed=1" in line_of(lines, "detector", "b") and "seed=" not in line_of(lines, "detector", "a")


def test_a_partly_trained_run_shows_its_finished_folds(trained, capsys, tmp_path):
    work = copy(trained, tmp_path)
    shutil.rmtree(work.fold_dir("detector", 1, "b"))
    b = table(work, capsys)["detector", "b"]
    assert (b["folds_trained"], b["n_folds"], b["folds"]) == (1, 2, [0])
    assert " 1/2 " in line_of(text(work, capsys), "detector", "b")


def test_a_fold_is_finished_by_its_stamp_else_its_progress_else_its_saved_config(trained, capsys, tmp_path):
    work = copy(trained, tmp_path)
    for stage, run in (("detector", "a"), ("classifier", "x")):  # the fallbacks, as before progress.json
        for k in (0, 1):
            (work.fold_dir(stage, k, run) / "progress.json").unlink(missing_ok=True)
    results = [pd.read_csv(work.fold_dir("detector", k, "a") / "results.csv")["time"].iloc[-1] for k in (0, 1)]
    assert table(work, capsys)["detector", "a"]["train_seconds"] == pytest.approx(sum(results), abs=0.01)
    fold = work.fold_dir("detector", 1, "a")
    (fold / "config_detector.yaml").unlink()  # stopped during training: weights, no saved config
    assert table(work, capsys)["detector", "a"]["folds"] == [0]
    done = {"stage": "detector", "run": "a", "fold": 1, "epoch": 1, "epochs": 1, "fitness": 0.0, "metrics": {},
            "elapsed_s": 1.0, "finished": True}
    (fold / "progress.json").write_text(json.dumps(done))
    assert table(work, capsys)["detector", "a"]["folds"] == [0, 1]
    (fold / "progress.json").write_text(json.dumps({**done, "finished": False}))
    assert table(work, capsys)["detector", "a"]["folds"] == [0]
    (fold / ".trained").touch()  # the Makefile's (and vinbig train's) stamp: finished, whatever else says
    assert table(work, capsys)["detector", "a"]["folds"] == [0, 1]
    running = {**done, "stage": "classifier", "run": "x", "epoch": 0, "fitness": None, "elapsed_s": 1000.0,
               "finished": False}
    (work.fold_dir("classifier", 1, "x") / "progress.json").write_text(json.dumps(running))
    x = table(work, capsys)["classifier", "x"]
    assert x["folds"] == [0]  # progress.json says running: its saved config is an earlier session's
    fold0 = pd.read_csv(work.classifier_summary(0, "x"))["seconds"].sum()
    assert x["train_seconds"] == pytest.approx(1000.0 + fold0, abs=0.01)  # elapsed_s wins over summary.csv


def test_folds_that_saved_different_values_say_so(trained, capsys, tmp_path):
    work = copy(trained, tmp_path)
    path = work.fold_dir("detector", 1, "b") / "config_detector.yaml"
    saved = yaml.safe_load(path.read_text())
    saved["detector"]["seed"] = 2
    path.write_text(yaml.safe_dump(saved))
    b = table(work, capsys)["detector", "b"]
    assert b["disagree"] == {"seed": {"fold0": 1, "fold1": 2}}
    assert "seed=fold0:1|fold1:2" in line_of(text(work, capsys), "detector", "b")


def test_a_work_without_predictions_shows_no_score_and_imports_no_fusion(trained, capsys, tmp_path):
    work = copy(trained, tmp_path)
    shutil.rmtree(work.preds)
    rows = table(work, capsys)
    assert set(rows) == {("detector", "a"), ("detector", "b"), ("classifier", "x")}  # no ensemble without preds
    assert all(r["oof_map"] is None and r["oof_auc"] is None for r in rows.values())
    line = line_of(text(work, capsys), "detector", "a").split()
    assert line[4:6] == ["-", "-"]  # stage run folds time mAP AUC
    assert loaded(["runs", "--work", str(work.root), "-q"], (*HEAVY, "fusion._stage", "sklearn")) == []


def test_a_damaged_prediction_file_leaves_its_score_out_with_a_warning(trained, capsys, caplog, tmp_path):
    work = copy(trained, tmp_path)
    work.detector_preds("oof").write_bytes(b"not parquet")
    rows = table(work, capsys)
    assert rows["detector", "a"]["oof_map"] is None and ("fusion", "ensemble") not in rows
    assert rows["classifier", "x"]["oof_auc"] is not None  # the classifier's file is fine
    assert any("OOF mAP left out" in r.getMessage() and "detector_oof.parquet" in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING")


def test_stage_keeps_only_that_stages_rows(trained, capsys):
    assert set(table(trained, capsys, "--stage", "classifier")) == {("classifier", "x")}


def test_the_detector_time_sums_the_sessions_of_results_csv(tmp_path):
    # ultralytics writes seconds since its session started; a resumed run starts again from 0
    (tmp_path / "results.csv").write_text("  epoch,  time, metrics/mAP50(B)\n1,10,0\n2,20,0\n3,5,0\n4,15.5,0\n")
    assert fold_seconds("detector", tmp_path, {}) == pytest.approx(35.5)
    assert fold_seconds("detector", tmp_path, {"elapsed_s": 7}) == 7
    (tmp_path / "summary.csv").write_text("epoch,train_loss,val_loss,val_auc,lr,seconds\n0,1,1,0.5,0.1,3\n"
                                          "1,1,1,0.5,0.1,4\n")
    assert fold_seconds("classifier", tmp_path, {}) == pytest.approx(7)
    assert fold_seconds("detector", tmp_path / "none", {}) is None


@pytest.mark.parametrize("what", ["missing", "not a work folder", "a file"])
def test_a_bad_work_folder_is_one_line_naming_it_and_the_fix(tmp_path, caplog, capsys, what):
    work = tmp_path / "w"
    if what == "not a work folder":
        work.mkdir()
        (work / "notes.txt").write_text("")
    elif what == "a file":
        work.write_text("")
    assert main(["runs", "--work", str(work), "--json"]) == 2
    assert capsys.readouterr().out == ""
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and str(work) in errors[0] and "'vinbig folds --out'" in errors[0]


def test_without_work_it_lists_the_config_runs_as_before(tmp_path, capsys):
    config = tmp_path / "runs.yaml"
    config.write_text(yaml.safe_dump({"runs": RUNS}))
    assert main(["runs", "--stage", "detector", "--config", str(config)]) == 0
    assert capsys.readouterr().out == "a b\n"
    assert main(["runs", "--config", str(config)]) == 0
    assert "  b: seed=1" in capsys.readouterr().out.splitlines()
    assert main(["runs", "--json", "-q"]) == 2  # --json is the table's: it needs --work
    assert loaded(["runs", "--stage", "detector"], ("pandas", "numpy")) == []  # the Makefile's call stays light
