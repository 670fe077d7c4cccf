"""fusion: WBF equal to ensemble-boxes, normalization by the original size, the gate, tuning, the
submission for every sample image, the report, and the commands (prediction files made by hand)."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from vinbig.artifacts import (
    CLASSIFIER_PRED_COLUMNS,
    DETECTOR_PRED_COLUMNS,
    NO_FINDING_PREDICTION,
    Work,
    read_folds,
    read_labels,
    read_meta,
    write_csv,
)
from vinbig.app.cli import main
from vinbig.config import load_config
from vinbig.errors import ArtifactError, ConfigError
from vinbig.metric import evaluate

from fusion import apply_gate, fuse, gate_scores, image_probabilities, load_inputs, wbf
from fusion._fuse import set_weight
from vinbig.submission import validate_submission
from fusion._tune import oof_truth

# --------------------------------------------------------------------------- hand-made prediction files


def make_detector_preds(work, split: str, ttas=("none", "hflip"), n_folds: int = 3, seed: int = 0,
                        drop: tuple = (), runs=("default",)) -> pd.DataFrame:
    """Detector predictions shaped like the real file: out-of-fold from labels.csv (jittered, some boxes
    dropped, low-scoring extra boxes), test from random boxes; one set per (run, fold, tta)."""
    rng = np.random.default_rng(seed)
    work = work if isinstance(work, Work) else Work(work)
    meta = read_meta(work.images("train" if split == "oof" else "test")).set_index("image_id")
    if split == "oof":
        folds = read_folds(work).set_index("image_id")["fold"]
        labels = read_labels(work)
        labels = labels[labels.class_id != 14]
        images = [(i, [int(folds[i])]) for i in folds.index]
    else:
        labels = None
        images = [(i, list(range(n_folds))) for i in meta.index if i not in drop]
    rows = []
    for image_id, fs in images:
        w, h = meta.loc[image_id, ["width", "height"]].to_numpy(float)
        if labels is not None:
            base = labels.loc[labels.image_id == image_id, ["class_id", "x_min", "y_min", "x_max", "y_max"]]
            base = base.to_numpy(float)
        else:
            k = rng.integers(1, 4)
            xy = rng.uniform(0, 0.7, (k, 2)) * [w, h]
            base = np.column_stack([rng.integers(0, 14, k), xy, xy + rng.uniform(0.1, 0.3, (k, 2)) * [w, h]])
        for run in runs:
            for f in fs:
                for tta in ttas:
                    for c, x1, y1, x2, y2 in base:
                        if rng.random() < 0.2:
                            continue
                        j = rng.normal(0, 0.03, 4) * [w, h, w, h]
                        rows.append((image_id, run, f, tta, int(c), rng.uniform(0.3, 1), x1 + j[0], y1 + j[1],
                                     x2 + j[2], y2 + j[3]))
                    for _ in range(rng.integers(0, 6)):
                        xy = rng.uniform(0, 0.8, 2) * [w, h]
                        rows.append((image_id, run, f, tta, int(rng.integers(0, 14)), rng.uniform(0.001, 0.3), *xy,
                                     *(xy + rng.uniform(0.05, 0.2, 2) * [w, h])))
    df = pd.DataFrame(rows, columns=list(DETECTOR_PRED_COLUMNS))
    wh = meta.loc[df.image_id, ["width", "height"]].to_numpy(float)
    for col, k in (("x_min", 0), ("x_max", 0), ("y_min", 1), ("y_max", 1)):
        df[col] = np.clip(df[col], 0, wh[:, k])
    df = df[(df.x_max > df.x_min + 1) & (df.y_max > df.y_min + 1)].reset_index(drop=True)
    work.preds.mkdir(parents=True, exist_ok=True)
    df.to_parquet(work.detector_preds(split), index=False)
    return df


def make_classifier_preds(work, split: str, n_folds: int = 3, seed: int = 0, runs=("default",)) -> pd.DataFrame:
    """P(abnormal) of each classifier run: out-of-fold once per image (higher for abnormal images), test per fold
    plus fold -1 means."""
    rng = np.random.default_rng(seed)
    work = work if isinstance(work, Work) else Work(work)
    if split == "oof":
        folds = read_folds(work)
        labels = read_labels(work)
        abnormal = set(labels.image_id[labels.class_id != 14])
        frames = []
        for run in runs:
            p = [rng.uniform(0.4, 1) if i in abnormal else rng.uniform(0, 0.6) for i in folds.image_id]
            frames.append(pd.DataFrame({"image_id": folds.image_id, "run": run, "fold": folds.fold, "p_abnormal": p}))
        df = pd.concat(frames, ignore_index=True)
    else:
        ids = read_meta(work.images("test")).image_id
        frames = []
        for run in runs:
            per = pd.DataFrame([(i, run, f, rng.random()) for f in range(n_folds) for i in ids],
                               columns=list(CLASSIFIER_PRED_COLUMNS))
            mean = per.groupby("image_id", as_index=False)["p_abnormal"].mean().assign(run=run, fold=-1)
            frames += [per, mean]
        df = pd.concat(frames, ignore_index=True)
    write_csv(df, work.classifier_preds(split), CLASSIFIER_PRED_COLUMNS)
    return df


def fusion_cfg(**kw) -> dict:
    f = load_config()["fusion"]
    f.update(workers=1, **kw)
    return f


# --------------------------------------------------------------------------- WBF against ensemble-boxes


def random_sets(seed: int, n_sets: int, n: int = 40, quantize: bool = False):
    """Prediction sets clustered around a few objects, some boxes reversed or outside [0, 1]."""
    rng = np.random.default_rng(seed)
    centres, sizes, classes = rng.uniform(0.1, 0.9, (8, 2)), rng.uniform(0.03, 0.3, (8, 2)), rng.integers(0, 4, 8)
    boxes, scores, labels = [], [], []
    for _ in range(n_sets):
        m = int(rng.integers(0, n + 1))
        k = rng.integers(0, 8, m)
        c = centres[k] + rng.normal(0, 0.02, (m, 2))
        wh = sizes[k] * rng.uniform(0.7, 1.3, (m, 2))
        b = np.concatenate([c - wh / 2, c + wh / 2], axis=1)
        b[: m // 10] = b[: m // 10, [2, 3, 0, 1]]  # reversed corners
        s = rng.uniform(0.001, 1, m) ** 2
        boxes.append(b)
        scores.append(np.round(s, 1) if quantize else s)  # ties and zero scores
        labels.append(classes[k])
    return boxes, scores, labels


@pytest.mark.parametrize("conf_type", ["avg", "max", "box_and_model_avg", "absent_model_aware_avg"])
@pytest.mark.parametrize("seed, iou_thr, skip, quantize, weights", [
    (0, 0.4, 0.0, False, [1.0, 2.0, 0.5, 1.0]),
    (1, 0.55, 0.05, False, [1.0, 2.0, 0.5, 1.0]),
    (2, 0.3, 0.0, True, [1.0, 2.0, 0.5, 1.0]),
    (6, 0.4, 0.0, True, [0.1, 0.2, 0.3, 0.7, 0.9, 1.1, 0.3, 0.6, 0.2]),  # sums that round: numpy's order matters
])
def test_wbf_equals_ensemble_boxes(conf_type, seed, iou_thr, skip, quantize, weights):
    from ensemble_boxes import weighted_boxes_fusion

    boxes, scores, labels = random_sets(seed, n_sets=len(weights), quantize=quantize)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b1, s1, l1 = weighted_boxes_fusion(boxes, scores, labels, weights=weights, iou_thr=iou_thr,
                                           skip_box_thr=skip, conf_type=conf_type)
    model = np.concatenate([np.full(len(b), t) for t, b in enumerate(boxes)])
    b2, s2, l2 = wbf(np.concatenate(boxes), np.concatenate(scores), np.concatenate(labels), model, weights,
                     iou_thr, skip, conf_type)
    assert len(b1) > 5
    np.testing.assert_array_equal(b1, b2)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(l1, l2)


def test_many_images_in_one_call_equal_the_library_image_by_image():
    from ensemble_boxes import weighted_boxes_fusion

    from fusion._wbf import wbf_batch

    images = [random_sets(seed, n_sets=n) for seed, n in ((3, 2), (4, 3), (5, 2))]
    images.insert(1, ([np.zeros((0, 4))] * 2, [np.zeros(0)] * 2, [np.zeros(0)] * 2))  # an image without boxes
    group_weights = [np.array([1.0, 3.0]), np.array([0.5, 1.0, 2.0])]
    group = [0, 0, 1, 0]
    boxes = np.concatenate([np.concatenate(b) for b, _, _ in images])
    scores = np.concatenate([np.concatenate(s) for _, s, _ in images])
    labels = np.concatenate([np.concatenate(lab) for _, _, lab in images])
    model = np.concatenate([np.concatenate([np.full(len(b), t) for t, b in enumerate(bs)]) for bs, _, _ in images])
    offsets = np.cumsum([0] + [sum(len(b) for b in bs) for bs, _, _ in images])
    img, b2, s2, l2 = wbf_batch(boxes, scores, labels, model, offsets, group, group_weights, 0.45, 0.01, "avg")
    for i, (bs, ss, ls) in enumerate(images):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            b1, s1, l1 = weighted_boxes_fusion(bs, ss, ls, weights=list(group_weights[group[i]]), iou_thr=0.45,
                                               skip_box_thr=0.01)
        np.testing.assert_array_equal(b2[img == i], b1)
        np.testing.assert_array_equal(s2[img == i], s1)
        np.testing.assert_array_equal(l2[img == i], l1)


def test_wbf_without_boxes():
    b, s, lab = wbf(np.zeros((0, 4)), [], [], [], [1.0, 1.0], 0.4)
    assert b.shape == (0, 4) and len(s) == 0 and len(lab) == 0


@pytest.mark.parametrize("name, weight", [("default/1/hflip", 3.0), ("default/0/hflip", 2.0),
                                          ("default/1/none", 0.5), ("default/0/none", 1.0), ("m640/0/none", 4.0),
                                          ("m640/1/hflip", 5.0)])
def test_set_weight_lookup(name, weight):
    """Sets are RUN/FOLD/TTA; the most specific matching key wins; two-part keys (before named runs) mean */FOLD/TTA."""
    weights = {"1/hflip": 3.0, "*/hflip": 2.0, "1/*": 0.5, "m640/*/*": 4.0, "m640/1/hflip": 5.0}
    assert set_weight(name, weights) == weight


def test_set_weight_times_run_weight():
    assert set_weight("m640/0/hflip", {"*/*/hflip": 0.5}, {"m640": 2.0, "s1024": 0.0}) == 1.0
    assert set_weight("s1024/0/none", {}, {"m640": 2.0}) == 1.0


# --------------------------------------------------------------------------- loading and fusing files


def one_image_work(tmp_path, width=300, height=600, rows=(), split="test", fold=0):
    """A work folder with one image of width x height (PNG 50 x 100) and the given detector rows."""
    work = Work(tmp_path / "w")
    d = work.images("train" if split == "oof" else "test")
    d.mkdir(parents=True)
    meta = {"image_id": ["img"], "width": [width], "height": [height], "png_width": [50], "png_height": [100]}
    for col in ("photometric", "bits_stored", "voi", "window_low", "window_high", "transfer_syntax"):
        meta[col] = ["x"]
    pd.DataFrame(meta).to_csv(d / "meta.csv", index=False)
    pd.DataFrame({"image_id": ["img"], "fold": [fold]}).to_csv(work.folds, index=False)
    work.preds.mkdir()
    pd.DataFrame(list(rows), columns=list(DETECTOR_PRED_COLUMNS)).astype({"fold": int, "class_id": int}).to_parquet(
        work.detector_preds(split), index=False)
    return work


def test_boxes_are_normalized_by_the_original_size_not_the_png(tmp_path):
    work = one_image_work(tmp_path, 300, 600, [("img", "default", 0, "none", 3, 0.8, 30, 60, 150, 240)])
    inp = load_inputs(work, "test")
    np.testing.assert_allclose(inp.boxes, [[0.1, 0.1, 0.5, 0.4]])
    out = fuse(inp, iou_thr=0.4, workers=1)
    np.testing.assert_allclose(out[["x_min", "y_min", "x_max", "y_max"]].to_numpy(), [[30, 60, 150, 240]])
    assert out.class_id.tolist() == [3] and out.score.tolist() == pytest.approx([0.8])


@pytest.mark.parametrize("split, expected", [("test", 0.8 / 4), ("oof", 0.8 / 2)])
def test_every_set_of_an_image_counts_as_a_model(tmp_path, split, expected):
    # sets: folds 0 and 1 x none/hflip; only 0/none boxed the object. Test: 4 models; oof: the image's fold 0 has 2
    rows = [("img", "default", 0, "none", 3, 0.8, 30, 60, 150, 240),
            ("img", "default", 0, "hflip", 5, 0.5, 10, 10, 20, 20),
            ("img", "default", 1, "none", 5, 0.5, 10, 10, 20, 20),
            ("img", "default", 1, "hflip", 5, 0.5, 10, 10, 20, 20)]
    if split == "oof":
        rows = [r for r in rows if r[2] == 0] + [("other", "default", 1, "none", 5, 0.5, 10, 10, 20, 20),
                                                 ("other", "default", 1, "hflip", 5, 0.5, 10, 10, 20, 20)]
    work = one_image_work(tmp_path, rows=rows, split=split)
    inp = load_inputs(work, split)
    if split == "test":  # the sets are named RUN/FOLD/TTA, in file order
        assert inp.sets == ["default/0/none", "default/0/hflip", "default/1/none", "default/1/hflip"]
    out = fuse(inp, iou_thr=0.4, workers=1)
    assert out.loc[out.class_id == 3, "score"].tolist() == pytest.approx([expected])


def test_the_sets_of_every_detector_run_are_fused_with_their_run_weights(tmp_path):
    """Two runs of one fold: four sets RUN/FOLD/TTA; a run's weight multiplies its sets' weights; weight 0 (or a
    choice of runs) leaves a run's sets out; a run the file lacks is named with the command that predicts it."""
    box = (3, 0.8, 30, 60, 150, 240)
    rows = [("img", run, 0, tta, *box) for run in ("s1024", "m640") for tta in ("none", "hflip")]
    work = one_image_work(tmp_path, rows=rows)
    inp = load_inputs(work, "test", weights={"*/*/hflip": 0.5}, run_weights={"m640": 2.0})
    assert inp.sets == ["s1024/0/none", "s1024/0/hflip", "m640/0/none", "m640/0/hflip"]
    assert inp.group_weights[0].tolist() == [1.0, 0.5, 2.0, 1.0]
    assert inp.n_boxes == 4
    only = load_inputs(work, "test", run_weights={"s1024": 0})
    assert only.sets == ["m640/0/none", "m640/0/hflip"] and only.n_boxes == 2
    assert load_inputs(work, "test", runs=["s1024"]).sets == ["s1024/0/none", "s1024/0/hflip"]
    with pytest.raises(ArtifactError, match=r"detector_test.parquet holds no predictions of run\(s\) b3 \(it has "
                                            r"s1024, m640\); run 'vinbig predict-detector'"):
        load_inputs(work, "test", runs=["b3"])
    with pytest.raises(ConfigError, match="fusion.run_weights leaves out every detector run"):
        load_inputs(work, "test", run_weights={"s1024": 0, "m640": 0})


