"""One reader per table, one rule per check (issue 21, part 3).

* Every CSV goes through vinbig.tables: each faulty kind of file gives the same one-line error, whichever command
  or reader meets it (train.csv in `vinbig folds`, a submission in `vinbig score` and `vinbig validate`, the sample,
  meta.csv, a truth table, labels.csv, folds.csv).
* "A box beyond its image" is one rule (vinbig.boxes.place_boxes) that `vinbig folds` and the detector's datasets
  both follow.
* `validate_submission` takes the sample already read, so `vinbig fuse` reads it once.
* The metric reads no file, and the project's modules import each other without a cycle.
"""

from __future__ import annotations

import ast
import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from test_layers import ROOT, STAGES, cycles, import_graph, sources
from vinbig.app.cli import main
from vinbig.artifacts import TRAIN_COLUMNS, Work, read_folds, read_labels
from vinbig.boxes import EDGE_SLACK, place_boxes
from vinbig.errors import ArtifactError, TrainCsvError, VinbigError
from vinbig.submission import read_sample, validate_submission

PNG_BYTES = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10" * 4
SAMPLE = "image_id,PredictionString\naaa,14 1 0 0 1 1\nbbb,14 1 0 0 1 1\n"
SUB = "image_id,PredictionString\naaa,14 1 0 0 1 1\nbbb,3 0.9 10 20 110 220\n"
TRUTH = "image_id,class_id,x_min,y_min,x_max,y_max\naaa,14,,,,\nbbb,3,10,20,110,220\n"
META = ("image_id,width,height,png_width,png_height,photometric,bits_stored,voi,window_low,window_high,"
        "transfer_syntax\naaa,400,400,400,400,MONOCHROME2,12,window,0,4095,1.2.840.10008.1.2.1\n"
        "bbb,400,400,400,400,MONOCHROME2,12,window,0,4095,1.2.840.10008.1.2.1\n")
TRAIN = (",".join(TRAIN_COLUMNS) + "\n" + "img_a,Aortic enlargement,0,R1,10,20,110,220\n"
         "img_a,Cardiomegaly,3,R2,300,400,900,700\nimg_b,No finding,14,R1,,,,\nimg_c,No finding,14,R1,,,,\n")
LABELS = ("image_id,class_id,x_min,y_min,x_max,y_max,score,n_readers\nimg_a,0,10,20,110,220,1,1\n"
          "img_b,14,,,,,1,1\n")
FOLDS = "image_id,fold\nimg_a,0\nimg_b,1\n"


def _errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


def _run(args: list[str], caplog) -> tuple[int, str]:
    caplog.clear()
    code = main(args)
    errors = _errors(caplog)
    assert len(errors) <= 1, errors
    return code, errors[0] if errors else ""


def _call(read) -> tuple[int, str]:
    try:
        read()
    except VinbigError as e:
        return 2, str(e)
    return 0, ""


# each reader path: (the good file's text, how to run it on `path` in `tmp`, what the table is called in the fix)
PATHS = {
    "train.csv (vinbig folds)": (TRAIN, lambda p, tmp, log: _run(["folds", "--train-csv", str(p), "--out",
                                                                    str(tmp / "work"), "--n-folds", "2"], log)),
    "submission (vinbig score)": (SUB, lambda p, tmp, log: _run(["score", "--truth", str(tmp / "truth.csv"),
                                                                 "--submission", str(p)], log)),
    "submission (vinbig validate)": (SUB, lambda p, tmp, log: _run(["validate", str(p), "--sample",
                                                                    str(tmp / "sample.csv")], log)),
    "sample submission (vinbig validate)": (SAMPLE, lambda p, tmp, log: _run(
        ["validate", str(tmp / "sub.csv"), "--sample", str(p)], log)),
    "truth (vinbig score)": (TRUTH, lambda p, tmp, log: _run(["score", "--truth", str(p), "--submission",
                                                              str(tmp / "sub.csv")], log)),
    "meta.csv (vinbig validate --meta)": (META, lambda p, tmp, log: _run(
        ["validate", str(tmp / "sub.csv"), "--sample", str(tmp / "sample.csv"), "--meta", str(p)], log)),
    "labels.csv (read_labels)": (LABELS, lambda p, tmp, log: _call(lambda: read_labels(Work(p.parent)))),
    "folds.csv (read_folds)": (FOLDS, lambda p, tmp, log: _call(lambda: read_folds(Work(p.parent)))),
}
NAMES = {"labels.csv (read_labels)": "labels.csv", "folds.csv (read_folds)": "folds.csv"}


