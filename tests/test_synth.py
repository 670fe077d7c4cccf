"""`vinbig synth`: the Kaggle layout and schema, determinism, DICOM variety and visible lesions."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from vinbig.artifacts import CLASS_NAMES, NO_FINDING, NO_FINDING_PREDICTION, SUBMISSION_COLUMNS, TRAIN_COLUMNS
from vinbig.synth import CLASSES, REF_H, REF_W, make_dataset, render_image

HEX32 = re.compile(r"^[0-9a-f]{32}$")
SMALL = dict(n_train=24, n_test=8, seed=3, size=192, abnormal_fraction=0.5)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A small dataset written by two processes."""
    out = tmp_path_factory.mktemp("synth") / "data"
    summary = make_dataset(out, workers=2, **SMALL)
    assert summary.train == 24 and summary.test == 8
    return out


@pytest.fixture(scope="module")
def train(data) -> pd.DataFrame:
    return pd.read_csv(data / "train.csv", dtype={"image_id": str})


@pytest.fixture(scope="module")
def headers(data) -> dict[str, pydicom.Dataset]:
    """image_id -> DICOM header (no pixels), train and test."""
    return {f.stem: pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(data.glob("*/*.dicom"))}


def files(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def display(path: Path, where: np.ndarray | None = None) -> np.ndarray:
    """The image as a converter shows it: modality LUT, 0.5-99.5 percentile window (of the pixels
    `where`, default all), bone bright, 0..255."""
    ds = pydicom.dcmread(path)
    m = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    lo, hi = np.percentile(m if where is None else m[where], [0.5, 99.5])
    unit = np.clip((m - lo) / (hi - lo), 0, 1)
    return 255 * (1 - unit if ds.PhotometricInterpretation == "MONOCHROME1" else unit)


# --------------------------------------------------------------------------- layout and schema


def test_kaggle_layout_and_columns(data, train):
    sub = pd.read_csv(data / "sample_submission.csv", dtype={"image_id": str})
    assert tuple(train.columns) == TRAIN_COLUMNS
    assert tuple(sub.columns) == SUBMISSION_COLUMNS
    train_files = {f.stem for f in (data / "train").iterdir()}
    test_files = {f.stem for f in (data / "test").iterdir()}
    assert all(f.suffix == ".dicom" for f in (data / "train").iterdir())
    assert train_files == set(train.image_id) and len(train_files) == 24
    assert sorted(sub.image_id) == sorted(test_files) and len(sub) == 8 == sub.image_id.nunique()
    assert (sub.PredictionString == NO_FINDING_PREDICTION).all()
    assert not train_files & test_files
    assert all(HEX32.match(i) for i in train_files | test_files)


def test_class_names_and_ids_are_the_competitions(train):
    assert train.class_id.between(0, NO_FINDING).all()
    assert (train.class_name == train.class_id.map(dict(enumerate(CLASS_NAMES)))).all()
    assert train.class_id.nunique() >= 5  # several lesion classes, not one


def test_three_distinct_readers_per_image_with_major_readers_dominating(train):
    readers = train.groupby("image_id").rad_id.agg(lambda r: sorted(set(r)))
    assert (readers.map(len) == 3).all()
    assert set(train.rad_id) <= {f"R{k}" for k in range(1, 18)}
    share = readers.explode().isin(["R8", "R9", "R10"]).mean()
    assert share > 0.4  # R8, R9, R10 read far more than their 3/17 share


def test_no_image_mixes_no_finding_and_boxes(train):
    normal = train.class_id == NO_FINDING
    per_image = normal.groupby(train.image_id).agg(["all", "any"])
    assert (per_image["all"] == per_image["any"]).all()
    assert per_image["all"].any() and not per_image["all"].all()  # both kinds present at abnormal_fraction 0.5
    assert train.loc[normal, list(TRAIN_COLUMNS[4:])].isna().all().all()
    assert (train[normal].groupby("image_id").size() == 3).all()  # one row per reader
    boxed = train[~normal]
    assert (boxed.groupby("image_id").rad_id.nunique() == 3).all()  # every reader of an abnormal image boxes


def test_boxes_lie_inside_the_image_of_the_dicom_header(train, headers):
    boxes = train[train.class_id != NO_FINDING]
    assert len(boxes) >= 12
    cols = boxes.image_id.map(lambda i: int(headers[i].Columns))
    rows = boxes.image_id.map(lambda i: int(headers[i].Rows))
    assert (boxes.x_min >= 0).all() and (boxes.y_min >= 0).all()
    assert (boxes.x_max <= cols).all() and (boxes.y_max <= rows).all()
    assert (boxes.x_max > boxes.x_min).all() and (boxes.y_max > boxes.y_min).all()
    assert np.allclose(boxes[list(TRAIN_COLUMNS[4:])] * 10, np.round(boxes[list(TRAIN_COLUMNS[4:])] * 10))


@pytest.mark.parametrize("fraction, normal", [(0.0, True), (1.0, False)])
def test_abnormal_fraction_zero_and_one(tmp_path, fraction, normal):
    make_dataset(tmp_path, n_train=5, n_test=1, size=96, abnormal_fraction=fraction, workers=1)
    train = pd.read_csv(tmp_path / "train.csv")
    assert ((train.class_id == NO_FINDING) == normal).all() and train.image_id.nunique() == 5


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_files_whatever_the_workers(data, tmp_path):
    again = tmp_path / "again"
    make_dataset(again, workers=1, **SMALL)
    first, second = files(data), files(again)
    assert sorted(first) == sorted(second)
    assert [k for k in first if first[k] != second[k]] == []


def test_another_seed_gives_other_images(data, tmp_path):
    make_dataset(tmp_path, workers=1, **{**SMALL, "n_train": 4, "n_test": 2, "seed": 4})
    assert not {f.stem for f in tmp_path.glob("*/*.dicom")} & {f.stem for f in data.glob("*/*.dicom")}
    assert (tmp_path / "train.csv").read_bytes() != (data / "train.csv").read_bytes()


# --------------------------------------------------------------------------- DICOM properties


def test_every_file_decodes_with_its_declared_encoding(data, headers):
    for image_id, header in headers.items():
        path = next(data.glob(f"*/{image_id}.dicom"))
        ds = pydicom.dcmread(path)
        assert path.read_bytes()[128:132] == b"DICM" and ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        arr = ds.pixel_array
        assert arr.shape == (ds.Rows, ds.Columns) and arr.dtype == np.uint16
        assert ds.BitsAllocated == 16 and ds.HighBit == ds.BitsStored - 1 and ds.PixelRepresentation == 0
        assert arr.max() <= 2**ds.BitsStored - 1 and arr.max() > arr.min()
        assert ds.Modality in ("DX", "CR") and ds.SamplesPerPixel == 1


def test_files_vary_like_the_real_ones(data, headers):
    hs = list(headers.values())
    syntaxes = {str(h.file_meta.TransferSyntaxUID) for h in hs}
    assert syntaxes == {pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.JPEG2000Lossless}
    assert {h.PhotometricInterpretation for h in hs} == {"MONOCHROME1", "MONOCHROME2"}
    assert len({int(h.BitsStored) for h in hs}) >= 3 and {int(h.BitsStored) for h in hs} <= set(range(12, 17))
    assert {"WindowCenter" in h for h in hs} == {True, False}
    assert {"RescaleSlope" in h for h in hs} == {True, False}
    sizes = [(int(h.Rows), int(h.Columns)) for h in hs]
    assert all(r != c for r, c in sizes) and len(set(sizes)) >= len(sizes) - 2
    assert 0.8 * 192 <= np.median([r for r, _ in sizes]) <= 1.2 * 192
    assert all(0.75 <= c / r <= 1.1 for r, c in sizes)


def test_window_tags_are_in_modality_units_and_cover_the_body(data, headers):
    windowed = [i for i, h in headers.items() if "WindowCenter" in h]
    assert any(float(headers[i].get("RescaleSlope", 1)) == 2 or float(headers[i].get("RescaleIntercept", 0)) != 0
               for i in windowed), "no windowed file with a rescale: the test would not tell the units apart"
    for image_id in windowed:
        ds = pydicom.dcmread(next(data.glob(f"*/{image_id}.dicom")))
        m = apply_modality_lut(ds.pixel_array, ds)
        low, high = ds.WindowCenter - ds.WindowWidth / 2, ds.WindowCenter + ds.WindowWidth / 2
        p5, p95 = np.percentile(m, [5, 95])
        assert low <= p5 and p95 <= high and ds.WindowWidth < 1.5 * (m.max() - m.min())


def test_bone_is_bright_after_photometric_interpretation(data, headers):
    """The spine (centre column) is brighter than the lung fields in both MONOCHROME1 and 2."""
    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        for image_id in [i for i, h in headers.items() if h.PhotometricInterpretation == photometric][:3]:
            img = display(next(data.glob(f"*/{image_id}.dicom")))
            h, w = img.shape
            spine = img[int(0.3 * h):int(0.5 * h), int(0.48 * w):int(0.52 * w)].mean()
            lungs = img[int(0.3 * h):int(0.5 * h), int(0.25 * w):int(0.35 * w)].mean()
            assert spine > lungs + 40, (photometric, spine, lungs)


# --------------------------------------------------------------------------- lesions


def median_box(class_id: int, height: int, width: int) -> tuple:
    """The median box of docs/competition.md (Classes and boxes) for a class, scaled to the image."""
    _, w, h, cx, cy, *_ = CLASSES[class_id]
    return (class_id, (cx - w / 2) / REF_W * width, (cy - h / 2) / REF_H * height,
            (cx + w / 2) / REF_W * width, (cy + h / 2) / REF_H * height)


@pytest.mark.parametrize("class_id", range(14), ids=CLASS_NAMES[:14])
def test_every_class_is_painted_visibly_inside_its_box(class_id):
    height, width = 256, 224
    lesion = median_box(class_id, height, width)
    with_lesion = render_image(np.random.default_rng(class_id), height, width, [lesion])
    without = render_image(np.random.default_rng(class_id), height, width, [])
    lo, hi = np.percentile(without, [0.5, 99.5])
    diff = np.abs(with_lesion - without) * 255 / (hi - lo)  # in 8-bit levels of a percentile window
    _, x0, y0, x1, y1 = lesion
    inside = np.zeros(diff.shape, bool)
    inside[int(y0):int(np.ceil(y1)) + 1, int(x0):int(np.ceil(x1)) + 1] = True
    assert np.percentile(diff[inside], 95) > 20
    if class_id != 3:  # cardiomegaly widens the heart above and below its widest band, the box
        assert diff[~inside].max() < 1e-3


def test_lesions_in_the_dicoms_lie_in_the_readers_boxes(tmp_path):
    """Image i of a seed has the same anatomy with or without lesions: the difference is in the boxes."""
    kwargs = dict(n_train=8, n_test=0, seed=5, size=192, compressed_fraction=0.5, workers=1)
    make_dataset(tmp_path / "sick", abnormal_fraction=1.0, **kwargs)
    make_dataset(tmp_path / "healthy", abnormal_fraction=0.0, **kwargs)
    train = pd.read_csv(tmp_path / "sick" / "train.csv", dtype={"image_id": str})
    assert train.image_id.nunique() == 8 and (train.class_id != NO_FINDING).all()
    inside_diffs, outside_diffs = [], []
    for image_id, boxes in train.groupby("image_id"):
        sick_path, healthy_path = (tmp_path / d / "train" / f"{image_id}.dicom" for d in ("sick", "healthy"))
        ds = pydicom.dcmread(sick_path, stop_before_pixels=True)
        far = np.ones((ds.Rows, ds.Columns), bool)  # away from the boxes, grown where a soft edge or heart reaches
        for b in boxes.itertuples():
            w, h = b.x_max - b.x_min, b.y_max - b.y_min
            grow = 1.0 if b.class_id == 3 else 0.15
            far[max(int(b.y_min - grow * h), 0):int(b.y_max + grow * h) + 2,
                max(int(b.x_min - 0.15 * w), 0):int(b.x_max + 0.15 * w) + 2] = False
        diff = np.abs(display(sick_path, far) - display(healthy_path, far))  # one window for both
        inside_diffs.append(max(np.percentile(diff[int(b.y_min):int(b.y_max) + 1, int(b.x_min):int(b.x_max) + 1], 95)
                                for b in boxes.itertuples()))
        outside_diffs.append(np.percentile(diff[far], 99))
    assert min(inside_diffs) > 20, inside_diffs  # every abnormal image shows a lesion in one of its boxes
    assert max(outside_diffs) < 2, outside_diffs  # and nothing changes elsewhere but rounding


def test_invalid_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="abnormal_fraction"):
        make_dataset(tmp_path, n_train=1, n_test=0, abnormal_fraction=1.5)
    with pytest.raises(ValueError, match="workers"):
        make_dataset(tmp_path, n_train=1, n_test=0, workers=-1)


# The process pool synth shares with `vinbig images` and `vinbig fuse` (vinbig.parallel), in the ordered mode synth
# and fuse use: a worker that dies (here it exits at once with code 3) ends the map with an error, not a hang.
DYING_POOL = """
import os
from vinbig.parallel import process_map
if __name__ == "__main__":
    with process_map(os._exit, [3, 3, 3, 3], 2) as (results, processes):
        list(results)
"""


def test_a_dead_worker_of_the_shared_pool_is_an_error_not_a_hang():
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", DYING_POOL], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parent.parent)  # the old pool waited forever here
    assert run.returncode == 1
    assert re.search(r"WorkerDiedError: worker process \d+ exited with code 3 after 0 of 4 items had come back, so "
                     r"the run stopped; rerun the same command, with a lower --workers if memory ran out", run.stderr)