def test_engines_and_processes_give_the_same_boxes(work_copy, monkeypatch):
    import fusion._fuse as fuse_module

    make_detector_preds(work_copy.work, "test", seed=1)
    inp = load_inputs(Work(work_copy.work), "test")
    ref = fuse(inp, iou_thr=0.5, skip_box_thr=0.01, engine="ensemble_boxes", workers=1)
    assert len(ref) > 10
    pd.testing.assert_frame_equal(fuse(inp, iou_thr=0.5, skip_box_thr=0.01, workers=1), ref)
    monkeypatch.setattr(fuse_module, "_BOXES_PER_PROCESS", 1)
    pd.testing.assert_frame_equal(fuse(inp, iou_thr=0.5, skip_box_thr=0.01, workers=2), ref)


# --------------------------------------------------------------------------- the gate


def boxes(*rows):
    return pd.DataFrame(rows, columns=["image_id", "class_id", "score", "x_min", "y_min", "x_max", "y_max"])


@pytest.mark.parametrize(
    "p, expected",
    [
        (0.05, [(14, 1.0)]),  # p < low: only No finding
        (0.10, [(3, 0.9), (5, 0.4), (14, 0.9)]),  # low <= p < high: boxes and 14 (1 - p)
        (0.50, [(3, 0.9), (5, 0.4), (14, 0.5)]),
        (0.90, [(3, 0.9), (5, 0.4)]),  # p >= high: boxes alone
        (None, [(3, 0.9), (5, 0.4)]),  # no probability for the image: boxes alone
    ],
)
def test_gate_branches(p, expected):
    fused = boxes(("a", 3, 0.9, 1, 1, 5, 5), ("a", 5, 0.4, 2, 2, 6, 6), ("a", 14, 0.7, 0, 0, 1, 1))
    probs = pd.Series({"a": p} if p is not None else {"zz": 0.5})
    out = apply_gate(fused, ["a"], probs, low=0.1, high=0.9)
    assert list(zip(out.class_id, out.score.round(6))) == expected
    assert (out.loc[out.class_id == 14, ["x_min", "y_min", "x_max", "y_max"]].to_numpy() == [0, 0, 1, 1]).all()


