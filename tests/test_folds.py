"""folds: train.csv validation, reader consolidation (WBF), the stratified split and the `vinbig folds` stage."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from ensemble_boxes import weighted_boxes_fusion

from conftest import train_table, write_meta
from folds import TrainCsvError, consolidate, make_folds, split_folds, validate_train_csv
from vinbig.artifacts import (
    BOX,
    FOLD_COLUMNS,
    LABEL_COLUMNS,
    NO_FINDING,
    READER_COLUMNS,
    TRAIN_COLUMNS,
    Work,
    read_folds,
    read_labels,
    read_readers,
)
from vinbig.config import ConfigError
from vinbig.errors import ArtifactError

HEADER = ",".join(TRAIN_COLUMNS)
# a valid train.csv body: lines 2..7 (the header is line 1)
GOOD = [
    "img_a,Aortic enlargement,0,R1,10,20,110,220",
    "img_a,Cardiomegaly,3,R2,300,400,900,700",
    "img_a,Aortic enlargement,0,R3,12.5,18,108,230",
    "img_b,No finding,14,R1,,,,",
    "img_b,No finding,14,R2,0,0,1,1",
    "img_b,No finding,14,R3,,,,",
]
NEXT_LINE = len(GOOD) + 2  # the line number of a row appended to GOOD


def write_csv_lines(tmp_path, lines, header=HEADER):
    path = tmp_path / "train.csv"
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


# --------------------------------------------------------------------------- validation


def test_valid_file_passes(tmp_path):
    train = validate_train_csv(write_csv_lines(tmp_path, GOOD))
    assert list(train.columns) == list(TRAIN_COLUMNS)
    assert len(train) == len(GOOD)
    assert train["class_id"].dtype == np.int64
    assert all(train[c].dtype == np.float64 for c in BOX)
    assert train.loc[2, "x_min"] == 12.5
    # "No finding" rows: empty box, also where the file wrote the placeholder 0 0 1 1
    assert train.loc[train["class_id"] == NO_FINDING, list(BOX)].isna().all().all()
    assert train["image_id"].tolist()[:1] == ["img_a"]


@pytest.mark.parametrize("bad_line, expected", [
    ("img_c,Aortic enlargement,15,R1,1,2,3,4", ["class_id", "'15'", "not an integer in 0..14"]),
    ("img_c,Aortic enlargement,abc,R1,1,2,3,4", ["class_id", "'abc'", "not an integer in 0..14"]),
    ("img_c,Aortic enlargement,2.5,R1,1,2,3,4", ["class_id", "'2.5'", "not an integer"]),
    ("img_c,Aortic enlargement,-1,R1,1,2,3,4", ["class_id", "'-1'", "not an integer in 0..14"]),
    ("img_c,Cardiomegaly,0,R1,1,2,3,4",
     ["class_name", "'Cardiomegaly'", "disagrees with class_id 0", "'Aortic enlargement'"]),
    ("img_c,Aortic enlargement,0,R1,,2,3,4", ["x_min is empty", "needs a box"]),
    ("img_c,Aortic enlargement,0,R1,1,2,3,", ["y_max is empty", "needs a box"]),
    ("img_c,Aortic enlargement,0,R1,1,two,3,4", ["y_min 'two' is not a number"]),
    ("img_c,Aortic enlargement,0,R1,-5,2,3,4", ["x_min -5 is negative"]),
    ("img_c,Aortic enlargement,0,R1,5,2,5,4", ["x_max", "x_max 5 is not greater than x_min 5", "corners"]),
    ("img_c,Aortic enlargement,0,R1,1,9,3,4", ["y_max", "y_max 4 is not greater than y_min 9"]),
    ("img_c,No finding,14,R1,0,0,2,2", ["'No finding' row (class 14) has the box", "empty or write 0 0 1 1"]),
    ("img_c,No finding,14,R1,0,,,", ["'No finding' row (class 14) has the box", "empty or write 0 0 1 1"]),
    ("../evil,Aortic enlargement,0,R1,1,2,3,4", ["image_id '../evil' is not a safe file name"]),
    ("a b,Aortic enlargement,0,R1,1,2,3,4", ["image_id 'a b' is not a safe file name"]),
    ("img_c,Aortic enlargement,0,,1,2,3,4", ["rad_id is empty"]),
])
def test_bad_row_is_named(tmp_path, bad_line, expected):
    path = write_csv_lines(tmp_path, [*GOOD, bad_line])
    with pytest.raises(TrainCsvError) as e:
        validate_train_csv(path)
    msg = str(e.value)
    assert str(path) in msg and "1 fault" in msg
    assert f"line {NEXT_LINE}," in msg
    for fragment in expected:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"


def test_no_finding_and_boxes_by_one_reader(tmp_path):
    # reader R2 wrote "No finding" on img_b (line 6) and boxed a finding on it
    path = write_csv_lines(tmp_path, [*GOOD, "img_b,Nodule/Mass,8,R2,1,2,30,40"])
    with pytest.raises(TrainCsvError) as e:
        validate_train_csv(path)
    msg = str(e.value)
    assert "line 6," in msg
    assert "image img_b is marked 'No finding' by reader R2, who also boxed findings" in msg


def test_missing_columns_are_named(tmp_path):
    header = "image_id,class_name,class_id,x_min,y_min,x_max"
    path = write_csv_lines(tmp_path, ["img_a,Aortic enlargement,0,1,2,3"], header=header)
    with pytest.raises(TrainCsvError, match=r"lacks the columns \['rad_id', 'y_max'\] \(it has \['image_id', ") as e:
        validate_train_csv(path)  # the one table reader's words (vinbig.tables), as for every CSV
    assert str(e.value).startswith(str(path)) and str(e.value).endswith(f"whose header is {HEADER}")


@pytest.mark.parametrize("content, expected", [
    (None, "train.csv not found at"),
    (HEADER + "\n", "has a header but no rows"),
    ("", "not a readable CSV"),
])
def test_missing_or_empty_file(tmp_path, content, expected):
    path = tmp_path / "train.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(TrainCsvError, match=expected):
        validate_train_csv(path)


def test_all_faults_in_one_run_with_line_order_and_cap(tmp_path):
    bad = [f"img_{i},Aortic enlargement,0,R1,-1,2,3,4" for i in range(30)]  # lines 9..38
    path = write_csv_lines(tmp_path, [*GOOD, "img_x,Atelectasis,3,R1,1,2,3,4", *bad])  # line 8: name mismatch
    with pytest.raises(TrainCsvError) as e:
        validate_train_csv(path)
    lines = str(e.value).splitlines()
    assert "31 fault(s)" in lines[0]
    shown = [line for line in lines if line.startswith("  line ")]
    assert len(shown) == 20
    assert shown[0].startswith("  line 8, class_name 'Atelectasis' disagrees")
    assert shown[1].startswith("  line 9, x_min -1 is negative")
    assert lines[-1] == "  and 11 more"


# --------------------------------------------------------------------------- consolidation


def one(df: pd.DataFrame) -> pd.Series:
    assert len(df) == 1, df
    return df.iloc[0]


def test_three_readers_agree():
    train = train_table(("i", "R1", 0, 100, 100, 200, 200), ("i", "R2", 0, 110, 90, 210, 190),
                        ("i", "R3", 0, 90, 110, 190, 210))
    out = consolidate(train)
    assert list(out.columns) == list(LABEL_COLUMNS)
    row = one(out)
    assert row["class_id"] == 0 and row["n_readers"] == 3
    assert [row[c] for c in BOX] == pytest.approx([100, 100, 200, 200], abs=1e-3)  # the mean
    assert row["score"] == pytest.approx(1.0)


def test_two_agree_one_elsewhere():
    train = train_table(("i", "R1", 0, 100, 100, 200, 200), ("i", "R2", 0, 104, 96, 204, 196),
                        ("i", "R3", 0, 500, 500, 600, 640))
    out = consolidate(train)
    assert len(out) == 2
    assert out["x_min"].is_monotonic_increasing
    assert out["n_readers"].tolist() == [2, 1]
    assert out["score"].tolist() == pytest.approx([2 / 3, 1 / 3])
    assert [out.loc[0, c] for c in BOX] == pytest.approx([102, 98, 202, 198], abs=1e-3)
    assert [out.loc[1, c] for c in BOX] == pytest.approx([500, 500, 600, 640], abs=1e-3)


def test_different_classes_are_not_fused():
    train = train_table(("i", "R1", 0, 100, 100, 200, 200), ("i", "R2", 3, 100, 100, 200, 200),
                        ("i", "R3", 3, 101, 100, 201, 200))
    out = consolidate(train)
    assert out["class_id"].tolist() == [0, 3]
    assert out["n_readers"].tolist() == [1, 2]


def test_one_reader_two_boxes_counts_once():
    train = train_table(("i", "R1", 8, 100, 100, 200, 200), ("i", "R1", 8, 102, 100, 202, 200),
                        ("i", "R2", 8, 101, 101, 201, 201))
    assert one(consolidate(train))["n_readers"] == 2


def test_no_finding_image_gets_one_class14_row():
    train = train_table(("n", "R1", 14), ("n", "R2", 14), ("n", "R3", 14),
                        ("a", "R1", 2, 10, 10, 20, 20), ("a", "R2", 2, 10, 10, 20, 20), ("a", "R3", 2, 10, 10, 20, 20))
    out = consolidate(train)
    assert out["image_id"].tolist() == ["a", "n"]
    row = out.iloc[1]
    assert row["class_id"] == NO_FINDING and row["score"] == 1.0 and row["n_readers"] == 3
    assert row[list(BOX)].isna().all()


def test_reader_saying_no_finding_lowers_the_score():
    train = train_table(("i", "R1", 0, 100, 100, 200, 200), ("i", "R2", 0, 100, 100, 200, 200), ("i", "R3", 14))
    row = one(consolidate(train))
    assert row["n_readers"] == 2 and row["score"] == pytest.approx(2 / 3)


def test_exclude_readers(caplog):
    train = train_table(("i", "R1", 0, 100, 100, 200, 200), ("i", "R2", 0, 104, 96, 204, 196),
                        ("i", "R3", 0, 500, 500, 600, 640), ("j", "R3", 5, 1, 1, 50, 50))
    with caplog.at_level(logging.WARNING):
        out = consolidate(train, exclude_readers=["R3"])
    row = one(out)  # R3's box is gone, and image j, read only by R3, is dropped
    assert row["image_id"] == "i" and row["n_readers"] == 2 and row["score"] == pytest.approx(1.0)
    assert "1 of 2 images had only excluded readers ['R3']" in caplog.text


def test_reader_weights():
    a, b = np.array([100, 100, 200, 200]), np.array([120, 80, 220, 180])
    train = train_table(("i", "R1", 0, *a), ("i", "R2", 0, *b), ("i", "R3", 0, 500, 500, 600, 640))
    out = consolidate(train, reader_weights={"R1": 3.0})
    # coordinates: score*weight-weighted mean; score (avg): mean weight * min(n_models, n_boxes) / sum of weights
    assert [out.loc[0, c] for c in BOX] == pytest.approx((3 * a + b) / 4, abs=1e-3)
    assert out["score"].tolist() == pytest.approx([(4 / 2) * 2 / 5, 1 / 5])
    assert out["n_readers"].tolist() == [2, 1]


def wbf_directly(train: pd.DataFrame, **kwargs) -> pd.DataFrame:
    """The reference: one weighted_boxes_fusion call on the image's boxes divided by their largest coordinate."""
    readers = sorted(train["rad_id"].unique())
    boxes = train[list(BOX)].to_numpy()
    scale = np.nanmax(boxes)
    lists = [train[train["rad_id"] == r] for r in readers]
    fused, scores, labels = weighted_boxes_fusion(
        [d[list(BOX)].to_numpy() / scale for d in lists], [np.ones(len(d)) for d in lists],
        [d["class_id"].to_numpy() for d in lists], **kwargs)
    out = pd.DataFrame(fused * scale, columns=list(BOX))
    out.insert(0, "class_id", labels.astype(int))
    out["score"] = scores
    return out.sort_values(["class_id", *BOX], ignore_index=True)


