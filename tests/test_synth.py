"""`vinbig synth`: the Kaggle layout and schema, the private test truth, the readers' habits, determinism, DICOM
variety and visible lesions."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from vinbig.artifacts import (BOX, CLASS_NAMES, LABEL_COLUMNS, NO_FINDING, NO_FINDING_PREDICTION, SUBMISSION_COLUMNS,
                              TRAIN_COLUMNS)
from vinbig.boxes import iou
from vinbig.synth import (CLASSES, PROLIFIC, PROLIFIC_AREA, READER_P, READERS, REF_H, REF_W, latent_lesions,
                          make_dataset, reader_rows, render_image)

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
def truth(data) -> pd.DataFrame:
    return pd.read_csv(data / "private" / "test_labels.csv", dtype={"image_id": str})


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


# --------------------------------------------------------------------------- the private test truth


def test_the_test_truth_is_written_only_under_private(data):
    """Beside the Kaggle files, DATA holds private/test_labels.csv and the manifest of what vinbig wrote."""
    assert sorted(p.name for p in data.iterdir()) == [".vinbig-manifest.json", "private", "sample_submission.csv",
                                                      "test", "train", "train.csv"]
    assert [p.name for p in (data / "private").iterdir()] == ["test_labels.csv"]
    assert not list(data.rglob("*.partial"))


def test_the_test_truth_has_the_columns_of_labels_csv_and_one_row_14_per_normal_image(data, truth, headers):
    assert tuple(truth.columns) == LABEL_COLUMNS
    assert set(truth.image_id) == {f.stem for f in (data / "test").iterdir()}  # every test image, no train image
    normal = truth.class_id == NO_FINDING
    per_image = normal.groupby(truth.image_id).agg(["all", "any", "size"])
    assert (per_image["all"] == per_image["any"]).all()  # no image mixes "No finding" and boxes
    assert per_image["all"].any() and not per_image["all"].all()  # both kinds at abnormal_fraction 0.5
    assert (per_image.loc[per_image["all"], "size"] == 1).all()  # one class-14 row per normal image
    assert truth.loc[normal, list(BOX)].isna().all().all()  # with an empty box, as labels.csv has it
    assert (truth.score == 1.0).all() and (truth.n_readers == 5).all()  # a consensus of five
    boxes = truth[~normal]
    assert boxes.class_id.between(0, NO_FINDING - 1).all()
    assert (boxes.x_min >= 0).all() and (boxes.y_min >= 0).all()
    assert (boxes.x_max <= boxes.image_id.map(lambda i: int(headers[i].Columns))).all()
    assert (boxes.y_max <= boxes.image_id.map(lambda i: int(headers[i].Rows))).all()
    assert (boxes.x_max > boxes.x_min).all() and (boxes.y_max > boxes.y_min).all()
    assert list(truth.image_id) == sorted(truth.image_id)


def test_the_test_truth_is_deterministic_for_a_seed_and_differs_for_another(data, tmp_path):
    make_dataset(tmp_path / "again", workers=1, **SMALL)
    make_dataset(tmp_path / "other", workers=1, **{**SMALL, "seed": 4})
    truth = (data / "private" / "test_labels.csv").read_bytes()
    assert (tmp_path / "again" / "private" / "test_labels.csv").read_bytes() == truth
    assert (tmp_path / "other" / "private" / "test_labels.csv").read_bytes() != truth


# --------------------------------------------------------------------------- the readers' habits


def read_habits(n_images: int = 400, height: int = 512, width: int = 470) -> dict[bool, dict]:
    """Reader rows of `n_images` abnormal images, measured against their latent lesions, for the prolific readers
    (True) and the careful ones (False): reads, boxes per read, the share of lesions missed, spurious boxes per
    read, box area over the lesion's (per box, with its class) and IoU with the lesion."""
    stats = {p: {"reads": 0, "boxes": 0, "lesions": 0, "missed": 0, "spurious": 0, "area": [], "iou": []}
             for p in (True, False)}
    for i in range(n_images):
        rng = np.random.default_rng([11, i])
        lesions = latent_lesions(rng, height, width)
        rows = pd.DataFrame(reader_rows(rng, lesions, height, width))
        for reader, drawn in rows.groupby("rad_id"):
            s = stats[reader in PROLIFIC]
            s["reads"] += 1
            s["boxes"] += len(drawn)
            box = drawn[list(BOX)].to_numpy()
            cx, cy = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
            free = np.ones(len(drawn), bool)
            for class_id, x0, y0, x1, y1 in lesions:  # a lesion is seen by a box of its class centred inside it
                hit = free & (drawn.class_id.to_numpy() == class_id) & (x0 < cx) & (cx < x1) & (y0 < cy) & (cy < y1)
                s["lesions"] += 1
                if not hit.any():
                    s["missed"] += 1
                    continue
                j = np.flatnonzero(hit)[0]
                free[j] = False
                area = (box[j, 2] - box[j, 0]) * (box[j, 3] - box[j, 1])
                s["area"].append((class_id, area / ((x1 - x0) * (y1 - y0))))
                s["iou"].append(float(np.ravel(iou(box[j][None], np.array([[x0, y0, x1, y1]])))[0]))
            s["spurious"] += int(free.sum())
    return stats


