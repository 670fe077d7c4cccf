"""Shared fixtures and helpers: the real chest CR of pydicom-data, small hand-made DICOM files, a tiny synthetic work
folder, hand-made train tables, meta.csv and fold models, a machine's GPUs, headless Chromium."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from browser import Browser, chromium
from vinbig.artifacts import CLASS_NAMES, META_COLUMNS, TRAIN_COLUMNS

sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))
from _common import classifier_checkpoint, detector_checkpoint  # noqa: E402 (bench/, beside tests/)

# Tests that import ultralytics directly (before vinbig's detector, which sets this itself) must not
# make it probe DNS at import; the network-blocked detector test runs in a subprocess without it.
os.environ.setdefault("YOLO_OFFLINE", "1")

RG1 = ("RG1_UNCR", "RG1_J2KR", "RG1_UNCI", "RG1_J2KI")


@pytest.fixture(scope="session")
def rg1_dir() -> Path:
    """Folder of pydicom-data's chest CR files (1955 x 1841, MONOCHROME1, 15 bits)."""
    data_store = pytest.importorskip("data_store", reason="pydicom-data is part of the dev extra")
    path = Path(os.path.dirname(data_store.__file__)) / "data"
    assert all((path / f"{n}.dcm").is_file() for n in RG1), f"pydicom-data lacks the RG1 files in {path}"
    return path


def make_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 12,
               **tags) -> Path:
    """Write a minimal uncompressed greyscale DICOM with `pixels` (uint16 or int16) and extra `tags`."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def dicom_factory(tmp_path):
    """make(name, pixels, **tags) -> path of a small DICOM in tmp_path/src."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)

    def make(name: str, pixels: np.ndarray, **kwargs) -> Path:
        return make_dicom(src / name, pixels, **kwargs)

    return make


def gradient(rows: int = 48, cols: int = 40, hi: int = 4095, dtype=np.uint16) -> np.ndarray:
    """A non-square test image spanning 0..hi, different along both axes."""
    y, x = np.mgrid[0:rows, 0:cols]
    return ((x * 3 + y * 5) * hi // (3 * (cols - 1) + 5 * (rows - 1))).astype(dtype)


def read_png(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, f"{path} is not a readable PNG"
    return image


__all__ = ["RG1", "classifier_checkpoint", "detector_checkpoint", "gradient", "make_dicom", "pydicom", "read_png"]


# --------------------------------------------------------------------------- a tiny synthetic work folder


@dataclass(frozen=True)
class SynthWork:
    """A synthetic dataset (`data`, Kaggle layout) and its work folder after images and folds."""

    data: Path
    work: Path


@pytest.fixture(scope="session")
def synth_work(tmp_path_factory) -> SynthWork:
    """30 train and 6 test images (half of them abnormal), PNGs of 128 px, 3 folds. Shared: do not write in it;
    tests that write stage outputs take `work_copy`."""
    from vinbig.app.cli import main

    root = tmp_path_factory.mktemp("synth")
    data, work = root / "data", root / "work"
    assert main(["synth", "--out", str(data), "--n-train", "30", "--n-test", "6", "--size", "192", "-q",
                 "--set", "synth.abnormal_fraction=0.5", "--workers", "1"]) == 0
    for split in ("train", "test"):
        assert main(["images", "--src", str(data / split), "--out", str(work / "images" / split),
                     "--size", "128", "--workers", "1", "-q"]) == 0
    assert main(["folds", "--train-csv", str(data / "train.csv"), "--out", str(work), "--n-folds", "3", "-q"]) == 0
    return SynthWork(data, work)


def own_work(synth_work: SynthWork, root: Path) -> Path:
    """``root/work``: a work folder over the shared synthetic images (linked), labels and folds (copied)."""
    work = root / "work"
    (work / "images").mkdir(parents=True)
    for split in ("train", "test"):
        (work / "images" / split).symlink_to(synth_work.work / "images" / split, target_is_directory=True)
    for name in ("labels.csv", "folds.csv", "readers.csv"):
        shutil.copy(synth_work.work / name, work / name)
    return work


@pytest.fixture
def work_copy(synth_work, tmp_path) -> SynthWork:
    """A fresh work folder of its own (see `own_work`) for a test that writes stage outputs."""
    return SynthWork(synth_work.data, own_work(synth_work, tmp_path))


# --------------------------------------------------------------------------- hand-made inputs of `vinbig folds`


def train_table(*rows) -> pd.DataFrame:
    """A validated-looking train table from (image_id, rad_id, class_id, x_min, y_min, x_max, y_max) tuples;
    class 14 rows may give only (image_id, rad_id, 14)."""
    records = []
    for r in rows:
        image_id, rad_id, class_id, *box = r
        box = box or [np.nan] * 4
        records.append((image_id, CLASS_NAMES[class_id], class_id, rad_id, *map(float, box)))
    return pd.DataFrame.from_records(records, columns=list(TRAIN_COLUMNS))


def write_meta(work: Path, sizes: dict[str, tuple[int, int]], png_size: tuple[int, int] | None = None) -> Path:
    """WORK/images/train/meta.csv as `vinbig images` writes it, giving the original (width, height) of each image
    and of its PNG (`png_size`, else the original's)."""
    rows = []
    for image_id, (width, height) in sizes.items():
        png_width, png_height = png_size or (width, height)
        rows.append({"image_id": image_id, "width": width, "height": height, "png_width": png_width,
                     "png_height": png_height, "photometric": "MONOCHROME2", "bits_stored": 12, "voi": "window",
                     "window_low": 0, "window_high": 4095, "transfer_syntax": "1.2.840.10008.1.2.1"})
    path = work / "images" / "train" / "meta.csv"
    path.parent.mkdir(parents=True)
    pd.DataFrame(rows, columns=list(META_COLUMNS)).to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------- a machine's GPUs, a browser

# torch 2.14 built for CUDA 13: no Pascal (P100, sm_60) nor Volta kernels any more
CU130 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
T4 = SimpleNamespace(name="Tesla T4", total_memory=15 * 2 ** 30, major=7, minor=5)
P100 = SimpleNamespace(name="Tesla P100-PCIE-16GB", total_memory=16 * 2 ** 30, major=6, minor=0)


def gpus(monkeypatch, *cards: SimpleNamespace, arch=CU130) -> None:
    """Make torch report `cards` (none: a CPU-only machine) and a build with kernels for `arch` (only the device
    rules run: nothing computes on them)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(cards))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(cards))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: cards[i])
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arch))


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium (tests/browser.py), closed after the test; skips the test without a chromium binary."""
    binary = chromium()
    if binary is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    b = Browser(binary, tmp_path / "profile")
    yield b
    b.close()
