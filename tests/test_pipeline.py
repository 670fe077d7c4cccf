"""The data stage end to end on the synthetic dataset, through the command line, as `make demo` runs it.

The run is the session's `synth_work` fixture (conftest): `vinbig synth`, `vinbig images` of both splits and
`vinbig folds`, the commands a user types; this checks what they left.
"""

from __future__ import annotations

import pandas as pd
import pydicom

from vinbig.artifacts import FOLD_COLUMNS, LABEL_COLUMNS, META_COLUMNS, NO_FINDING


def test_synth_output_passes_images_and_folds(synth_work):
    data, work = synth_work.data, synth_work.work
    for split in ("train", "test"):
        dicoms = sorted((data / split).glob("*.dicom"))
        meta = pd.read_csv(work / "images" / split / "meta.csv", dtype={"image_id": str}).set_index("image_id")
        assert list(meta.reset_index().columns) == list(META_COLUMNS)
        assert sorted(meta.index) == [p.stem for p in dicoms] and len(dicoms) > 0  # every file converted
        assert (meta[["png_width", "png_height"]].max(axis=1) == 128).all()
        # each PNG's photometry is its file's (MONOCHROME1 is inverted on the way)
        for path in dicoms:
            tag = pydicom.dcmread(path, stop_before_pixels=True).PhotometricInterpretation
            assert meta.loc[path.stem, "photometric"] == tag, path.name
        assert len(pd.read_csv(work / "images" / split / "errors.csv")) == 0
        assert (work / "images" / split / "source.txt").read_text().strip() == str((data / split).resolve())
        assert (work / "images" / split / "config_images.yaml").is_file()
    # the synthetic train split exercises both photometries (30 images, 40 % MONOCHROME1)
    train_meta = pd.read_csv(work / "images" / "train" / "meta.csv", dtype={"image_id": str}).set_index("image_id")
    assert set(train_meta.photometric) == {"MONOCHROME1", "MONOCHROME2"}

    labels = pd.read_csv(work / "labels.csv", dtype={"image_id": str})
    folds = pd.read_csv(work / "folds.csv", dtype={"image_id": str})
    assert list(labels.columns) == list(LABEL_COLUMNS) and list(folds.columns) == list(FOLD_COLUMNS)
    assert set(folds.image_id) == set(train_meta.index) and set(folds.fold) == {0, 1, 2}
    boxes = labels[labels.class_id != NO_FINDING].join(train_meta, on="image_id")
    assert len(boxes) and (boxes.x_max <= boxes.width).all() and (boxes.y_max <= boxes.height).all()
    assert (work / "config_folds.yaml").is_file() and (data / "config_synth.yaml").is_file()
