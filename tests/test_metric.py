"""vinbig.metric: hand-computed VOC 2010 cases at IoU > 0.4, agreement with map-boxes, `vinbig score`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from vinbig.app.cli import main
from vinbig.errors import SubmissionFormatError
from vinbig.metric import average_precision, evaluate, match, prepare_truth
from vinbig.submission import parse_prediction_strings

T_COLS = ["image_id", "class_id", "x_min", "y_min", "x_max", "y_max"]
P_COLS = ["image_id", "class_id", "score", "x_min", "y_min", "x_max", "y_max"]


def truth(*rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=T_COLS)


def preds(*rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=P_COLS)


BOX_A = (0, 0, 10, 10)
BOX_B = (100, 100, 120, 130)
FAR = (500, 500, 510, 510)


@pytest.mark.parametrize(
    "p, expected",
    [
        # equal confidences keep submission order: FP then TP -> precision 0, 1/2 at recall 0, 1/2
        ([("a", 0, 0.5, *FAR), ("b", 0, 0.5, *BOX_B)], 0.25),
        ([("b", 0, 0.5, *BOX_B), ("a", 0, 0.5, *FAR)], 0.5),
        # one truth box hit twice: the second hit is a false positive; ranks TP FP TP -> 1/2 + 1/2 * 2/3
        ([("a", 0, 0.9, *BOX_A), ("a", 0, 0.8, *BOX_A), ("b", 0, 0.7, *BOX_B)], 0.5 + 0.5 * 2 / 3),
        # IoU exactly 0.4 (40 / 100) is not a match; a hair above is
        ([("a", 0, 0.9, 0, 0, 10, 4), ("b", 0, 0.8, *BOX_B)], 0.5 * 1 / 2),
        ([("a", 0, 0.9, 0, 0, 10, 4.001), ("b", 0, 0.8, *BOX_B)], 1.0),
        # image b has no prediction: its truth still counts, recall stops at 1/2
        ([("a", 0, 0.9, *BOX_A)], 0.5),
        # ranking is across images by confidence, not by submission order
        ([("a", 0, 0.2, *FAR), ("b", 0, 0.9, *BOX_B), ("a", 0, 0.8, *BOX_A)], 1.0),
    ],
)
def test_hand_computed_ap(p, expected):
    t = truth(("a", 0, *BOX_A), ("b", 0, *BOX_B))
    r = evaluate(t, preds(*p))
    assert r.ap[0] == pytest.approx(expected, abs=1e-12)
    assert r.mean_ap == pytest.approx(expected, abs=1e-12) and r.present.sum() == 1


def test_iou_exactly_at_threshold_is_a_miss():
    t = truth(("a", 0, *BOX_A))
    assert evaluate(t, preds(("a", 0, 0.9, 0, 0, 10, 4))).ap[0] == 0.0
    assert evaluate(t, preds(("a", 0, 0.9, 0, 0, 10, 4.0001))).ap[0] == 1.0


def test_a_taken_best_box_does_not_fall_back_to_the_next():
    # both predictions overlap T1 best (IoU 1) and T2 above 0.4; the second is a false positive, T2 stays unfound
    t = truth(("a", 0, *BOX_A), ("a", 0, 0, 1, 10, 11))
    r = evaluate(t, preds(("a", 0, 0.9, *BOX_A), ("a", 0, 0.8, *BOX_A)))
    assert r.ap[0] == pytest.approx(0.5)


def test_class_without_predictions_scores_zero_and_absent_classes_leave_the_mean():
    t = truth(("a", 0, *BOX_A), ("b", 3, *BOX_B))
    r = evaluate(t, preds(("a", 0, 0.9, *BOX_A), ("a", 5, 0.9, *BOX_B)))
    assert r.ap[0] == 1.0 and r.ap[3] == 0.0 and np.isnan(r.ap[5])
    assert list(np.flatnonzero(r.present)) == [0, 3] and r.mean_ap == 0.5
    assert r.n_pred[5] == 1 and "absent" in r.format()


def test_no_finding_is_the_box_0_0_1_1_and_counts_once_per_image():
    t = pd.DataFrame({"image_id": ["a"] * 3 + ["b"], "class_id": [14, 14, 14, 0],
                      "x_min": [np.nan] * 3 + [0], "y_min": [np.nan] * 3 + [0], "x_max": [np.nan] * 3 + [10],
                      "y_max": [np.nan] * 3 + [10]})
    assert len(prepare_truth(t)) == 2
    r = evaluate(t, preds(("a", 14, 0.7, 0, 0, 1, 1), ("b", 14, 0.2, 0, 0, 1, 1), ("b", 0, 0.6, *BOX_A)))
    assert r.ap[14] == 1.0 and r.n_truth[14] == 1 and r.mean_ap == 1.0


def test_predictions_of_images_outside_the_truth_are_ignored():
    m = match(prepare_truth(truth(("a", 0, *BOX_A))), preds(("a", 0, 0.5, *BOX_A), ("zz", 0, 0.9, *BOX_A)))
    assert m.ignored == 1 and average_precision(m).ap[0] == 1.0


def test_dropping_whole_images_equals_scoring_without_them():
    t = truth(("a", 0, *BOX_A), ("b", 0, *BOX_B), ("c", 0, *BOX_A))
    p = preds(("a", 0, 0.3, *BOX_A), ("b", 0, 0.9, *FAR), ("c", 0, 0.5, *BOX_A), ("c", 0, 0.6, *BOX_A))
    keep = np.array([True, False, True])  # images a, b, c in truth order
    m = match(prepare_truth(t), p)
    assert average_precision(m, keep=keep).ap[0] == evaluate(t, p[p.image_id != "b"]).ap[0]


# --------------------------------------------------------------------------- map-boxes


def random_case(seed: int, n_images: int = 40):
    """Integer boxes (exact in map-boxes' float32), float32 scores without ties, every image predicted,
    each image's predictions in descending confidence (map-boxes matches in input order)."""
    rng = np.random.default_rng(seed)
    t_rows, p_rows = [], []
    for i in range(n_images):
        image = f"img{i:03d}"
        if rng.random() < 0.3:
            own = [(image, 14, 0, 0, 1, 1)]
        else:
            own = []
            for _ in range(rng.integers(1, 5)):
                x, y = rng.integers(0, 900, 2)
                w, h = rng.integers(10, 200, 2)
                own.append((image, int(rng.integers(0, 14)), x, y, x + w, y + h))
        t_rows += own
        for _ in range(rng.integers(1, 9)):
            if rng.random() < 0.6:
                base = own[rng.integers(len(own))]
                c = base[1] if rng.random() < 0.85 else int(rng.integers(0, 15))
                b = np.array(base[2:]) + rng.integers(-15, 16, 4)
                b[2:] = np.maximum(b[2:], b[:2] + 1)
            else:
                c = int(rng.integers(0, 15))
                x, y = rng.integers(0, 900, 2)
                b = np.array([x, y, x + rng.integers(10, 200), y + rng.integers(10, 200)])
            if c == 14:
                b = np.array([0, 0, 1, 1])
            p_rows.append((image, c, float(np.float32(rng.random())), *b.tolist()))
    p = preds(*p_rows).sort_values(["image_id", "score"], ascending=[True, False], kind="stable")
    assert not p.score.duplicated().any()
    return truth(*t_rows), p.reset_index(drop=True)


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_map_boxes(seed):
    map_boxes = pytest.importorskip("map_boxes")
    t, p = random_case(seed)
    ann = t[["image_id", "class_id", "x_min", "x_max", "y_min", "y_max"]].astype({"class_id": str}).to_numpy()
    det = p[["image_id", "class_id", "score", "x_min", "x_max", "y_min", "y_max"]].astype({"class_id": str}).to_numpy()
    theirs_map, theirs = map_boxes.mean_average_precision_for_boxes(ann, det, iou_threshold=0.4, verbose=False)
    r = evaluate(t, p)
    assert {str(c) for c in np.flatnonzero(r.present)} == {k for k, (_, n) in theirs.items() if n > 0}
    for c in np.flatnonzero(r.present):
        assert abs(r.ap[c] - theirs[str(c)][0]) < 1e-9
    assert abs(r.mean_ap - theirs_map) < 1e-9


# --------------------------------------------------------------------------- parsing and `vinbig score`


def test_parse_prediction_strings_keeps_submission_order():
    df = parse_prediction_strings(["a", "b"], ["3 0.5 1 2 3 4 14 0.1 0 0 1 1", "14 1 0 0 1 1"])
    assert df.image_id.tolist() == ["a", "a", "b"] and df.class_id.tolist() == [3, 14, 14]
    assert df.iloc[0][["score", "x_min", "y_min", "x_max", "y_max"]].tolist() == [0.5, 1, 2, 3, 4]


@pytest.mark.parametrize("text, words", [("3 0.5 1 2 3", "line 3 (b): 5 numbers"),
                                         ("3 0.5 1 2 3 x", "line 3 (b): a value is not a number"),
                                         ("3 0.5 1 2 3 4 3.7 0.8 0 0 10 10", "line 3 (b): class id 3.7 is not"),
                                         ("15 0.9 0 0 10 10", "line 3 (b): class id 15 is not an integer in 0..14")])
def test_parse_names_the_line_of_a_bad_string(text, words):
    with pytest.raises(SubmissionFormatError, match=words.replace("(", r"\(").replace(")", r"\)")):
        parse_prediction_strings(["a", "b"], ["14 1 0 0 1 1", text])


def test_score_command_table_and_json(tmp_path, capsys):
    pd.DataFrame({"image_id": ["a", "b", "c"], "class_id": [0, 14, 3], "x_min": [0, None, 5],
                  "y_min": [0, None, 5], "x_max": [10, None, 50], "y_max": [10, None, 50]}).to_csv(
        tmp_path / "truth.csv", index=False)
    # image c is missing from the submission: its class-3 box is never found
    pd.DataFrame({"image_id": ["a", "b"], "PredictionString": ["0 0.9 0 0 10 10", "14 0.8 0 0 1 1"]}).to_csv(
        tmp_path / "sub.csv", index=False)
    assert main(["score", "--truth", str(tmp_path / "truth.csv"), "--submission", str(tmp_path / "sub.csv"),
                 "-q"]) == 0
    out = capsys.readouterr().out
    assert "mAP@0.4 over 3 classes present: 0.6667" in out and "Atelectasis" in out
    assert main(["score", "--truth", str(tmp_path / "truth.csv"), "--submission", str(tmp_path / "sub.csv"),
                 "--json", "-q"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["map"] == pytest.approx(2 / 3) and data["classes"][3]["ap"] == 0.0
    assert data["classes"][1]["present"] is False and data["classes"][1]["ap"] is None


def test_score_command_reports_a_bad_submission_without_traceback(tmp_path, capsys):
    (tmp_path / "truth.csv").write_text("image_id,class_id,x_min,y_min,x_max,y_max\na,0,0,0,10,10\n")
    (tmp_path / "sub.csv").write_text("image_id,PredictionString\na,0 0.9 0 0 10\n")
    assert main(["score", "--truth", str(tmp_path / "truth.csv"), "--submission", str(tmp_path / "sub.csv")]) == 2
    assert "line 2 (a): 5 numbers" in capsys.readouterr().err


TRUTH_CSV = "image_id,class_id,x_min,y_min,x_max,y_max\na,0,0,0,10,10\nb,14,,,,\n"
SUB_CSV = "image_id,PredictionString\na,0 0.9 0 0 10 10\nb,14 0.8 0 0 1 1\n"
PNG_BYTES = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10"


@pytest.mark.parametrize("bad, content, words", [
    ("sub", b"", "sub.csv is not a readable CSV (it is empty); a submission is a CSV with the header "
            "image_id,PredictionString"),
    ("sub", b"image_id,PredictionString\n", "sub.csv has a header but no rows"),
    ("truth", b"", "truth.csv is not a readable CSV (it is empty); give a box table image_id,class_id,x_min,y_min,"
              "x_max,y_max"),
    ("sub", PNG_BYTES, "sub.csv is not a readable CSV (a binary file)"),
    ("truth", PNG_BYTES, "truth.csv is not a readable CSV (a binary file)"),
    ("sub", b"image_id,PredictionString\na,0 0.9 0 0 10 10\nb,\x9d\xff\n", "sub.csv is not a readable CSV (line 3: not UTF-8 text)"),
    ("sub", b"image_id,PredictionString\na,0 0.9 0 0 10 10,x\n",
     "sub.csv is not a readable CSV (line 2: 3 fields, more than the 2 of the header"),
    ("sub", b"image_id,PredictionString\na,0 0.9 0 0 10 10\nb,14 nan 0 0 1 1\n",
     "sub.csv: line 3 (b): group 1 (14 nan 0 0 1 1): values must be finite numbers"),
    ("sub", b"image_id,PredictionString\na,0 0.9 0 0 10 inf\nb,14 1 0 0 1 1\n",
     "sub.csv: line 2 (a): group 1 (0 0.9 0 0 10 inf): values must be finite numbers"),
    ("truth", b"image_id,class_id,x_min,y_min,x_max,y_max\na,0,0,0,10,10\nb,,,,,\n",
     "truth.csv:3: class id (empty) is not an integer in 0..14"),
], ids=["empty-sub", "header-only-sub", "empty-truth", "binary-sub", "binary-truth", "latin1-sub", "comma-sub",
        "nan-conf", "inf-box", "empty-class"])
def test_score_refuses_unreadable_files_and_nan_in_one_line(tmp_path, caplog, bad, content, words):
    files = {"truth": TRUTH_CSV.encode(), "sub": SUB_CSV.encode(), bad: content}
    for name, data in files.items():
        (tmp_path / f"{name}.csv").write_bytes(data)
    assert main(["score", "--truth", str(tmp_path / "truth.csv"), "--submission", str(tmp_path / "sub.csv")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert errors[0].startswith(str(tmp_path)) and words in errors[0], errors[0]


def test_score_warns_about_no_finding_boxes_other_than_0_0_1_1(tmp_path, caplog, capsys):
    (tmp_path / "truth.csv").write_text(TRUTH_CSV)
    (tmp_path / "sub.csv").write_text("image_id,PredictionString\na,0 0.9 0 0 10 10 14 0.1 0 0 10 10\n"
                                      "b,14 0.8 0 0 5 5\n")
    assert main(["score", "--truth", str(tmp_path / "truth.csv"), "--submission", str(tmp_path / "sub.csv")]) == 0
    assert "mAP@0.4 over 2 classes present: 0.5000" in capsys.readouterr().out  # scored as misses, as Kaggle does
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"{tmp_path / 'sub.csv'}: 2 class-14 (No finding) boxes are not 0 0 1 1 (first: line 2, a: 14 0.1 0 0 10 10)")
    assert "'vinbig validate' rejects them" in warnings[0]
