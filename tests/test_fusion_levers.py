"""fusion's levers for ensembles of runs: two-level fusion (fusion.levels), rank calibration per run and class
(fusion.calibration), the conf_type grid, equal or searched run weights (fusion.tune_run_weights_by), two
classifier runs in the gate; and that tune, fuse, report and the in-memory path of `vinbig predict` honour them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from vinbig.app.cli import main
from vinbig.artifacts import PRED_COLUMNS, Work, read_classifier_preds, read_detector_preds, read_meta
from vinbig.errors import ConfigError
from vinbig.metric import average_precision, match

from fusion import fuse_and_gate, image_probabilities, predict
from fusion._calibrate import KNOTS, calibrate, calibrate_scores, check_knots, fit_knots
from fusion._fuse import prepare
from fusion._levels import Arranged
from fusion._tune import oof_truth, tune
from test_fusion import fusion_cfg, make_classifier_preds, make_detector_preds, one_image_work

TWO_RUNS = ("a", "b")


def as_yaml(value) -> str:
    """`value` as one line of YAML for --set (Python's 2e-05 is a string to YAML)."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip()


def two_runs(work_copy, splits=("oof", "test")) -> Work:
    """Hand-made predictions of detector runs a and b (b another seed: other jitter and scores) and of classifier
    runs a and b."""
    work = Work(work_copy.work)
    for split in splits:
        a = make_detector_preds(work, split, runs=("a",), seed=1)
        b = make_detector_preds(work, split, runs=("b",), seed=2)
        b = b.assign(score=b["score"] ** 2)  # b's scores mean something else
        pd.concat([a, b], ignore_index=True).to_parquet(work.detector_preds(split), index=False)
        make_classifier_preds(work, split, runs=TWO_RUNS)
    return work


# --------------------------------------------------------------------------- two-level fusion


def test_two_level_fusion_of_one_run_is_the_flat_fusion(work_copy):
    """One run: its sets fused first, then the one fused set alone, is exactly today's fusion; calibration of a
    run alone changes nothing either."""
    work = Work(work_copy.work)
    make_detector_preds(work, "test", seed=3)
    flat = predict(work, "test", fusion_cfg()).preds
    assert len(flat) > 20
    for levels, calibration in (("runs", "none"), ("runs", "rank"), ("flat", "rank")):
        two = predict(work, "test", fusion_cfg(levels=levels, calibration=calibration, calibration_knots={})).preds
        pd.testing.assert_frame_equal(two, flat)
    one_set = one_image_work(work_copy.work.parent / "one", rows=[("img", "r", 0, "none", 3, 0.8, 30, 60, 150, 240),
                                                                  ("img", "r", 0, "none", 3, 0.6, 33, 60, 150, 250),
                                                                  ("img", "r", 0, "none", 5, 0.3, 10, 10, 40, 40)])
    pd.testing.assert_frame_equal(predict(one_set, "test", fusion_cfg(levels="runs")).preds,
                                  predict(one_set, "test", fusion_cfg()).preds)


def test_two_level_fusion_of_hand_made_boxes(tmp_path):
    """Run a: folds 0 and 1 box the object (0.8 and 0.4); run b, one fold: the object (0.9) and a lone box of class
    5 (0.5). WBF avg at iou 0.4, on a 100 x 100 image."""
    rows = [("img", "a", 0, "none", 3, 0.8, 10, 10, 50, 50), ("img", "a", 1, "none", 3, 0.4, 12, 10, 52, 50),
            ("img", "b", 0, "none", 3, 0.9, 20, 10, 60, 50), ("img", "b", 0, "none", 5, 0.5, 70, 70, 90, 90)]
    work = one_image_work(tmp_path, 100, 100, rows)
    src = prepare(work, "test")

    def fused(levels: str, run_weights: dict) -> list:
        out = Arranged(src, {}, run_weights, levels).fuse(iou_thr=0.4, conf_type="avg", workers=1)
        return out.sort_values("class_id")[["class_id", "score", "x_min", "y_min", "x_max", "y_max"]].to_numpy()

    # first level, run a: box (0.8 * a0 + 0.4 * a1) / 1.2, score (0.8 + 0.4) / 2 = 0.6; run b (one set): itself
    a_x1, a_x2 = (0.8 * 10 + 0.4 * 12) / 1.2, (0.8 * 50 + 0.4 * 52) / 1.2  # 10.667, 50.667
    # second level (IoU 0.62): box (0.9 * b + 0.6 * a) / 1.5, score (0.9 + 0.6) / 2 runs; the lone box 0.5 / 2 runs
    expected = [[3, 0.75, (0.9 * 20 + 0.6 * a_x1) / 1.5, 10, (0.9 * 60 + 0.6 * a_x2) / 1.5, 50],
                [5, 0.25, 70, 70, 90, 90]]
    np.testing.assert_allclose(fused("runs", {}), expected, rtol=1e-6)
    # run weights at the second level: a weighs 2, b 1
    expected_w = [[3, (0.9 + 1.2) / 2 * 2 / 3, (0.9 * 20 + 1.2 * a_x1) / 2.1, 10, (0.9 * 60 + 1.2 * a_x2) / 2.1, 50],
                  [5, 0.5 / 3, 70, 70, 90, 90]]
    np.testing.assert_allclose(fused("runs", {"a": 2.0}), expected_w, rtol=1e-6)
    # flat: the three sets at once: box (0.9 b + 0.8 a0 + 0.4 a1) / 2.1, score 2.1 / 3 sets; the lone box 0.5 / 3
    flat = [[3, 0.7, (0.9 * 20 + 0.8 * 10 + 0.4 * 12) / 2.1, 10, (0.9 * 60 + 0.8 * 50 + 0.4 * 52) / 2.1, 50],
            [5, 0.5 / 3, 70, 70, 90, 90]]
    np.testing.assert_allclose(fused("flat", {}), flat, rtol=1e-6)


def test_a_run_that_did_not_predict_an_images_fold_is_no_model_of_it(tmp_path):
    """Out of fold, run b has no set of fold 0: the image's box of run a is not lowered by b at the second level."""
    rows = [("img", "a", 0, "none", 3, 0.8, 10, 10, 50, 50), ("other", "b", 1, "none", 3, 0.8, 10, 10, 50, 50)]
    work = one_image_work(tmp_path, 100, 100, rows, split="oof")
    src = prepare(work, "oof", image_ids=["img"])
    out = Arranged(src, {}, {}, "runs").fuse(iou_thr=0.4, workers=1)
    assert out.score.tolist() == pytest.approx([0.8])


# --------------------------------------------------------------------------- rank calibration


def test_calibration_is_strictly_increasing_within_a_run_and_class():
    rng = np.random.default_rng(0)
    scores = np.concatenate([np.round(rng.uniform(0.001, 0.3, 500), 2), rng.uniform(0.3, 1, 50), [0.05] * 200])
    preds = pd.DataFrame({"run": "a", "class_id": 3, "score": scores})
    knots = fit_knots(pd.concat([preds, pd.DataFrame({"run": "b", "class_id": [0], "score": [0.4]})]))
    assert set(knots) == {"a/3", "b/0"} and len(knots["a/3"].split()) == KNOTS
    check_knots(knots)
    grid = np.linspace(0, 1, 20001)
    for key in knots:  # ties among the knots, and one box alone
        y = calibrate_scores(grid, knots[key])
        assert (np.diff(y) > 0).all() and 0 <= y[0] < y[-1] <= 1
    # the OOF scores become their ranks: about uniform on (0, 1)
    assert np.quantile(calibrate_scores(scores, knots["a/3"]), [0.25, 0.5, 0.75]) == pytest.approx([0.25, 0.5, 0.75],
                                                                                                    abs=0.03)


def test_a_run_alone_ranks_its_boxes_as_before(work_copy, capsys):
    work = two_runs(work_copy, splits=("oof",))
    preds = read_detector_preds(work, "oof")
    knots = fit_knots(preds)
    calibrated = calibrate(preds, knots)
    truth = oof_truth(work, read_meta(work.images("train")).image_id)
    for run in TWO_RUNS:  # every box of the run, unfused: the same AP in every class
        raw, cal = (p[(p.run == run) & (p.tta == "none")].loc[:, list(PRED_COLUMNS)] for p in (preds, calibrated))
        assert not np.allclose(raw.score, cal.score)
        np.testing.assert_array_equal(average_precision(match(truth, cal)).ap, average_precision(match(truth, raw)).ap)

    def fuse_alone(*sets) -> str:
        assert main(["fuse", "--work", str(work.root), "--split", "oof", "--run", "b", "-q", "--set",
                     f"fusion.calibration_knots={as_yaml(knots)}", *sets]) == 0
        return capsys.readouterr().out

    assert fuse_alone("--calibration", "rank", "--levels", "runs") == fuse_alone()


def test_calibration_without_knots_is_one_line_naming_vinbig_tune(work_copy, capsys):
    work = two_runs(work_copy, splits=("oof",))
    assert main(["fuse", "--work", str(work.root), "--split", "oof", "--calibration", "rank", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no knots of detector run(s) a, b; run 'vinbig tune'" in err
    with pytest.raises(ConfigError, match="calibration_knots\\['a/15'\\]"):
        check_knots({"a/15": "0.1 0.2"})
    for bad in ("0.3 0.2", "0.1 x", "", "0.5 1.5"):
        with pytest.raises(ConfigError, match="non-decreasing scores in \\[0, 1\\], space-separated"):
            check_knots({"a/1": bad})


# --------------------------------------------------------------------------- tune, fuse, report, predict


GRIDS = ["fusion.tune_iou_thr=[0.4, 0.6]", "fusion.tune_skip_box_thr=[0.0]", "fusion.tune_low=[0.0, 0.3]",
         "fusion.tune_high=[0.8, 1.01]", "fusion.tune_run_weights=[0.0, 1.0, 2.0]", "fusion.workers=1"]


def sets(work: Work, *overrides: str) -> list[str]:
    """--config declaring runs a and b of both stages, and the small grids."""
    config = work.root.parent / "two_runs.yaml"
    config.write_text(yaml.safe_dump({"runs": {stage: {r: {} for r in TWO_RUNS}
                                               for stage in ("detector", "classifier")}}))
    return ["--config", str(config), *(a for s in (*GRIDS, *overrides) for a in ("--set", s))]


def test_tune_tries_every_conf_type_level_and_calibration_and_fuse_report_and_predict_follow(work_copy, capsys):
    work = two_runs(work_copy)
    levers = ("fusion.tune_levels=[flat, runs]", "fusion.tune_calibration=[none, rank]")  # the defaults try flat, none
    assert main(["tune", "--work", str(work.root), "-q", *sets(work, *levers)]) == 0
    out = capsys.readouterr().out
    for words in ("box_and_model_avg", "absent_model_aware_avg", " runs ", " rank ", "ensemble, equal weights",
                  "ensemble, tuned weights"):
        assert words in out, words
    tuned = yaml.safe_load(work.fusion_config.read_text())["fusion"]
    assert {"levels", "calibration", "calibration_knots", "run_weights", "classifier_weights"} <= set(tuned)
    assert len(tuned["calibration_knots"]) > 14  # both runs' classes, one line each in the file
    assert work.fusion_config.read_text().count("\n") < 60
    best = float(out.rsplit("OOF mAP ", 1)[1].split()[0].rstrip(";"))
    # fuse and report read fusion.yaml and score the chosen setting as tune did
    assert main(["fuse", "--work", str(work.root), "--split", "oof", "-q", *sets(work)[:2]]) == 0
    assert f"{best:.4f}" in capsys.readouterr().out
    # the in-memory path of vinbig predict gives the rows of vinbig fuse, with every lever on
    f = fusion_cfg(**{**tuned, "levels": "runs", "calibration": "rank"})
    by_file = predict(work, "test", f)
    meta = read_meta(work.images("test")).set_index("image_id")
    p = image_probabilities(read_classifier_preds(work, "test"), f["classifier_weights"])
    in_memory = fuse_and_gate(read_detector_preds(work, "test"), meta, p, f, by_file.image_ids, workers=1)
    pd.testing.assert_frame_equal(in_memory.preds, by_file.preds)
    np.testing.assert_array_equal(in_memory.gate, by_file.gate)
    assert not by_file.preds.equals(predict(work, "test", {**f, "levels": "flat", "calibration": "none"}).preds)


def test_report_scores_the_levers_as_fuse_does(work_copy, capsys):
    work = two_runs(work_copy, splits=("oof",))
    knots = fit_knots(read_detector_preds(work, "oof"))
    levers = ["--set", "fusion.levels=runs", "--set", "fusion.calibration=rank", "--set",
              f"fusion.calibration_knots={as_yaml(knots)}", "--set", "fusion.report_images=0", "-q"]
    assert main(["fuse", "--work", str(work.root), "--split", "oof", *levers]) == 0
    fused = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["report", "--work", str(work.root), *levers]) == 0
    assert fused in capsys.readouterr().out


@pytest.mark.parametrize("by", ["search", "equal"])
def test_tune_writes_searched_or_equal_run_weights_and_shows_both(work_copy, capsys, by):
    work = two_runs(work_copy, splits=("oof",))
    assert main(["tune", "--work", str(work.root), "-q", *sets(work, "fusion.tune_conf_type=[avg]",
                 "fusion.tune_levels=[flat]", "fusion.tune_calibration=[none]", f"fusion.tune_run_weights_by={by}",
                 "fusion.run_weights={a: 2}")]) == 0
    out = capsys.readouterr().out
    table = {line[:32].strip(): line for line in out.splitlines() if line.startswith("ensemble, ")}
    assert set(table) == {"ensemble, equal weights", "ensemble, tuned weights"}
    written = "ensemble, equal weights" if by == "equal" else "ensemble, tuned weights"
    assert table[written].endswith(" *") and sum(line.endswith(" *") for line in table.values()) == 1
    tuned = yaml.safe_load(work.fusion_config.read_text())["fusion"]
    if by == "equal":  # every run the config keeps weighs 1
        assert tuned["run_weights"] == {"a": 1.0, "b": 1.0} and tuned["classifier_weights"] == {"a": 1.0, "b": 1.0}
    assert float(out.rsplit("OOF mAP ", 1)[1].split()[0].rstrip(";")) == pytest.approx(
        float(table[written].split()[-2]), abs=1e-4)


def test_tune_of_one_detector_run_writes_no_levels_or_calibration(work_copy):
    work = Work(work_copy.work)
    make_detector_preds(work, "oof")
    f = fusion_cfg(tune_iou_thr=[0.4], tune_skip_box_thr=[0.0], tune_low=[0.0], tune_high=[1.01])
    result = tune(work, f)
    assert set(result.table.conf_type) == {"avg", "max", "box_and_model_avg", "absent_model_aware_avg"}
    assert set(result.values) == {"iou_thr", "skip_box_thr", "conf_type"}
    assert result.table[["levels", "calibration"]].drop_duplicates().values.tolist() == [["flat", "none"]]


# --------------------------------------------------------------------------- two classifier runs


def test_two_classifier_runs_fuse_in_the_gate(work_copy):
    work = two_runs(work_copy, splits=("test",))
    boxes, clf = read_detector_preds(work, "test"), read_classifier_preds(work, "test")
    meta = read_meta(work.images("test")).set_index("image_id")
    f = fusion_cfg(low=0.3, high=0.7)

    def gated(weights: dict, only=None):
        p = image_probabilities(clf if only is None else clf[clf.run == only], weights)
        return fuse_and_gate(boxes, meta, p, f, workers=1)

    a_alone = gated({}, only="a")
    weighted = gated({"a": 1.0, "b": 0.0})
    pd.testing.assert_frame_equal(weighted.preds, a_alone.preds)
    np.testing.assert_array_equal(weighted.gate, a_alone.gate)
    both = gated({})
    assert not both.preds.equals(a_alone.preds) and not both.preds.equals(gated({}, only="b").preds)