@pytest.mark.parametrize("conf_type", ["avg", "max", "box_and_model_avg", "absent_model_aware_avg"])
@pytest.mark.parametrize("iou_thr", [0.2, 0.4, 0.6])
def test_equals_weighted_boxes_fusion(conf_type, iou_thr):
    rng = np.random.default_rng(int(iou_thr * 10))
    rows = []
    for reader in ("R1", "R8", "R9", "R12"):
        for _ in range(rng.integers(1, 6)):
            c = int(rng.integers(0, 3))
            x, y = rng.uniform(0, 300, 2) + 400 * c
            w, h = rng.uniform(50, 400, 2)
            rows.append(("img", reader, c, round(x), round(y), round(x + w), round(y + h)))
    train = train_table(*rows)
    weights = {"R1": 1.0, "R8": 0.5, "R9": 2.0, "R12": 1.0}
    out = consolidate(train, iou_thr=iou_thr, conf_type=conf_type, reader_weights=weights)
    ref = wbf_directly(train, iou_thr=iou_thr, conf_type=conf_type,
                       weights=[weights[r] for r in sorted(weights)])
    assert len(out) == len(ref)
    np.testing.assert_allclose(out[["class_id", *BOX, "score"]].to_numpy(float),
                               ref[["class_id", *BOX, "score"]].to_numpy(float), rtol=0, atol=1e-9)
    assert (out["n_readers"] >= 1).all() and (out["n_readers"] <= 4).all()


