"""The submission: writing prediction strings, and `vinbig validate` naming the line and problem of each fault."""

from __future__ import annotations

import pandas as pd
import pytest

from vinbig.app.cli import main

from vinbig.submission import prediction_strings, validate_submission

IDS = ("aaa", "bbb", "ccc")
GOOD = {"aaa": "14 1 0 0 1 1", "bbb": "3 0.9 10 20 110 220.5 0 0.05 1 1 50 50",
        "ccc": "14 0.3 0 0 1 1 7 0.7 0 0 200 300"}


@pytest.fixture
def files(tmp_path):
    """sample.csv and meta.csv (ccc is 200 x 300) for three images; write(rows) -> path of a submission."""
    pd.DataFrame({"image_id": IDS, "PredictionString": ["14 1 0 0 1 1"] * 3}).to_csv(tmp_path / "sample.csv",
                                                                                 index=False)
    pd.DataFrame({"image_id": IDS, "width": [400, 400, 200], "height": [400, 400, 300]}).to_csv(
        tmp_path / "meta.csv", index=False)

    def write(rows, header="image_id,PredictionString") -> str:
        path = tmp_path / "sub.csv"
        path.write_text("\n".join([header] + [f"{i},{s}" for i, s in rows]) + "\n")
        return str(path)

    return tmp_path, write


def good_rows(**changes):
    return [(i, changes.get(i, GOOD[i])) for i in IDS]


@pytest.mark.parametrize(
    "rows, line, words",
    [
        (good_rows(bbb="3 0.9 10 20 110"), 3, "5 values, not a multiple of 6"),
        (good_rows(bbb="3 0.9 10 20 x 220"), 3, "'x' is not a number"),
        (good_rows(bbb="15 0.9 10 20 110 220"), 3, "class id 15 is not an integer in 0..14"),
        (good_rows(bbb="3.5 0.9 10 20 110 220"), 3, "class id 3.5 is not an integer"),
        (good_rows(bbb="-1 0.9 10 20 110 220"), 3, "class id -1 is not an integer"),
        (good_rows(bbb="3 1.2 10 20 110 220"), 3, "confidence 1.2 is outside [0, 1]"),
        (good_rows(bbb="3 -0.1 10 20 110 220"), 3, "confidence -0.1 is outside [0, 1]"),
        (good_rows(bbb="3 nan 10 20 110 220"), 3, "values must be finite numbers"),
        (good_rows(bbb="3 0.9 110 20 110 220"), 3, "x_min 110 is not below x_max 110"),
        (good_rows(bbb="3 0.9 10 220 110 20"), 3, "y_min 220 is not below y_max 20"),
        (good_rows(bbb="3 0.9 -5 20 110 220"), 3, "negative coordinate"),
        (good_rows(ccc="7 0.7 0 0 201 300"), 4, "box outside the 200 x 300 image"),
        (good_rows(ccc="7 0.7 0 0 200 300.5"), 4, "box outside the 200 x 300 image"),
        (good_rows(aaa="14 1 0 0 10 10"), 2, "class 14 (No finding) must have the box 0 0 1 1"),
        (good_rows(aaa=""), 2, "empty PredictionString; write '14 1 0 0 1 1'"),
        (good_rows(bbb="3 0.9 10 20 110 220,extra"), 3, "3 fields; a row is image_id,PredictionString"),
        (good_rows()[:2], None, "ccc: missing image (sample line 4)"),
        (good_rows() + [("bbb", GOOD["bbb"])], 5, "duplicate: the image is already on line 3"),
        (good_rows() + [("zzz", "14 1 0 0 1 1")], 5, "extra image: not in the sample submission"),
    ],
)
def test_validator_names_line_and_problem(files, rows, line, words):
    tmp, write = files
    faults = validate_submission(write(rows), tmp / "sample.csv", tmp / "meta.csv")
    assert len(faults) == 1, [f.format("sub.csv") for f in faults]
    assert faults[0].line == line and words in faults[0].format("sub.csv")