@pytest.fixture(scope="module")
def habits() -> dict[bool, dict]:
    return read_habits()


def test_the_prolific_readers_read_most_images(habits):
    assert READERS[7:10] == PROLIFIC and READER_P[7:10].sum() > 0.6
    share = habits[True]["reads"] / (habits[True]["reads"] + habits[False]["reads"])
    assert 0.45 < share < 0.65  # 3 of 17 readers do 54 % of the reads (docs/competition.md, The synthetic data)


def test_the_prolific_readers_miss_more_and_add_more_spurious_boxes(habits):
    prolific, careful = habits[True], habits[False]
    miss = {p: habits[p]["missed"] / habits[p]["lesions"] for p in (True, False)}
    spurious = {p: habits[p]["spurious"] / habits[p]["reads"] for p in (True, False)}
    assert 0.10 < miss[True] < 0.20 and 0.04 < miss[False] < 0.10 and miss[True] > 1.5 * miss[False], miss
    assert spurious[True] > 0.45 and spurious[False] < 0.1, spurious
    boxes = prolific["boxes"] / prolific["reads"] / (careful["boxes"] / careful["reads"])
    assert 1.15 < boxes < 1.45, boxes  # more boxes per abnormal read, as in the real data (2.77 against 2.2)


def test_the_prolific_readers_draw_tighter_looser_placed_boxes_and_the_careful_ones_the_truth(habits):
    area = {p: pd.DataFrame(habits[p]["area"], columns=["class_id", "ratio"]) for p in (True, False)}
    careful = area[False].ratio.median()
    assert 0.95 < careful < 1.05, careful
    by_class = area[True].groupby("class_id").ratio.median()
    for class_id in (0, 3, 8, 9, 10, 11, 13):  # the classes with many lesions: their documented ratio
        assert by_class[class_id] == pytest.approx(PROLIFIC_AREA[class_id], rel=0.25), (class_id, by_class[class_id])
    assert area[True].ratio.median() < 0.55
    ious = {p: np.array(habits[p]["iou"]) for p in (True, False)}
    assert np.median(ious[False]) > 0.8 and (ious[False] > 0.4).mean() > 0.98  # the truth is the careful readers'
    assert np.median(ious[True]) < 0.5 and (ious[True] > 0.4).mean() < 0.65  # the metric's IoU 0.4 often missed
    spread = {p: np.std(np.log(area[p].ratio / area[p].class_id.map(lambda c: PROLIFIC_AREA[c] if p else 1.0)))
              for p in (True, False)}
    assert spread[True] > 2 * spread[False], spread  # and jitter more


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_files_whatever_the_workers(data, tmp_path):
    again = tmp_path / "again"
    make_dataset(again, workers=1, **SMALL)
    first, second = files(data), files(again)
    assert sorted(first) == sorted(second) and "private/test_labels.csv" in first
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


def test_lesions_in_the_dicoms_lie_in_the_truth_boxes(tmp_path):
    """Image i of a seed has the same anatomy with or without lesions: the difference is in the truth's boxes, and
    every one of them shows its lesion."""
    kwargs = dict(n_train=0, n_test=8, seed=5, size=192, compressed_fraction=0.5, workers=1)
    make_dataset(tmp_path / "sick", abnormal_fraction=1.0, **kwargs)
    make_dataset(tmp_path / "healthy", abnormal_fraction=0.0, **kwargs)
    truth = pd.read_csv(tmp_path / "sick" / "private" / "test_labels.csv", dtype={"image_id": str})
    assert truth.image_id.nunique() == 8 and (truth.class_id != NO_FINDING).all()
    inside_diffs, outside_diffs = [], []
    for image_id, boxes in truth.groupby("image_id"):
        sick_path, healthy_path = (tmp_path / d / "test" / f"{image_id}.dicom" for d in ("sick", "healthy"))
        ds = pydicom.dcmread(sick_path, stop_before_pixels=True)
        far = np.ones((ds.Rows, ds.Columns), bool)  # away from the boxes, grown where a soft edge or heart reaches
        for b in boxes.itertuples():
            w, h = b.x_max - b.x_min, b.y_max - b.y_min
            grow = 1.0 if b.class_id == 3 else 0.15
            far[max(int(b.y_min - grow * h), 0):int(b.y_max + grow * h) + 2,
                max(int(b.x_min - 0.15 * w), 0):int(b.x_max + 0.15 * w) + 2] = False
        diff = np.abs(display(sick_path, far) - display(healthy_path, far))  # one window for both
        inside_diffs += [np.percentile(diff[int(b.y_min):int(b.y_max) + 1, int(b.x_min):int(b.x_max) + 1], 95)
                         for b in boxes.itertuples()]
        outside_diffs.append(np.percentile(diff[far], 99))
    assert min(inside_diffs) > 20, inside_diffs  # every truth box shows its lesion
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
