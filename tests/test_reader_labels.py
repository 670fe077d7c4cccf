"""Reader-aware labels of a detector run (issue 12): WORK/readers.csv, and the datasets of runs that train on each
reader's own boxes (labels per_reader) or on a fusion of fewer readers (exclude_readers, reader_weights).

The work folders are made by `vinbig folds` (make_folds) from a small train.csv written here, with meta.csv and
8 x 8 PNGs standing in for `vinbig images`: no training, no DICOM."""

from __future__ import annotations

import logging
import os

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import train_table, write_meta
from detector._dataset import fold_dataset, label_text, yolo_to_boxes
from folds import make_folds
from vinbig.artifacts import (BOX, NO_FINDING, READER_COLUMNS, Work, folds_command, png_path, read_folds, read_labels,
                              read_readers)
from vinbig.consolidate import consolidate
from vinbig.errors import ArtifactError, ConfigError

FOLDS_CFG = {"n_folds": 2, "seed": 0, "iou_thr": 0.4, "conf_type": "avg", "reader_weights": {},
             "exclude_readers": [], "outside_boxes": "error"}
CAREFUL = [f"R{k}" for k in range(1, 7)]
PROLIFIC = ["R8", "R9", "R10"]


def random_rows(n_images: int = 40, seed: int = 0) -> list[tuple]:
    """train.csv rows (image_id, rad_id, class_id, box...): each image read by three readers, about half of them
    with findings; readers draw each finding near the others' and sometimes miss it or see nothing."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_images):
        image_id = f"img{i:03d}"
        readers = rng.choice(CAREFUL + PROLIFIC, 3, replace=False)
        findings = []
        if rng.random() < 0.55:
            for c in rng.choice(14, rng.integers(1, 3), replace=False):
                x, y = rng.uniform(20, 600, 2)
                findings.append((int(c), x, y, x + rng.uniform(40, 300), y + rng.uniform(40, 300)))
        for r in readers:
            seen = [f for f in findings if rng.random() < 0.8]
            jitter = rng.normal(0, 8, (len(seen), 4))
            for (c, *box), d in zip(seen, jitter):
                x0, y0, x1, y1 = np.round(np.clip(np.array(box) + d, 0, [990, 790, 990, 790]), 1)  # 1000 x 800 px
                rows.append((image_id, str(r), c, x0, y0, max(x1, x0 + 2), max(y1, y0 + 2)))
            if not seen:
                rows.append((image_id, str(r), NO_FINDING))
    # read only by prolific readers: left without a reader once they are excluded
    rows += [("only_prolific", "R8", 3, 100, 100, 300, 250), ("only_prolific", "R9", 3, 110, 90, 310, 240),
             ("normal_prolific", "R9", NO_FINDING), ("normal_prolific", "R10", NO_FINDING)]
    return rows


def write_images(work: Work, image_ids, width: int = 1000, height: int = 800) -> None:
    """8 x 8 PNGs and the meta.csv of `vinbig images`, every original image `width` x `height` px."""
    write_meta(work.root, dict.fromkeys(image_ids, (width, height)), png_size=(8, 8))
    for image_id in image_ids:
        cv2.imwrite(str(png_path(work.images("train"), image_id)), np.zeros((8, 8), np.uint8))


@pytest.fixture
def work(tmp_path) -> Work:
    """A work folder after `vinbig images` (stand-ins) and `vinbig folds` over random_rows, 2 folds."""
    rows = random_rows()
    train_table(*rows).to_csv(tmp_path / "train.csv", index=False)
    work = Work(tmp_path / "work")
    write_images(work, sorted({r[0] for r in rows}))
    make_folds(tmp_path / "train.csv", work, **FOLDS_CFG)
    return work


def train_fold(work: Work, image_id: str = "only_prolific") -> int:
    """The fold whose dataset trains on `image_id` (with 2 folds: the other fold)."""
    folds = read_folds(work)
    return 1 - int(folds.set_index("image_id").fold[image_id])


def label_boxes(path, width=1000, height=800) -> list[tuple]:
    """A YOLO label file back in original pixels: sorted (class_id, x_min, y_min, x_max, y_max)."""
    lines = path.read_text().splitlines()
    if not lines:
        return []
    table = np.loadtxt(lines, ndmin=2)
    back = yolo_to_boxes(table[:, 1:], width, height)
    return sorted((int(c), *b) for c, b in zip(table[:, 0], back))


def as_boxes(rows: pd.DataFrame) -> list[tuple]:
    rows = rows[rows.class_id != NO_FINDING]
    return sorted((int(c), *b) for c, b in zip(rows.class_id, rows[list(BOX)].to_numpy(float)))


def assert_same_boxes(got: list[tuple], expected: list[tuple], atol: float = 0.01) -> None:
    assert len(got) == len(expected), (got, expected)
    if got:
        np.testing.assert_allclose(np.array(got), np.array(expected), rtol=0, atol=atol)


def names(root, subset: str) -> set[str]:
    return {p.stem for p in (root / "labels" / subset).iterdir()}


# --------------------------------------------------------------------------- readers.csv (vinbig folds)


def test_folds_keeps_every_readers_own_boxes_of_the_images_of_folds_csv(work, tmp_path):
    readers = read_readers(work)
    assert work.readers.read_text().splitlines()[0] == ",".join(READER_COLUMNS)
    assert set(readers.image_id) == set(read_folds(work).image_id) == set(read_labels(work).image_id)
    train = pd.read_csv(tmp_path / "train.csv", dtype={"image_id": str, "rad_id": str})
    key = ["image_id", "rad_id", "class_id", *BOX]
    pd.testing.assert_frame_equal(readers.sort_values(key, ignore_index=True),
                                  train.loc[:, key].sort_values(key, ignore_index=True), check_dtype=False)
    nf = readers[readers.class_id == NO_FINDING]
    assert len(nf) and nf[list(BOX)].isna().all().all()  # "No finding": empty box, as in train.csv


# --------------------------------------------------------------------------- per_reader


def test_per_reader_copies_hold_exactly_each_readers_boxes_and_normal_images_appear_once(work):
    fold = train_fold(work)
    root = fold_dataset(work, fold, run="readers", run_cfg={"labels": "per_reader"}, folds_cfg=FOLDS_CFG).parent
    assert root == work.detector_data(fold, "readers")
    folds, readers = read_folds(work), read_readers(work)
    train_ids = set(folds.image_id[folds.fold != fold])
    rows = readers[readers.image_id.isin(train_ids)]
    abnormal = set(rows.image_id[rows.class_id != NO_FINDING])
    expected = {f"{i}__{r}" for i, r in rows.loc[rows.image_id.isin(abnormal), ["image_id", "rad_id"]].drop_duplicates()
                .itertuples(index=False)} | (train_ids - abnormal)
    assert names(root, "train") == expected
    assert {p.stem for p in (root / "images" / "train").iterdir()} == expected
    for (image_id, rad_id), own in rows[rows.image_id.isin(abnormal)].groupby(["image_id", "rad_id"]):
        name = f"{image_id}__{rad_id}"
        assert_same_boxes(label_boxes(root / "labels" / "train" / f"{name}.txt"), as_boxes(own))
        link = root / "images" / "train" / f"{name}.png"
        assert link.resolve() == png_path(work.images("train"), image_id).resolve()
        assert not os.path.isabs(os.readlink(link))
    for image_id in train_ids - abnormal:
        assert (root / "labels" / "train" / f"{image_id}.txt").read_text() == ""
    # a reader who saw nothing on an image with findings: a copy with an empty label
    assert any(not (root / "labels" / "train" / f"{n}.txt").read_text() for n in expected if "__" in n)

    # validation: one per image, labels.csv's boxes (the truth of the OOF score)
    val_ids = set(folds.image_id[folds.fold == fold])
    assert names(root, "val") == val_ids
    labels = read_labels(work)
    for image_id in val_ids:
        assert_same_boxes(label_boxes(root / "labels" / "val" / f"{image_id}.txt"),
                          as_boxes(labels[labels.image_id == image_id]))

    # ultralytics finds each copy's own label file
    from ultralytics.data.utils import img2label_paths

    pngs = sorted(str(p) for p in (root / "images" / "train").iterdir())
    assert [os.path.basename(p) for p in img2label_paths(pngs)] == [os.path.basename(p)[:-4] + ".txt" for p in pngs]


def test_an_image_left_without_readers_is_dropped_with_one_log_line(work, caplog):
    fold = train_fold(work)
    with caplog.at_level(logging.WARNING):
        root = fold_dataset(work, fold, run="careful", run_cfg={"labels": "per_reader", "exclude_readers": PROLIFIC},
                            folds_cfg=FOLDS_CFG).parent
    folds, readers = read_folds(work), read_readers(work)
    train_ids = set(folds.image_id[folds.fold != fold])
    left = set(readers.image_id[readers.image_id.isin(train_ids) & ~readers.rad_id.isin(PROLIFIC)])
    gone = sorted(train_ids - left)
    assert "only_prolific" in gone and len(gone) >= 1
    lines = [r.getMessage() for r in caplog.records if "no reader left" in r.getMessage()]
    assert len(lines) == 1
    assert (f"run careful, fold {fold}: {len(gone)} of {len(train_ids)} training image(s) have no reader left once "
            "R10, R8, R9 are excluded and are left out of its training: ") in lines[0]
    assert "only_prolific" in lines[0]
    train_names = names(root, "train")
    assert not any(n.split("__")[0] in gone for n in train_names)  # dropped, not turned into "No finding"
    assert not any(n.endswith(tuple(f"__{r}" for r in PROLIFIC)) for n in train_names)
    assert {n.split("__")[0] for n in train_names} == left


# --------------------------------------------------------------------------- consolidated with the run's readers


@pytest.mark.parametrize("run_cfg", [
    {"labels": "consolidated", "exclude_readers": ["R8", "R9"]},
    {"labels": "consolidated", "reader_weights": {"R1": 3.0, "R10": 0.5}},
])
def test_consolidated_with_run_readers_equals_consolidating_those_readers(work, caplog, run_cfg):
    fold = train_fold(work)
    with caplog.at_level(logging.WARNING):
        root = fold_dataset(work, fold, run="fewer", run_cfg=run_cfg, folds_cfg=FOLDS_CFG).parent
    folds, readers = read_folds(work), read_readers(work)
    train_ids = folds.image_id[folds.fold != fold]
    exclude = run_cfg.get("exclude_readers", [])
    rows = readers[readers.image_id.isin(train_ids) & ~readers.rad_id.isin(exclude)]
    expected = consolidate(rows, iou_thr=FOLDS_CFG["iou_thr"], conf_type=FOLDS_CFG["conf_type"],
                           reader_weights=run_cfg.get("reader_weights"))
    assert names(root, "train") == set(rows.image_id)
    changed = 0
    labels = read_labels(work)
    for image_id in sorted(set(rows.image_id)):
        got = label_boxes(root / "labels" / "train" / f"{image_id}.txt")
        assert_same_boxes(got, as_boxes(expected[expected.image_id == image_id]))
        truth = as_boxes(labels[labels.image_id == image_id])
        changed += len(got) != len(truth) or (bool(got) and not np.allclose(got, truth, atol=0.01))
    assert changed, "the run's readers settings changed no image's labels: the test proves nothing"
    assert ("no reader left" in caplog.text) == bool(exclude)


# --------------------------------------------------------------------------- the default run, settings, old WORKs


def test_the_default_run_trains_on_labels_csv_as_before_and_needs_no_readers_csv(work):
    plain = {"labels": "consolidated", "exclude_readers": [], "reader_weights": {}}
    work.readers.unlink()  # a work folder of an older vinbig: the default run does not miss it
    fold = 0
    root = fold_dataset(work, fold).parent
    assert root == work.detector_data(fold, "default") == work.root / "detector" / "default" / "data" / "fold0"
    again = fold_dataset(work, fold, run="same", run_cfg=plain, folds_cfg=FOLDS_CFG).parent
    labels, folds = read_labels(work), read_folds(work)
    for subset, ids in (("train", folds.image_id[folds.fold != fold]), ("val", folds.image_id[folds.fold == fold])):
        assert names(root, subset) == set(ids)
        for image_id in ids:
            rows = labels[(labels.image_id == image_id) & (labels.class_id != NO_FINDING)]
            text = (root / "labels" / subset / f"{image_id}.txt").read_text()
            assert text == label_text(rows.class_id, rows[list(BOX)].to_numpy(), 1000, 800)  # byte for byte
            assert (again / "labels" / subset / f"{image_id}.txt").read_text() == text


def test_a_change_of_the_label_settings_rewrites_the_dataset(work):
    fold = train_fold(work)
    cfg = {"labels": "per_reader"}
    data_yaml = fold_dataset(work, fold, run="r", run_cfg=cfg, folds_cfg=FOLDS_CFG)
    marker = data_yaml.parent / "marker"
    marker.write_text("kept while nothing changes")
    fold_dataset(work, fold, run="r", run_cfg=cfg, folds_cfg=FOLDS_CFG)
    assert marker.exists()
    marker.unlink()  # a file vinbig did not write stops a rebuild (test_no_foreign_deletes.py)
    stamps = {(data_yaml.parent / "source.sha1").read_text()}
    for changed in ({"labels": "per_reader", "exclude_readers": ["R8"]}, {"labels": "consolidated"},
                    {"labels": "consolidated", "reader_weights": {"R2": 2.0}}):
        fold_dataset(work, fold, run="r", run_cfg=changed, folds_cfg=FOLDS_CFG)
        stamp = (data_yaml.parent / "source.sha1").read_text()
        assert stamp not in stamps, changed  # written again
        stamps.add(stamp)
    fold_dataset(work, fold, run="r", run_cfg={"labels": "consolidated", "reader_weights": {"R2": 2.0}},
                 folds_cfg={**FOLDS_CFG, "iou_thr": 0.6})  # how readers are fused is part of it too
    assert (data_yaml.parent / "source.sha1").read_text() not in stamps
    assert len(stamps) == 4 and not list(data_yaml.parent.parent.glob(".*partial"))


def test_an_older_work_folder_without_readers_csv_names_the_file_and_the_command(work):
    work.readers.unlink()
    for cfg in ({"labels": "per_reader"}, {"exclude_readers": ["R8"]}):
        with pytest.raises(ArtifactError) as e:
            fold_dataset(work, 0, run="readers", run_cfg=cfg, folds_cfg=FOLDS_CFG)
        assert str(work.readers) in str(e.value) and f"run '{folds_command(work)}' again" in str(e.value)
    assert not work.detector_data(0, "readers").exists()


def test_boxes_of_readers_csv_beyond_their_image_are_handled_as_labels_csv_boxes(work, caplog):
    fold = train_fold(work)
    readers = pd.read_csv(work.readers, dtype={"image_id": str, "rad_id": str})
    row = readers.index[(readers.image_id == "only_prolific") & (readers.rad_id == "R8")][0]
    readers.loc[row, "x_max"] = 1500  # the image is 1000 px wide
    readers.to_csv(work.readers, index=False)
    cfg = {"labels": "per_reader"}
    with pytest.raises(ArtifactError) as e:
        fold_dataset(work, fold, run="readers", run_cfg=cfg, folds_cfg=FOLDS_CFG)
    assert f"{work.readers}: 1 box(es) lie beyond their image" in str(e.value)
    assert f"only_prolific line {row + 2}: (100, 100, 1500, 250) on 1000 x 800 px" in str(e.value)
    with caplog.at_level(logging.WARNING):
        root = fold_dataset(work, fold, "clip", run="readers", run_cfg=cfg, folds_cfg=FOLDS_CFG).parent
    assert "are clipped to its edge" in caplog.text and f"only_prolific (line {row + 2})" in caplog.text
    assert_same_boxes(label_boxes(root / "labels" / "train" / "only_prolific__R8.txt"), [(3, 100, 100, 1000, 250)])


@pytest.mark.parametrize("cfg, expected", [
    ({"labels": "by_reader"},
     "detector.labels of detector run 'r' is 'by_reader'; use one of consolidated, per_reader"),
    ({"exclude_readers": "R8"}, "detector.exclude_readers of detector run 'r' is 'R8'; give a list"),
    ({"reader_weights": {"R8": 0}}, "detector.reader_weights {'R8': 0}: each weight must be a number above 0"),
])
def test_bad_label_settings_name_the_key(work, cfg, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        fold_dataset(work, 0, run="r", run_cfg=cfg, folds_cfg=FOLDS_CFG)