def test_validator_checks_the_header_and_caps_faults_per_row(files):
    tmp, write = files
    faults = validate_submission(write(good_rows(), header="id,PredictionString"), tmp / "sample.csv")
    assert [f.line for f in faults] == [1] and "it must be image_id,PredictionString" in faults[0].problem
    faults = validate_submission(write(good_rows(bbb=" ".join(["3 2 10 20 110 220"] * 6))), tmp / "sample.csv")
    assert len(faults) == 4 and "... and 3 more in this row" in faults[-1].problem


def test_without_meta_boxes_are_not_checked_against_the_image(files):
    tmp, write = files
    path = write(good_rows(ccc="7 0.7 0 0 5000 5000"))
    assert validate_submission(path, tmp / "sample.csv") == []
    assert len(validate_submission(path, tmp / "sample.csv", tmp / "meta.csv")) == 1


def test_validate_command_exit_codes(files, caplog):
    tmp, write = files
    assert main(["validate", write(good_rows()), "--sample", str(tmp / "sample.csv"), "--meta",
                 str(tmp / "meta.csv")]) == 0
    path = write(good_rows(bbb="3 0.9 10 20 110"))
    assert main(["validate", path, "--sample", str(tmp / "sample.csv")]) == 1
    assert f"{path}:3: bbb: 5 values" in caplog.text and "1 faults" in caplog.text
    assert main(["validate", path, "--sample", str(tmp / "nope.csv")]) == 2


def test_validate_accepts_a_byte_order_mark_as_folds_does(files, caplog):
    tmp, write = files
    path = write(good_rows())
    with open(path, "rb") as fh:
        text = fh.read()
    with open(path, "wb") as fh:
        fh.write(b"\xef\xbb\xbf" + text)  # what Excel and Notepad write in front of a UTF-8 CSV
    assert validate_submission(path, tmp / "sample.csv", tmp / "meta.csv") == []
    assert main(["validate", path, "--sample", str(tmp / "sample.csv")]) == 0
    assert "is a valid submission" in caplog.text


def test_validate_warns_about_rows_in_another_order_which_kaggle_accepts(files, caplog):
    tmp, write = files
    path = write([good_rows()[0], good_rows()[2], good_rows()[1]])
    assert validate_submission(path, tmp / "sample.csv", tmp / "meta.csv") == []
    caplog.clear()
    assert main(["validate", path, "--sample", str(tmp / "sample.csv")]) == 0
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warning) == 1, warning
    assert warning[0].startswith(f"{path}:4: bbb: not in the sample's order (the sample has it on its line 3, "
                                 "before ccc); 1 such row in all. Kaggle accepts any order")


@pytest.mark.parametrize("content", ["", "\n", "image_id,PredictionString\n", "id,PredictionString\naaa,x\n"])
def test_validate_names_an_empty_or_wrong_sample_in_one_clear_line(files, caplog, content):
    tmp, write = files
    (tmp / "empty.csv").write_text(content)
    assert main(["validate", write(good_rows()), "--sample", str(tmp / "empty.csv")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert errors[0].startswith(str(tmp / "empty.csv"))
    assert errors[0].endswith("give the competition's sample_submission.csv as --sample"), errors[0]


def test_prediction_strings_round_clip_and_fill():
    boxes = pd.DataFrame({
        "image_id": ["b", "b", "b", "c"], "class_id": [3, 5, 14, 2], "score": [1.2, 0.1234567, 0.25, 0.5],
        "x_min": [10.04, 5.0, 0, 7.01], "y_min": [20.0, 5.0, 0, 7.0], "x_max": [110.96, 5.04, 1, 50.0],
        "y_max": [220.55, 9.0, 1, 60.0]})
    sub = prediction_strings(boxes, ["a", "b", "c"])
    assert sub.image_id.tolist() == ["a", "b", "c"]
    # a box of width 0.04 px rounds to nothing and is dropped; 1.2 is clipped to 1; whole numbers lose ".0"
    assert sub.PredictionString.tolist() == ["14 1 0 0 1 1", "3 1 10 20 111 220.6 14 0.25 0 0 1 1",
                                             "2 0.5 7 7 50 60"]
