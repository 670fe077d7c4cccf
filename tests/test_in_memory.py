"""Each stage's in-memory call gives the rows of its file command: ``detector.load_models(...).predict`` those of
predict-detector, ``classifier.load_models(...).predict`` those of predict-classifier, ``fusion.fuse_and_gate`` those
of fuse; and the gate's decision, said in one place, is what the gate did.

The fold models are saved by hand with random weights (untrained, they find boxes all the same), over the
session's synthetic work folder: no training.
"""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import classifier_checkpoint, detector_checkpoint, own_work
from vinbig.artifacts import NO_FINDING, PRED_COLUMNS, Work, png_path, read_classifier_preds, read_meta

FOLDS = 3  # the session's synthetic work folder's


@pytest.fixture(scope="module")
def predicted(synth_work, tmp_path_factory):
    """A work folder with random fold models of both stages and the test split predicted by both file commands:
    ``(work, config, test image ids, their greyscale PNGs, meta.csv by image id)``."""
    import classifier
    import detector
    from vinbig.config import load_config

    work = Work(own_work(synth_work, tmp_path_factory.mktemp("in_memory")))
    for k in range(FOLDS):
        detector_checkpoint(work.checkpoint("detector", k), seed=k, perturb=True, biases=True)
        classifier_checkpoint(work.checkpoint("classifier", k), seed=k, std=50, imgsz=48 if k == 2 else 64)
    cfg = load_config(overrides=["detector.imgsz=64", "detector.conf=0.000001", "detector.device=cpu",
                                 "detector.predict_batch=4", "classifier.device=cpu", "classifier.workers=0",
                                 "classifier.tta=hflip", "classifier.predict_batch=4", "fusion.workers=1",
                                 "fusion.low=0.45", "fusion.high=0.55"])
    detector.predict(work, "test", cfg["detector"], tta=["hflip"])
    classifier.predict(work, "test", cfg["classifier"])
    meta = read_meta(work.images("test")).set_index("image_id")
    ids = list(meta.index)
    images = [cv2.imread(str(png_path(work.images("test"), i)), cv2.IMREAD_GRAYSCALE) for i in ids]
    return work, cfg, ids, images, meta


def test_the_detectors_in_memory_give_the_rows_of_predict_detector(predicted):
    import detector

    work, cfg, ids, images, meta = predicted
    models = detector.load_models(work, {"default": cfg["detector"]}, list(range(FOLDS)), tta=["hflip"])
    assert models.keys == [("default", k) for k in range(FOLDS)] and models.sets == ["none", "hflip"]
    n = models.batch  # the command's batches; it writes them model by model, as a stable sort by model orders them
    ours = pd.concat([models.predict(images[i:i + n], meta.iloc[i:i + n]) for i in range(0, len(ids), n)],
                     ignore_index=True).sort_values(["run", "fold"], kind="stable", ignore_index=True)
    theirs = pd.read_parquet(work.detector_preds("test"))
    assert len(theirs) > 100 and set(theirs["fold"]) == set(range(FOLDS))
    pd.testing.assert_frame_equal(ours.astype(theirs.dtypes.to_dict()), theirs, check_exact=True)


def test_the_classifiers_in_memory_give_the_rows_of_predict_classifier(predicted):
    import classifier

    work, cfg, ids, images, _ = predicted
    models = classifier.load_models(work, {"default": cfg["classifier"]}, list(range(FOLDS)))
    ours = models.predict(images, ids)
    theirs = classifier.predict(work, "test", cfg["classifier"]).preds
    key = ["run", "fold", "image_id"]
    ours, theirs = (d.loc[:, list(theirs.columns)].sort_values(key, ignore_index=True) for d in (ours, theirs))
    assert len(ours) == len(ids) * (FOLDS + 1) and ours["p_abnormal"].nunique() > len(ids)
    pd.testing.assert_frame_equal(ours, theirs, check_exact=True, check_dtype=False)


def test_fuse_and_gate_gives_the_rows_of_fuse_and_the_gate_decision_says_what_the_gate_did(predicted):
    import fusion

    work, cfg, ids, _, meta = predicted
    f = cfg["fusion"]
    on_file = fusion.predict(work, "test", f)  # what 'vinbig fuse' writes, before the submission strings
    p = fusion.image_probabilities(read_classifier_preds(work, "test"), f["classifier_weights"])
    ours = fusion.fuse_and_gate(pd.read_parquet(work.detector_preds("test")), meta, p, f)
    assert list(ours.image_ids) == list(on_file.image_ids) == ids
    pd.testing.assert_frame_equal(ours.preds, on_file.preds, check_exact=True)
    assert list(ours.preds.columns) == list(PRED_COLUMNS) and list(ours.gate) == list(on_file.gate)

    assert set(ours.gate) <= set(fusion.GATES) and len(set(ours.gate)) > 1
    for image_id, gate in zip(ours.image_ids, ours.gate):  # each decision, and what the rows show
        rows = ours.preds[ours.preds["image_id"] == image_id]
        boxes, nf = rows[rows["class_id"] != NO_FINDING], rows.loc[rows["class_id"] == NO_FINDING, "score"]
        expect = {"normal": (False, [1.0]), "no box": (False, [1.0]), "abnormal": (True, []),
                  "unsure": (True, [pytest.approx(1 - p[image_id])])}[gate]
        assert (len(boxes) > 0, nf.tolist()) == expect, (image_id, gate)
        assert gate == fusion.gate_decision(p[image_id], len(boxes) > 0, f["low"], f["high"])

    off = fusion.fuse_and_gate(pd.read_parquet(work.detector_preds("test")), meta, None, f)
    assert set(off.gate) == {"off"}


@pytest.mark.parametrize("p, has_boxes, ours, page", [
    (None, True, "off", "none"), (np.nan, False, "off", "none"), (0.1, True, "normal", "nf"),
    (0.1, False, "normal", "nf"), (0.5, True, "unsure", "both"), (0.5, False, "no box", "both"),
    (0.9, True, "abnormal", "boxes"), (0.9, False, "no box", "boxes"), (0.3, True, "unsure", "both"),
    (0.7, True, "abnormal", "boxes"),
])
def test_the_gate_is_said_in_one_place_and_the_report_page_takes_its_words_from_it(p, has_boxes, ours, page):
    """`vinbig predict`'s gate column and the report page derive from fusion.gate_decision (low 0.3, high 0.7); the
    page names what P(abnormal) decides, whatever the boxes."""
    import fusion
    from fusion._html import gate_decision as page_decision

    assert fusion.gate_decision(None if p is None else p, has_boxes, 0.3, 0.7) == ours
    assert page_decision(None if p is None or np.isnan(p) else p, 0.3, 0.7) == page
    assert page_decision(0.5, None, None) is None  # the gate off: the page shows no decision