def test_gate_gives_no_finding_to_images_left_without_boxes_and_keeps_image_order():
    fused = boxes(("b", 3, 0.9, 1, 1, 5, 5))
    out = apply_gate(fused, ["a", "b", "c"], pd.Series({"a": 0.5, "b": 0.5, "c": 0.99}), low=0.1, high=0.9)
    assert list(zip(out.image_id, out.class_id, out.score)) == [("a", 14, 1.0), ("b", 3, 0.9), ("b", 14, 0.5),
                                                               ("c", 14, 1.0)]


def test_gate_off_keeps_one_detector_no_finding_row_per_image():
    fused = boxes(("a", 14, 0.3, 0, 0, 1, 1), ("a", 14, 0.6, 0, 0, 0.9, 1), ("a", 2, 0.5, 1, 1, 4, 4))
    out = apply_gate(fused, ["a", "b"], None, 0.1, 0.9)
    assert list(zip(out.image_id, out.class_id, out.score)) == [("a", 2, 0.5), ("a", 14, 0.6), ("b", 14, 1.0)]


def test_probabilities_use_the_fold_mean_rows_when_present():
    clf = pd.DataFrame({"image_id": ["a", "a", "a", "b", "b"], "run": "default", "fold": [0, 1, -1, 0, 1],
                        "p_abnormal": [0.2, 0.4, 0.35, 0.1, 0.3]})
    assert image_probabilities(clf).sort_index().to_dict() == pytest.approx({"a": 0.35, "b": 0.2})