def _ragged(text: str) -> bytes:
    """`text` with a field too many on line 3."""
    lines = text.splitlines()
    lines[2] += ",extra"
    return ("\n".join(lines) + "\n").encode()


def _without_image_id(text: str) -> bytes:
    """`text` without its first column, image_id, which every table needs."""
    return ("\n".join(",".join(line.split(",")[1:]) for line in text.splitlines()) + "\n").encode()


# kind: (the file's bytes from the good text, the words of the error after the path; None: the file is accepted)
KINDS = {
    "utf-8 byte order mark": (lambda t: b"\xef\xbb\xbf" + t.encode(), None),
    "utf-16": (lambda t: t.encode("utf-16"), " is not a readable CSV (UTF-16 text: save it as UTF-8, 'CSV UTF-8' in "
                                             "Excel); "),
    "binary": (lambda t: PNG_BYTES, " is not a readable CSV (a binary file); "),
    "ragged": (_ragged, " is not a readable CSV (line 3: "),
    "empty": (lambda t: b"", " is not a readable CSV (it is empty); "),
    "header only": (lambda t: t.splitlines()[0].encode() + b"\n", " has a header but no rows; "),
    "missing column": (_without_image_id, " lacks the columns ['image_id'] (it has ["),
}
HEADER_ONLY_IS_A_TABLE = {"meta.csv (vinbig validate --meta)", "labels.csv (read_labels)"}  # e.g. all DICOMs failed


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("where", PATHS)
def test_each_faulty_csv_gives_the_same_one_line_error_through_every_reader(tmp_path, caplog, where, kind):
    for name, text in (("sample.csv", SAMPLE), ("sub.csv", SUB), ("truth.csv", TRUTH)):
        (tmp_path / name).write_text(text)
    good, run = PATHS[where]
    path = tmp_path / NAMES.get(where, "table.csv")
    make, words = KINDS[kind]
    path.write_bytes(make(good))
    if kind == "header only" and where in HEADER_ONLY_IS_A_TABLE:
        words = None  # a table without rows, read as such
    if kind == "header only" and where == "truth (vinbig score)":
        words = " holds no truth rows; "  # read, then found to hold no truth
    if where == "submission (vinbig validate)" and kind in ("ragged", "missing column"):
        # a file it can read, the validator checks row by row: every fault with its line, exit 1
        caplog.clear()
        assert main(["validate", str(path), "--sample", str(tmp_path / "sample.csv")]) == 1
        fault = (f"{path}:3: bbb: 3 fields; a row is image_id,PredictionString" if kind == "ragged" else
                 f"{path}:1: header is ['PredictionString']; it must be image_id,PredictionString")
        assert fault in _errors(caplog)
        return
    code, message = run(path, tmp_path, caplog)
    if words is None:
        assert code == 0 and message == "", message
        return
    assert code == 2 and "\n" not in message, message
    assert message.startswith(f"{path}{words}"), message