def test_the_consolidation_is_the_foundations_for_folds_and_detector_runs():
    import vinbig.consolidate

    assert consolidate is vinbig.consolidate.consolidate  # the function test_equals_weighted_boxes_fusion checks


def test_output_is_sorted_and_typed():
    train = train_table(("b", "R1", 3, 50, 50, 90, 90), ("b", "R1", 0, 300, 300, 400, 400),
                        ("b", "R1", 0, 10, 10, 40, 40), ("a", "R2", 14))
    out = consolidate(train)
    assert out[["image_id", "class_id", "x_min"]].values.tolist() == [
        ["a", 14, pytest.approx(np.nan, nan_ok=True)], ["b", 0, 10.0], ["b", 0, 300.0], ["b", 3, 50.0]]
    assert out["class_id"].dtype == np.int64 and out["n_readers"].dtype == np.int64


@pytest.mark.parametrize("kwargs, expected", [
    ({"conf_type": "mean"}, "conf_type is 'mean'"),
    ({"iou_thr": 1.5}, "iou_thr is 1.5"),
    ({"skip_box_thr": 2}, "skip_box_thr is 2"),
    ({"reader_weights": {"R1": 0}}, "above 0"),
])
def test_bad_parameters(kwargs, expected):
    with pytest.raises(ConfigError, match=expected):
        consolidate(train_table(("a", "R1", 14)), **kwargs)