def classifier_runs() -> pd.DataFrame:
    """Three classifier runs: a (out-of-fold rows), b (per fold and the fold -1 mean; no image y), c (image w only
    in it)."""
    rows = [("x", "a", 0, 0.2), ("y", "a", 1, 0.4),
            ("x", "b", 0, 0.5), ("x", "b", 1, 0.7), ("x", "b", -1, 0.6), ("z", "b", 0, 0.8), ("z", "b", -1, 0.9),
            ("x", "c", 0, 1.0), ("w", "c", 0, 0.1)]
    return pd.DataFrame(rows, columns=list(CLASSIFIER_PRED_COLUMNS))


def test_probabilities_are_the_weighted_mean_over_classifier_runs():
    clf = classifier_runs()
    # equal weights by default; each run's own fold -1 mean is its value (b's x: 0.6, not the mean of 0.5 and 0.7)
    p = image_probabilities(clf).sort_index()
    assert p.to_dict() == pytest.approx({"w": 0.1, "x": (0.2 + 0.6 + 1.0) / 3, "y": 0.4, "z": 0.9})
    # weighted; a run of weight 0 is left out (its images too); an image missing from a run is averaged over the
    # runs that scored it
    p = image_probabilities(clf, {"a": 1.0, "b": 3.0, "c": 0}).sort_index()
    assert p.to_dict() == pytest.approx({"x": (0.2 * 1 + 0.6 * 3) / 4, "y": 0.4, "z": 0.9})
    assert p.dtype == np.float64
    # unnamed runs weigh 1
    assert image_probabilities(clf, {"b": 2.0})["x"] == pytest.approx((0.2 + 0.6 * 2 + 1.0) / 4)
    # only the runs asked for
    assert image_probabilities(clf, runs=["b"]).sort_index().to_dict() == pytest.approx({"x": 0.6, "z": 0.9})
    assert image_probabilities(clf, {"a": 0, "b": 0, "c": 0}).empty