def test_a_ragged_row_is_named_by_line_and_fields(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(_ragged(TRAIN))
    from folds import validate_train_csv

    with pytest.raises(TrainCsvError) as e:
        validate_train_csv(path)
    assert str(e.value) == (f"{path} is not a readable CSV (line 3: 9 fields, more than the 8 of the header; a comma "
                            f"too many?); give the competition's train.csv, whose header is {','.join(TRAIN_COLUMNS)}")


# --------------------------------------------------------------------------- one rule for a box and its image

W = H = 100  # the image of every case
# case: (box, verdict, what error / clip / drop make of it). Both readers of boxes agree on every row; where the
# two rules of before differed, the comment says which one holds now and why.
BOX_CASES = {
    "inside": ((10, 10, 60, 60), "inside", ("kept", "kept", "kept")),
    "exactly on the edge": ((10, 10, 100, 100), "inside", ("kept", "kept", "kept")),
    # folds had no slack (an error); the detector's 1/1000 px holds: labels.csv is rounded to it
    "within the slack": ((10, 10, 100 + EDGE_SLACK / 2, 100), "edge", ((10, 10, 100, 100),) * 3),
    "0.5 px beyond": ((10, 10, 100.5, 100), "beyond", ("error", (10, 10, 100, 100), "left out")),
    "2 px beyond": ((10, 10, 102, 100), "beyond", ("error", (10, 10, 100, 100), "left out")),
    "wholly outside": ((110, 10, 120, 50), "beyond", ("error", "left out", "left out")),
    # folds kept a 0.5 px sliver when clipping; the detector's rule holds: under a pixel is nothing to see
    "0.5 px left once clipped": ((99.5, 10, 150, 50), "beyond", ("error", "left out", "left out")),
    # the detector clipped (clip) or dropped (drop) it; folds' rule holds: a coordinate is 0 or more
    "negative": ((-2, 10, 50, 50), "negative", ("error", "error", "error")),
    # folds kept it; the detector's rule holds, and labels.csv (the OOF truth) loses it too
    "under 1 px": ((10, 10, 10.5, 50), "small", ("left out", "left out", "left out")),
}
POLICIES = ("error", "clip", "drop")


def _folds_outcome(tmp_path: Path, box, policy: str):
    """What `vinbig folds` (validate_train_csv, check_box_extents) makes of `box` on a W x H image."""
    from folds import check_box_extents, validate_train_csv

    path = tmp_path / "train.csv"
    path.write_text(",".join(TRAIN_COLUMNS) + "\nimg,Nodule/Mass,8,R1," + ",".join(map(repr, box)) + "\n")
    sizes = pd.DataFrame({"image_id": ["img"], "width": [W], "height": [H]})
    try:
        out = check_box_extents(validate_train_csv(path), sizes, outside_boxes=policy, path=path)
    except TrainCsvError:
        return "error"
    return "left out" if out.empty else tuple(out[["x_min", "y_min", "x_max", "y_max"]].iloc[0])


def _detector_outcome(box, policy: str):
    """What a detector dataset (training_boxes of labels.csv) makes of `box` on a W x H image."""
    from detector import training_boxes

    labels = pd.DataFrame([("img", 8, *box)], columns=["image_id", "class_id", "x_min", "y_min", "x_max", "y_max"])
    meta = pd.DataFrame({"image_id": ["img"], "width": [W], "height": [H]})
    try:
        out = training_boxes(labels, meta, policy)
    except ArtifactError:
        return "error"
    return "left out" if out.empty else tuple(out[["x_min", "y_min", "x_max", "y_max"]].iloc[0])


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("case", BOX_CASES)
def test_folds_and_the_detector_follow_one_rule_for_a_box_and_its_image(tmp_path, case, policy):
    box, verdict, outcomes = BOX_CASES[case]
    expected = outcomes[POLICIES.index(policy)]
    expected = box if expected == "kept" else expected
    assert place_boxes([box], W, H).verdict.tolist() == [verdict]
    assert _folds_outcome(tmp_path, box, policy) == _detector_outcome(box, policy) == expected


def test_the_rule_leaves_rows_without_a_box_or_a_size_alone():
    boxes = np.array([[np.nan] * 4, [10, 10, 5000, 50], [-5, 0, 10, 10], [3, 3, 3.5, 9]], dtype=float)
    placed = place_boxes(boxes, np.nan, np.nan)  # no size: only negative coordinates and size can be checked
    assert placed.verdict.tolist() == ["inside", "inside", "negative", "small"]
    assert placed.keep("clip").tolist() == [True, True, False, False]


def test_a_small_box_in_train_csv_is_left_out_with_a_warning_naming_its_line(tmp_path, caplog):
    from folds import check_box_extents, validate_train_csv

    path = tmp_path / "train.csv"
    path.write_text(",".join(TRAIN_COLUMNS) + "\nimg,Nodule/Mass,8,R1,10,10,60,60\n"
                    "img,Nodule/Mass,8,R2,10,10,10.5,60\n")
    sizes = pd.DataFrame({"image_id": ["img"], "width": [W], "height": [H]})
    with caplog.at_level(logging.WARNING):
        out = check_box_extents(validate_train_csv(path), sizes, path=path)
    assert out.index.tolist() == [0]
    assert f"{path}: 1 box(es) are under one pixel wide or high and are left out" in caplog.text
    assert "line 3, image img" in caplog.text


# --------------------------------------------------------------------------- the sample, read once


@pytest.fixture
def sample_and_sub(tmp_path):
    (tmp_path / "sample.csv").write_text(SAMPLE)
    (tmp_path / "sub.csv").write_text("image_id,PredictionString\naaa,14 1 0 0 1 1\n")  # bbb is missing
    return tmp_path / "sample.csv", tmp_path / "sub.csv"


def _opens(monkeypatch, path: Path) -> list:
    """Every open of `path` from now on."""
    seen = []
    real = io.open

    def counting(file, *args, **kwargs):
        if isinstance(file, (str, Path)) and Path(file) == path:
            seen.append(file)
        return real(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", counting)
    return seen


def test_validate_submission_takes_the_sample_already_read_and_reads_it_no_more(sample_and_sub, monkeypatch):
    sample, sub = sample_and_sub
    by_path = [f.format("sub.csv") for f in validate_submission(sub, sample)]
    assert by_path == ["sub.csv: bbb: missing image (sample line 3); write '14 1 0 0 1 1' if there is nothing to "
                       "predict"]
    table = pd.read_csv(sample, dtype={"image_id": str})
    opens = _opens(monkeypatch, sample)
    ids = read_sample(sample)  # what make_submission reads first
    assert len(opens) == 1  # the one reader reads a file once: its checks and pandas work on the same bytes
    for given in (ids, table, tuple(ids)):
        assert [f.format("sub.csv") for f in validate_submission(sub, given)] == by_path
    assert len(opens) == 1  # the ids and the table are not read again
    validate_submission(sub, sample)
    assert len(opens) == 2  # the path form reads the file once


def test_a_sample_table_is_checked_as_a_sample_file_is(sample_and_sub):
    _, sub = sample_and_sub
    with pytest.raises(ArtifactError, match=r"lacks the columns \['image_id'\]"):
        validate_submission(sub, pd.DataFrame({"id": ["aaa"]}))
    with pytest.raises(ArtifactError, match=r"lists some images twice \(first: aaa, line 3\)"):
        validate_submission(sub, pd.DataFrame({"image_id": ["aaa", "aaa"]}))


# --------------------------------------------------------------------------- the metric reads no file; no import cycle

READING = {"read_csv", "read_table", "read_text", "read_bytes", "read_parquet", "open", "read_submission",
           "read_truth", "read_sample"}


def test_the_metric_reads_no_file():
    tree = ast.parse((ROOT / "vinbig" / "metric.py").read_text())
    called = {getattr(n.func, "attr", getattr(n.func, "id", "")) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert not called & READING, called & READING


# the modules of this part of issue 21
MINE = {"vinbig.tables", "vinbig.metric", "vinbig.submission", "vinbig.artifacts", "vinbig.boxes", "folds._validate",
        "detector._dataset"}


def test_the_table_readers_and_the_box_rule_are_in_no_import_cycle():
    """tests/test_layers.py checks the whole project; this names the edges of this part."""
    graph = import_graph(sources("vinbig", *STAGES))
    assert MINE <= set(graph)
    assert [c for c in cycles(graph) if MINE & set(c)] == []
    assert "vinbig.submission" not in graph["vinbig.metric"]  # the circle metric <-> submission of before
    assert graph["vinbig.tables"] <= {"vinbig.errors"}  # the reader is at the bottom of the foundation