# --------------------------------------------------------------------------- folds


def random_train(n_images: int = 400, seed: int = 0) -> pd.DataFrame:
    """Three readers per image, about 30 % abnormal with 1-3 classes of skewed frequency."""
    rng = np.random.default_rng(seed)
    p = np.linspace(3, 1, 14)
    p /= p.sum()
    rows = []
    for i in range(n_images):
        image_id = f"{i:032x}"
        readers = rng.choice([f"R{k}" for k in range(1, 8)], 3, replace=False)
        if rng.random() < 0.3:
            classes = rng.choice(14, rng.integers(1, 4), replace=False, p=p)
            for r in readers:
                for c in classes:
                    x, y = rng.uniform(0, 1000, 2)
                    rows.append((image_id, r, int(c), x, y, x + 100, y + 120))
        else:
            rows.extend((image_id, r, NO_FINDING) for r in readers)
    return train_table(*rows)


@pytest.fixture(scope="module")
def generated():
    train = random_train()
    return train, split_folds(train, n_folds=5, seed=42)


def test_every_image_in_exactly_one_fold(generated):
    train, folds = generated
    assert list(folds.columns) == list(FOLD_COLUMNS)
    assert folds["image_id"].is_unique and folds["image_id"].is_monotonic_increasing
    assert set(folds["image_id"]) == set(train["image_id"])
    assert set(folds["fold"]) == set(range(5))
    rows = train.merge(folds, on="image_id", how="left")
    assert rows["fold"].notna().all()
    assert (rows.groupby("image_id")["fold"].nunique() == 1).all()  # an image's rows stay together


def test_folds_are_stratified(generated):
    train, folds = generated
    presence = train[["image_id", "class_id"]].drop_duplicates().merge(folds, on="image_id")
    counts = presence.groupby(["class_id", "fold"]).size().unstack(fill_value=0)
    expected = counts.sum(axis=1) / 5
    deviation = counts.sub(expected, axis=0).abs().to_numpy()
    # iterative stratification balances the rarest labels exactly; labels that ride along on multi-label
    # images drift by a few images: allow 3 images, or 5 % for large classes
    tolerance = np.maximum(3.0, 0.05 * expected.to_numpy())[:, None]
    assert (deviation <= tolerance).all(), counts
    sizes = folds["fold"].value_counts()
    assert (sizes - len(folds) / 5).abs().max() <= 0.05 * len(folds) / 5