def test_run_names_that_look_like_numbers_are_runs_not_numbers():
    clf = classifier_runs().replace({"run": {"a": "640", "b": "1024"}})
    assert image_probabilities(clf, {"640": 1.0, "1024": 3.0, "c": 0})["x"] == pytest.approx(0.5)


# --------------------------------------------------------------------------- tuning


def test_gate_grid_scores_equal_the_metric_of_the_gated_predictions(work_copy):
    work = Work(work_copy.work)
    make_detector_preds(work, "oof")
    make_classifier_preds(work, "oof")
    inp = load_inputs(work, "oof")
    fused = fuse(inp, iou_thr=0.4, workers=1)
    truth = oof_truth(work, inp.image_ids)
    p = image_probabilities(pd.read_csv(work.classifier_preds("oof"), dtype={"image_id": str}))
    p.iloc[:3] = np.nan  # images without a probability
    table = gate_scores(truth, fused, inp.image_ids, p.dropna(), [0.0, 0.3, 0.6], [0.2, 0.5, 0.8, 1.01])
    assert len(table) == 3 * 4 - 3  # pairs with low > high are skipped
    for r in table.itertuples():
        expected = evaluate(truth, apply_gate(fused, inp.image_ids, p.dropna(), r.low, r.high))
        assert r.map == pytest.approx(expected.mean_ap, abs=1e-12), (r.low, r.high)


