"""Shared fixtures: the real chest CR of pydicom-data and small hand-made DICOM files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

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


__all__ = ["RG1", "gradient", "make_dicom", "pydicom", "read_png"]