def test_same_seed_same_folds_any_row_order(generated):
    train, folds = generated
    shuffled = train.sample(frac=1, random_state=1).reset_index(drop=True)
    pd.testing.assert_frame_equal(split_folds(shuffled, n_folds=5, seed=42), folds)
    other = split_folds(train, n_folds=5, seed=7)
    assert (other["fold"] != folds["fold"]).any()


@pytest.mark.parametrize("n_images, n_folds, expected", [
    (3, 5, "3 image\\(s\\), fewer than n_folds=5"),
    (10, 1, "n_folds is 1"),
])
def test_bad_fold_counts(n_images, n_folds, expected):
    train = train_table(*[(f"i{k}", "R1", NO_FINDING) for k in range(n_images)])
    with pytest.raises(ConfigError, match=expected):
        split_folds(train, n_folds=n_folds)


# --------------------------------------------------------------------------- the stage


def write_train(tmp_path, train: pd.DataFrame):
    path = tmp_path / "data" / "train.csv"
    path.parent.mkdir()
    train.to_csv(path, index=False)
    return path


def test_make_folds_end_to_end(tmp_path, caplog):
    train = random_train(120, seed=3)
    path = write_train(tmp_path, train)
    with caplog.at_level(logging.INFO):
        summary = make_folds(path, tmp_path / "work", n_folds=4, seed=1)
    work = Work(tmp_path / "work")
    labels_text = work.labels.read_text().splitlines()
    assert labels_text[0] == ",".join(LABEL_COLUMNS)
    assert work.folds.read_text().splitlines()[0] == ",".join(FOLD_COLUMNS)
    labels, folds = read_labels(work), read_folds(work)
    assert set(labels["image_id"]) == set(folds["image_id"]) == set(train["image_id"])
    assert folds["fold"].between(0, 3).all()
    pd.testing.assert_frame_equal(folds, split_folds(train, n_folds=4, seed=1))
    normal = train.groupby("image_id")["class_id"].min().eq(NO_FINDING).sum()
    assert summary.images == 120 and summary.normal == normal and summary.abnormal == 120 - normal
    assert summary.boxes_before == (train["class_id"] != NO_FINDING).sum()
    assert summary.boxes_after == (labels["class_id"] != NO_FINDING).sum()
    assert sum(summary.fold_images.values()) == 120
    assert "images per class and fold" in caplog.text and "Pulmonary fibrosis" in caplog.text
    # readers.csv: every row of train.csv, each reader's own boxes; "No finding" rows with an empty box
    assert work.readers.read_text().splitlines()[0] == ",".join(READER_COLUMNS) and summary.readers == work.readers
    readers = read_readers(work)
    key = ["image_id", "rad_id", "class_id", *BOX]
    pd.testing.assert_frame_equal(readers, train.loc[:, key].sort_values(key, ignore_index=True), check_dtype=False)
    assert readers.loc[readers["class_id"] == NO_FINDING, list(BOX)].isna().all().all()
    assert not list(work.root.glob(".*partial"))


def test_make_folds_drops_images_of_excluded_readers(tmp_path):
    train = pd.concat([random_train(40, seed=5), train_table(("only_r99", "R99", 0, 1, 1, 9, 9))])
    path = write_train(tmp_path, train)
    summary = make_folds(path, tmp_path / "work", n_folds=3, exclude_readers=["R99"])
    folds = read_folds(Work(tmp_path / "work"))
    assert "only_r99" not in set(folds["image_id"])
    assert summary.dropped_images == 1 and summary.images == 40
    readers = read_readers(Work(tmp_path / "work"))
    assert set(readers["image_id"]) == set(folds["image_id"]) and "R99" not in set(readers["rad_id"])


def test_make_folds_writes_nothing_for_a_bad_file(tmp_path):
    path = write_csv_lines(tmp_path, [*GOOD, "img_c,Aortic enlargement,0,R1,5,2,5,4"])
    with pytest.raises(TrainCsvError):
        make_folds(path, tmp_path / "work", n_folds=2)
    assert not (tmp_path / "work").exists()