def test_tune_writes_fusion_yaml_that_fuse_reads(work_copy, capsys, caplog):
    work = Work(work_copy.work)
    make_detector_preds(work, "oof")
    make_classifier_preds(work, "oof")
    assert main(["tune", "--work", str(work.root), "--set", "fusion.tune_iou_thr=[0.3, 0.5]",
                 "--set", "fusion.tune_skip_box_thr=[0.0]", "--set", "fusion.tune_conf_type=[avg]",
                 "--set", "fusion.tune_low=[0.0, 0.2]", "--set", "fusion.tune_high=[0.5, 1.01]"]) == 0
    out = capsys.readouterr().out
    assert "WBF settings tried" in out and "gate grid" in out and "best: iou_thr=" in out
    tuned = yaml.safe_load(work.fusion_config.read_text())["fusion"]
    assert set(tuned) == {"iou_thr", "skip_box_thr", "conf_type", "low", "high"} and tuned["iou_thr"] in (0.3, 0.5)
    assert main(["fuse", "--work", str(work.root), "--split", "oof"]) == 0
    assert f"tuned values from {work.fusion_config}" in caplog.text
    assert "mAP@0.4" in capsys.readouterr().out
    saved = yaml.safe_load((work.root / "config_fusion.yaml").read_text())["fusion"]
    assert saved["iou_thr"] == tuned["iou_thr"] and saved["low"] == tuned["low"]
    assert main(["fuse", "--work", str(work.root), "--split", "oof", "--set", "fusion.iou_thr=0.45", "-q"]) == 0
    assert yaml.safe_load((work.root / "config_fusion.yaml").read_text())["fusion"]["iou_thr"] == 0.45


# --------------------------------------------------------------------------- the submission


def test_submission_has_every_sample_image_in_order(work_copy, tmp_path, caplog):
    work = Work(work_copy.work)
    # a private images/test: its meta.csv, and an errors.csv naming a DICOM that failed
    shared = work.images("test").resolve()
    work.images("test").unlink()
    work.images("test").mkdir()
    shutil.copy(shared / "meta.csv", work.images("test") / "meta.csv")
    failed = "f" * 32
    pd.DataFrame({"file": [f"/data/test/{failed}.dicom"], "image_id": [failed], "reason": ["no pixel data"]}).to_csv(
        work.images("test") / "errors.csv", index=False)
    sample = pd.read_csv(work_copy.data / "sample_submission.csv")
    sample = pd.concat([sample.iloc[:3], pd.DataFrame({"image_id": [failed], "PredictionString": ["14 1 0 0 1 1"]}),
                        sample.iloc[3:]], ignore_index=True)
    sample.to_csv(tmp_path / "sample.csv", index=False)
    unpredicted = sample.image_id[0]
    make_detector_preds(work, "test", drop=(unpredicted,))
    make_classifier_preds(work, "test")

    assert main(["fuse", "--work", str(work.root), "--split", "test", "--sample", str(tmp_path / "sample.csv")]) == 0
    sub = pd.read_csv(work.submission)
    assert sub.image_id.tolist() == sample.image_id.tolist()
    assert sub.set_index("image_id").loc[failed, "PredictionString"] == NO_FINDING_PREDICTION
    assert f"whose DICOM failed to convert get '14 1 0 0 1 1': {failed}" in caplog.text
    assert f"no detector predictions and get '14 1 0 0 1 1': {unpredicted}" in caplog.text
    assert sub.set_index("image_id").loc[unpredicted, "PredictionString"] == NO_FINDING_PREDICTION
    assert "passes 'vinbig validate'" in caplog.text
    assert validate_submission(work.submission, tmp_path / "sample.csv", work.images("test") / "meta.csv") == []


def test_fuse_test_finds_the_sample_through_data_and_asks_for_it_otherwise(work_copy, caplog):
    work = Work(work_copy.work)
    make_detector_preds(work, "test")
    assert main(["fuse", "--work", str(work.root), "--split", "test", "--data", str(work_copy.data),
                 "--out", str(work.root / "sub.csv")]) == 0
    assert "gate off: no classifier predictions" in caplog.text
    expected = pd.read_csv(work_copy.data / "sample_submission.csv").image_id.tolist()
    assert pd.read_csv(work.root / "sub.csv").image_id.tolist() == expected
    # no option: the dataset named in images/test/source.txt, which 'vinbig images' wrote
    assert main(["fuse", "--work", str(work.root), "--split", "test"]) == 0
    assert pd.read_csv(work.submission).image_id.tolist() == expected
    # a work folder that does not say where its images came from: ask
    test_images = work.images("test")
    shared = test_images.resolve()
    test_images.unlink()  # work_copy links the shared folder; make one of its own without source.txt
    test_images.mkdir()
    for name in ("meta.csv", "errors.csv"):
        shutil.copy(shared / name, test_images)
    caplog.clear()
    assert main(["fuse", "--work", str(work.root), "--split", "test"]) == 2
    assert "give --sample DATA/sample_submission.csv or --data DATA" in caplog.text


