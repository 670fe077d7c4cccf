"""The data stage end to end on the synthetic dataset, through the command line, as `make demo` runs it."""

from __future__ import annotations

import pandas as pd

from vinbig.artifacts import FOLD_COLUMNS, LABEL_COLUMNS, META_COLUMNS, NO_FINDING
from vinbig.app.cli import main


def test_synth_output_passes_images_and_folds(tmp_path):
    data, work = tmp_path / "data", tmp_path / "work"
    assert main(["synth", "--out", str(data), "--n-train", "20", "--n-test", "5", "--size", "160", "-q",
                 "--set", "synth.abnormal_fraction=0.5"]) == 0
    for split, n in (("train", 20), ("test", 5)):
        assert main(["images", "--src", str(data / split), "--out", str(work / "images" / split),
                     "--size", "128", "-q"]) == 0
        meta = pd.read_csv(work / "images" / split / "meta.csv")
        assert list(meta.columns) == list(META_COLUMNS) and len(meta) == n
        assert (meta[["png_width", "png_height"]].max(axis=1) == 128).all()
        assert set(meta.photometric) == {"MONOCHROME1", "MONOCHROME2"} or n < 10
        assert len(pd.read_csv(work / "images" / split / "errors.csv")) == 0
        assert (work / "images" / split / "source.txt").read_text().strip() == str((data / split).resolve())
    assert main(["folds", "--train-csv", str(data / "train.csv"), "--out", str(work), "--n-folds", "3", "-q"]) == 0
    labels = pd.read_csv(work / "labels.csv")
    folds = pd.read_csv(work / "folds.csv")
    assert list(labels.columns) == list(LABEL_COLUMNS) and list(folds.columns) == list(FOLD_COLUMNS)
    train_meta = pd.read_csv(work / "images" / "train" / "meta.csv").set_index("image_id")
    assert set(folds.image_id) == set(train_meta.index) and set(folds.fold) == {0, 1, 2}
    boxes = labels[labels.class_id != NO_FINDING].join(train_meta, on="image_id")
    assert len(boxes) and (boxes.x_max <= boxes.width).all() and (boxes.y_max <= boxes.height).all()
    assert (work / "config_folds.yaml").is_file() and (data / "config_synth.yaml").is_file()