def test_command_line(tmp_path):
    from vinbig.app.cli import main

    path = write_train(tmp_path, random_train(30, seed=2))
    assert main(["folds", "--train-csv", str(path), "--out", str(tmp_path / "work"), "--n-folds", "3", "-q"]) == 0
    work = Work(tmp_path / "work")
    folds = read_folds(work)
    assert set(folds["fold"]) == {0, 1, 2} and set(read_readers(work)["image_id"]) == set(folds["image_id"])
    bad = write_csv_lines(tmp_path, [*GOOD, "img_c,Aortic enlargement,99,R1,1,2,3,4"])
    assert main(["folds", "--train-csv", str(bad), "--out", str(tmp_path / "work2"), "-q"]) == 2


# --------------------------------------------------------------------------- faults: duplicates, boxes beyond the image,
# writes that fail


def test_an_exact_duplicate_row_is_reported_by_line_and_counted_once(tmp_path, caplog):
    # R1's box on img_a (line 2) repeated at line 8: WBF would weigh it twice and move the fused box towards it
    path = write_csv_lines(tmp_path, [*GOOD, GOOD[0]])
    with caplog.at_level(logging.WARNING):
        make_folds(path, tmp_path / "work", n_folds=2)
    assert "1 row(s) are exact duplicates of an earlier row and are counted once (line 8 repeats line 2)" \
        in caplog.text
    once = make_folds(write_csv_lines(tmp_path, GOOD), tmp_path / "once", n_folds=2)
    assert (tmp_path / "work" / "labels.csv").read_bytes() == once.labels.read_bytes()
    assert (tmp_path / "work" / "folds.csv").read_bytes() == once.folds.read_bytes()


OUTSIDE = [  # lines 8..10 after GOOD; img_c is 461 x 500 px
    "img_c,Nodule/Mass,8,R1,400,100,5000,200",  # line 8: beyond the right edge
    "img_c,Nodule/Mass,8,R2,470,100,480,520",  # line 9: wholly outside, and below the bottom
    "img_c,Nodule/Mass,8,R3,10,10,50,50",  # line 10: inside
]
SIZES = {"img_a": (1000, 1000), "img_b": (800, 800), "img_c": (461, 500)}


def test_boxes_beyond_their_image_are_an_error_naming_lines_images_and_the_fix(tmp_path):
    work = tmp_path / "work"
    meta = write_meta(work, SIZES)
    with pytest.raises(TrainCsvError) as e:
        make_folds(write_csv_lines(tmp_path, [*GOOD, *OUTSIDE]), work, n_folds=2)
    msg = str(e.value)
    assert f"2 box(es) reach beyond their image (its width and height in {meta})" in msg
    assert "  line 8, image img_c: x_max 5000 > width 461\n" in msg
    assert "  line 9, image img_c: x_max 480 > width 461 and y_max 520 > height 500\n" in msg
    assert "line 10" not in msg
    assert "--outside-boxes clip" in msg and "--outside-boxes drop" in msg
    assert not (work / "labels.csv").exists() and not (work / "folds.csv").exists()


def test_many_boxes_beyond_their_image_are_listed_up_to_twenty(tmp_path):
    work = tmp_path / "work"
    write_meta(work, {**SIZES, **{f"img_{i}": (100, 100) for i in range(25)}})
    lines = [*GOOD, *(f"img_{i},Nodule/Mass,8,R1,10,10,150,50" for i in range(25))]
    with pytest.raises(TrainCsvError) as e:
        make_folds(write_csv_lines(tmp_path, lines), work, n_folds=2)
    listed = [line for line in str(e.value).splitlines() if line.startswith("  line ")]
    assert len(listed) == 20 and listed[0] == "  line 8, image img_0: x_max 150 > width 100"
    assert "  and 5 more" in str(e.value).splitlines()


def folds_with_outside_boxes(tmp_path, caplog, policy: str) -> np.ndarray:
    """make_folds over GOOD and OUTSIDE with `policy`; the boxes of img_c in labels.csv, which readers.csv holds too
    (one reader of img_c per box left)."""
    work = tmp_path / "work"
    write_meta(work, SIZES)
    with caplog.at_level(logging.WARNING):
        make_folds(write_csv_lines(tmp_path, [*GOOD, *OUTSIDE]), work, n_folds=2, outside_boxes=policy)
    assert "2 box(es) reach beyond their image" in caplog.text
    labels = read_labels(Work(work)).query("image_id == 'img_c'")[list(BOX)].to_numpy()
    readers = read_readers(Work(work)).query("image_id == 'img_c'")
    assert sorted(map(tuple, readers[list(BOX)].to_numpy())) == sorted(map(tuple, labels))
    return labels