def test_empty_inputs_are_scored_or_refused_with_a_reason(work_copy, tmp_path, caplog, capsys):
    work = Work(work_copy.work)
    work.preds.mkdir()
    empty = pd.DataFrame({c: pd.Series(dtype="float32") for c in DETECTOR_PRED_COLUMNS})
    empty = empty.astype({"image_id": str, "run": str, "tta": str, "fold": "int16", "class_id": "int16"})
    empty.to_parquet(work.detector_preds("oof"))
    # not one box: every image is still scored, and gets "No finding" (gate off)
    assert main(["fuse", "--work", str(work.root), "--split", "oof"]) == 0
    assert "holds no box at all" in caplog.text
    normal = pd.read_csv(work.labels).query("class_id == 14").image_id.nunique()
    out = capsys.readouterr().out
    assert re.search(rf"14  No finding +0\.\d+ +{normal} +30\n", out), out  # 30 images, 30 class-14 rows

    (tmp_path / "sample.csv").write_text("id,PredictionString\nx,14 1 0 0 1 1\n")
    make_detector_preds(work, "test")
    caplog.clear()
    assert main(["fuse", "--work", str(work.root), "--split", "test", "--sample", str(tmp_path / "sample.csv")]) == 2
    assert "lacks the columns ['image_id']" in caplog.text

    (tmp_path / "truth.csv").write_text("image_id,class_id,x_min,y_min,x_max,y_max\n")
    (tmp_path / "sub.csv").write_text("image_id,PredictionString\nx,14 1 0 0 1 1\n")
    caplog.clear()
    assert main(["score", "--truth", str(tmp_path / "truth.csv"), "--submission", str(tmp_path / "sub.csv")]) == 2
    assert "holds no truth rows" in caplog.text