def test_outside_boxes_clip_moves_them_to_the_edge_and_drops_those_wholly_outside(tmp_path, caplog):
    boxes = folds_with_outside_boxes(tmp_path, caplog, "clip")
    assert "clipped to its edge" in caplog.text
    # vinbig.boxes' rule: a box with under one pixel left once clipped goes, as in the detector's datasets
    assert "1 of them lie wholly outside or leave under one pixel inside and are left out (line 9)" in caplog.text
    assert "line 8, image img_c: x_max 5000 > width 461" in caplog.text
    assert boxes.max(axis=0)[2] == 461 and sorted(map(tuple, boxes)) == [(10, 10, 50, 50), (400, 100, 461, 200)]


def test_outside_boxes_drop_leaves_them_out_naming_them(tmp_path, caplog):
    boxes = folds_with_outside_boxes(tmp_path, caplog, "drop")
    assert "are left out" in caplog.text
    assert "line 8, image img_c" in caplog.text and "line 9, image img_c" in caplog.text
    assert boxes.tolist() == [[10, 10, 50, 50]]


def test_an_image_whose_every_box_is_dropped_is_named_and_counted(tmp_path, caplog):
    work = tmp_path / "work"
    write_meta(work, SIZES)
    with caplog.at_level(logging.WARNING):
        result = make_folds(write_csv_lines(tmp_path, [*GOOD, *OUTSIDE[:2]]), work, n_folds=2, outside_boxes="drop")
    assert "1 image(s) lost every box (beyond its image with folds.outside_boxes=drop, or under one pixel)" in caplog.text and "img_c" in caplog.text
    assert result.dropped_images == 1 and "img_c" not in set(read_labels(Work(work)).image_id)


def test_outside_boxes_unknown_value_and_no_meta_yet(tmp_path, caplog):
    path = write_csv_lines(tmp_path, [*GOOD, *OUTSIDE])
    with pytest.raises(ConfigError, match="folds.outside_boxes is 'cut'; use one of error, clip, drop"):
        make_folds(path, tmp_path / "work", n_folds=2, outside_boxes="cut")
    with caplog.at_level(logging.INFO):
        make_folds(path, tmp_path / "work", n_folds=2)  # no meta.csv: nothing to check against yet
    assert "the boxes are checked against the image sizes once 'vinbig images' has converted" in caplog.text


def test_a_work_folder_that_is_a_file_is_named_before_the_fusion(tmp_path, monkeypatch):
    import folds._split

    monkeypatch.setattr(folds._split, "consolidate", lambda *a, **k: pytest.fail("fused before checking"))
    work = tmp_path / "work"
    work.write_text("not a folder")
    with pytest.raises(ArtifactError, match=f"cannot write {work}/labels.csv: a file stands where the folder "
                                            f"should be \\({work}\\)"):
        make_folds(write_csv_lines(tmp_path, GOOD), work, n_folds=2)


@pytest.mark.parametrize("full", ["folds.csv", "readers.csv"])
def test_a_full_disk_names_the_file_and_a_failed_run_keeps_the_earlier_outputs_and_config(
        tmp_path, monkeypatch, caplog, full):
    import errno

    import yaml

    from vinbig.app.cli import main

    path = write_train(tmp_path, random_train(30, seed=2))
    out = tmp_path / "work"
    assert main(["folds", "--train-csv", str(path), "--out", str(out), "--n-folds", "3", "-q"]) == 0
    before = {name: (out / name).read_bytes()
              for name in ("labels.csv", "folds.csv", "readers.csv", "config_folds.yaml")}

    real = pd.DataFrame.to_csv

    def full_disk(self, target=None, *args, **kwargs):
        if full in str(target):  # labels.csv is written, folds.csv (or readers.csv) finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, target, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    assert main(["folds", "--train-csv", str(path), "--out", str(out), "--n-folds", "2", "-q"]) == 2
    assert f"cannot write {out / full}: No space left on device" in caplog.text
    assert "Traceback" not in caplog.text
    assert {name: (out / name).read_bytes() for name in before} == before  # labels, folds, readers still agree
    assert yaml.safe_load(before["config_folds.yaml"])["folds"]["n_folds"] == 3
    assert not list(out.glob(".*partial"))