@pytest.mark.parametrize("split", ["oof", "test"])
def test_detector_predictions_of_a_vinbig_before_named_runs_are_refused_with_the_command(work_copy, caplog, split):
    """A prediction file without the run column (written before named runs) names itself and the command that
    writes it again; no submission or fused file is written."""
    work = Work(work_copy.work)
    old = make_detector_preds(work, split).drop(columns="run")
    old.to_parquet(work.detector_preds(split), index=False)
    command = f"vinbig predict-detector --work {work.root} --split {split}"
    with pytest.raises(ArtifactError) as e:
        load_inputs(work, split)
    assert str(e.value).startswith(f"{work.detector_preds(split)} lacks the columns ['run'] (it has ")
    assert str(e.value).endswith(f"; run '{command}' again")
    assert main(["fuse", "--work", str(work.root), "--split", split, "--data", str(work_copy.data)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [str(e.value)]
    assert not work.submission.exists()


def test_classifier_predictions_of_a_vinbig_before_named_runs_are_refused_with_the_command(work_copy, caplog):
    work = Work(work_copy.work)
    make_detector_preds(work, "oof")
    make_classifier_preds(work, "oof").drop(columns="run").to_csv(work.classifier_preds("oof"), index=False)
    assert main(["fuse", "--work", str(work.root), "--split", "oof"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith(f"{work.classifier_preds('oof')} lacks the columns ['run']")
    assert errors[0].endswith(f"run 'vinbig predict-classifier --work {work.root} --split oof' again")


@pytest.mark.parametrize("where", ["under a file", "a folder"])
def test_fuse_checks_that_the_output_can_be_written_before_fusing(work_copy, tmp_path, caplog, monkeypatch, where):
    import fusion._levels

    work = Work(work_copy.work)
    make_detector_preds(work, "test")
    (tmp_path / "file.txt").write_text("x")
    out = tmp_path / "file.txt" / "sub.csv" if where == "under a file" else tmp_path / "folder"
    out.mkdir(exist_ok=True) if where == "a folder" else None

    def no_fusion(*args, **kwargs):
        raise AssertionError("the fusion started before the output was checked")

    monkeypatch.setattr(fusion._levels, "fuse", no_fusion)
    assert main(["fuse", "--work", str(work.root), "--split", "test", "--data", str(work_copy.data),
                 "--out", str(out)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith(f"cannot write {out}: "), errors
    assert ("it is a folder" if where == "a folder" else "a file stands where the folder should be") in errors[0]
    assert (tmp_path / "file.txt").read_text() == "x" and not (work.root / "config_fusion.yaml").exists()


def test_fuse_names_the_file_when_the_disk_is_full(work_copy, caplog, monkeypatch):
    import errno

    import vinbig.submission

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    work = Work(work_copy.work)
    make_detector_preds(work, "test")
    monkeypatch.setattr(vinbig.submission, "write_csv", full_disk)
    assert main(["fuse", "--work", str(work.root), "--split", "test", "--data", str(work_copy.data)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"cannot write {work.submission}: No space left on device; free disk space or choose another "
                      "--out (nothing was left half-written)"]
    assert not work.submission.exists()


def test_bad_detector_values_are_counted_and_named_and_a_mostly_bad_file_refused(work_copy, caplog):
    work = Work(work_copy.work)
    df = make_detector_preds(work, "test")
    n = len(df)
    ids = df.image_id.copy()
    df.loc[0, "score"] = np.nan
    df.loc[1, "x_max"] = np.inf
    df.loc[2, "score"] = 1.5
    df.loc[3, ["x_min", "x_max"]] = df.loc[3, ["x_max", "x_min"]].to_numpy()  # inverted
    df.loc[4, "image_id"] = "zzz"
    df.to_parquet(work.detector_preds("test"), index=False)
    inp = load_inputs(work, "test")
    assert inp.n_boxes == n - 5
    warning = [r.getMessage() for r in caplog.records if "boxes are bad" in r.getMessage()]
    assert len(warning) == 1 and warning[0].startswith(f"{work.detector_preds('test')}: 5 of {n} boxes are bad and "
                                                       f"left out: 2 with a NaN or infinite value ({ids[0]}")
    for words in (f"1 with a score outside [0, 1] ({ids[2]})", f"1 inverted (x_max < x_min or y_max < y_min) "
                  f"({ids[3]})", f"1 of images not in {work.images('test') / 'meta.csv'} (zzz)",
                  f"run 'vinbig predict-detector --work {work.root} --split test' again"):
        assert words in warning[0], warning[0]
    out = fuse(inp, iou_thr=0.5, workers=1)
    assert np.isfinite(out.score).all() and out.score.between(0, 1).all()

    df.loc[: n // 2, "image_id"] = "from_another_dataset"  # rows 0..n//2: more than half
    df.to_parquet(work.detector_preds("test"), index=False)
    caplog.clear()
    assert main(["fuse", "--work", str(work.root), "--split", "test", "--data", str(work_copy.data)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith(f"{work.detector_preds('test')}: {n // 2 + 1} of {n} boxes "
                                                     "are bad: "), errors
    assert errors[0].endswith(f"The file is damaged or was made for other images; run 'vinbig predict-detector "
                              f"--work {work.root} --split test' again")
    assert not work.submission.exists()


# --------------------------------------------------------------------------- the report


def test_report_on_a_tiny_work_folder(work_copy, capsys):
    import cv2

    work = Work(work_copy.work)
    make_detector_preds(work, "oof")
    make_classifier_preds(work, "oof")
    assert main(["report", "--work", str(work.root), "-q", "--set", "fusion.report_images=1"]) == 0
    assert "mAP@0.4" in capsys.readouterr().out
    for name in ("per_class_ap.png", "pr_curves.png", "metrics.csv", "config_fusion.yaml"):
        assert (work.report / name).is_file(), name
    overlays = sorted((work.report / "overlays").glob("*.png"))
    labels = read_labels(work)
    assert len(overlays) == labels.loc[labels.class_id != 14, "class_id"].nunique()
    image = cv2.imread(str(overlays[0]))
    assert image is not None and max(image.shape[:2]) >= 768 and image.std() > 10
    metrics = pd.read_csv(work.report / "metrics.csv")
    assert len(metrics) == 15 and {"ap", "n_truth", "n_pred"} <= set(metrics.columns)


def test_report_on_a_full_disk_names_the_picture_and_leaves_no_half_written_file(work_copy, caplog, monkeypatch):
    import errno

    import matplotlib.figure

    work = Work(work_copy.work)
    make_detector_preds(work, "oof")

    def full_disk(self, fname, *args, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half")  # what a disk that fills mid-write leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk)
    assert main(["report", "--work", str(work.root), "-q"]) == 2
    assert f"cannot write {work.report / 'per_class_ap.png'}: No space left on device" in caplog.text
    assert not (work.report / "per_class_ap.png").exists() and not list(work.report.glob(".*.partial"))
    assert not (work.report / "config_fusion.yaml").exists()  # a failed run saves no config
