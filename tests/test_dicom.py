"""vinbig.dicom: pixel transforms against pydicom's full-image reference, and the real chest CR."""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from conftest import gradient
from vinbig import dicom
from vinbig.dicom import DicomError, read_dicom


def reference(path, voi_range=None) -> np.ndarray:
    """The slow public recipe on the full image, in float: pydicom's modality LUT then VOI LUT/window,
    scaled by the output range the standard defines, inverted for MONOCHROME1."""
    ds = pydicom.dcmread(path)
    y = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    if voi_range is None:  # a window: pydicom clamps to [y(-inf), y(+inf)]
        with np.errstate(over="ignore"):
            lo, hi = apply_voi_lut(np.array([-1e12, 1e12]), ds).astype(np.float64)
    else:
        lo, hi = voi_range
    unit = np.clip((y - lo) / (hi - lo), 0, 1)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        unit = 1 - unit
    return unit * 255


def voi_lut_item(bits: int = 8) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [4096, 0, bits]
    item.LUTData = (np.sqrt(np.arange(4096) / 4095) * (2**bits - 1)).astype(np.uint16).tobytes()
    return item


@pytest.mark.parametrize(
    "case, tags",
    [
        ("linear window", dict(WindowCenter=2000, WindowWidth=1500)),
        ("window list, first used", dict(WindowCenter=[1800, 40], WindowWidth=[2000, 400])),
        ("rescale and window", dict(RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=3000, WindowWidth=4000)),
        ("linear exact", dict(WindowCenter=2048, WindowWidth=1000, VOILUTFunction="LINEAR_EXACT")),
        ("sigmoid", dict(WindowCenter=2048, WindowWidth=1200, VOILUTFunction="SIGMOID")),
        ("monochrome1 window", dict(WindowCenter=2000, WindowWidth=3000, photometric="MONOCHROME1")),
    ],
)
def test_window_matches_pydicom_full_image(dicom_factory, case, tags):
    photometric = tags.pop("photometric", "MONOCHROME2")
    path = dicom_factory("a.dcm", gradient(), photometric=photometric, **tags)
    px = read_dicom(path)
    assert px.voi == "window"
    assert px.image.dtype == np.uint8 and px.image.shape == (48, 40)
    assert np.abs(px.image.astype(float) - reference(path)).max() <= 0.5 + 1e-9


def test_voi_lut_sequence_matches_pydicom(dicom_factory):
    path = dicom_factory("a.dcm", gradient(), VOILUTSequence=[voi_lut_item(bits=8)])
    px = read_dicom(path)
    assert px.voi == "voi_lut"
    assert np.abs(px.image.astype(float) - reference(path, voi_range=(0, 255))).max() <= 0.5 + 1e-9


def test_voi_percentile_mode_ignores_the_files_window(dicom_factory):
    path = dicom_factory("a.dcm", gradient(), WindowCenter=100, WindowWidth=10)
    assert read_dicom(path).voi == "window"
    px = read_dicom(path, voi="percentile", percentiles=(0, 100))
    assert px.voi == "percentile" and px.image.min() == 0 and px.image.max() == 255


def test_percentile_window_without_voi_tags(dicom_factory):
    pixels = gradient()
    pixels[0, 0] = 4095 * 16  # one hot pixel far out must not flatten the contrast
    path = dicom_factory("a.dcm", pixels, bits_stored=16)
    px = read_dicom(path, percentiles=(1, 99))
    assert px.voi == "percentile"
    lo, hi = np.percentile(pixels, [1, 99])
    assert px.window_low == pytest.approx(lo, abs=2) and px.window_high == pytest.approx(hi, abs=2)
    assert px.image[0, 0] == 255
    expect = np.clip((pixels.astype(float) - px.window_low) / (px.window_high - px.window_low), 0, 1) * 255
    assert np.abs(px.image - expect).max() <= 0.5 + 1e-9


def test_signed_pixels_with_rescale(dicom_factory):
    pixels = (gradient(hi=2000).astype(np.int32) - 1000).astype(np.int16)
    path = dicom_factory("a.dcm", pixels, RescaleSlope=1, RescaleIntercept=500, WindowCenter=500, WindowWidth=1800)
    px = read_dicom(path)
    assert np.abs(px.image.astype(float) - reference(path)).max() <= 0.5 + 1e-9


@pytest.mark.parametrize("value", [0, 1234, 4095])
def test_constant_image_gives_black_without_warnings(dicom_factory, value):
    path = dicom_factory("a.dcm", np.full((30, 20), value, np.uint16))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no division by zero, no overflow
        px = read_dicom(path)
    assert px.voi == "constant" and px.image.dtype == np.uint8 and not px.image.any()


def test_monochrome1_is_inverted_so_bone_is_bright(dicom_factory):
    pixels = gradient()
    mono1 = read_dicom(dicom_factory("m1.dcm", pixels, photometric="MONOCHROME1")).image.astype(int)
    mono2 = read_dicom(dicom_factory("m2.dcm", pixels, photometric="MONOCHROME2")).image.astype(int)
    assert np.abs(mono1 + mono2 - 255).max() <= 1
    assert mono1[0, 0] == 255 and mono2[0, 0] == 0  # lowest stored value: white in MONOCHROME1


def test_real_chest_cr(rg1_dir):
    px = read_dicom(rg1_dir / "RG1_UNCR.dcm")
    assert (px.width, px.height) == (1841, 1955)
    assert (px.photometric, px.bits_stored, px.voi) == ("MONOCHROME1", 15, "window")
    assert (px.window_low, px.window_high) == (0.0, 30000.0)
    assert np.abs(px.image.astype(float) - reference(rg1_dir / "RG1_UNCR.dcm")).max() <= 0.5 + 1e-9
    # bone bright: the spine (centre column band) is brighter than the middle of the right lung
    h, w = px.image.shape
    spine = px.image[int(0.3 * h):int(0.6 * h), int(0.47 * w):int(0.53 * w)].mean()
    lung = px.image[int(0.3 * h):int(0.45 * h), int(0.2 * w):int(0.3 * w)].mean()
    assert spine > lung + 20


@pytest.mark.parametrize("compressed, plain", [("RG1_J2KR", "RG1_UNCR"), ("RG1_J2KI", "RG1_UNCI")])
def test_jpeg2000_decodes_to_its_uncompressed_twin(rg1_dir, compressed, plain):
    a = read_dicom(rg1_dir / f"{compressed}.dcm")
    b = read_dicom(rg1_dir / f"{plain}.dcm")
    assert a.transfer_syntax.startswith("1.2.840.10008.1.2.4.9")
    np.testing.assert_array_equal(a.image, b.image)


def dirty(clean: np.ndarray, bits_stored: int = 12) -> np.ndarray:
    """`clean` (values within `bits_stored` bits) with garbage in the unused high bits of every third pixel."""
    raw = clean.view(np.uint16) & np.uint16((1 << bits_stored) - 1)
    garbage = np.where(np.arange(clean.size).reshape(clean.shape) % 3 == 0, 0xA000, 0x5000).astype(np.uint16)
    return (raw | garbage).view(clean.dtype)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("tags", [{}, dict(WindowCenter=300, WindowWidth=3000)], ids=["percentile", "window"])
def test_garbage_in_the_unused_high_bits_does_not_change_the_picture(dicom_factory, signed, tags):
    # the standard says bits above Bits Stored carry no meaning; pydicom's default decoding clears them (or
    # extends the sign), and vinbig, which reads the pixel data without a copy, must give that same picture
    clean = gradient(48, 40)
    if signed:
        clean = (clean.astype(np.int32) - 2048).astype(np.int16)
    a = read_dicom(dicom_factory("clean.dcm", clean, **tags))
    b = read_dicom(dicom_factory("dirty.dcm", dirty(clean), **tags))
    assert (a.voi, b.voi) == (("window",) * 2 if tags else ("percentile",) * 2)
    np.testing.assert_array_equal(a.image, b.image)
    assert (a.window_low, a.window_high) == (b.window_low, b.window_high)


def test_big_endian_pixels_give_the_picture_of_their_little_endian_twin():
    from pydicom.data import get_testdata_file

    big = read_dicom(get_testdata_file("MR_small_bigendian.dcm"))
    little = read_dicom(get_testdata_file("MR_small.dcm"))
    assert big.transfer_syntax == "1.2.840.10008.1.2.2"
    np.testing.assert_array_equal(big.image, little.image)


@pytest.mark.parametrize("dtype, top", [(np.uint16, 65535), (np.uint16, 4095), (np.uint8, 255), (np.int16, 2047)])
@pytest.mark.parametrize("opencv_lut16", [True, False], ids=["opencv5", "opencv4"])
def test_lookup_and_histogram_equal_numpy_on_every_value(monkeypatch, dtype, top, opencv_lut16):
    # the fast paths (OpenCV's LUT and calcHist, numpy gathers in pieces) against the plain numpy expressions
    if opencv_lut16 and not dicom._opencv_lut16():
        pytest.skip("this OpenCV has no 16-bit LUT")
    monkeypatch.setattr(dicom, "_LUT16", [opencv_lut16])
    monkeypatch.setattr(dicom, "_CHUNK", 1000)  # several pieces, the last one short
    rng = np.random.default_rng(0)
    low = -2048 if np.dtype(dtype).kind == "i" else 0
    arr = rng.integers(low, top + 1, (97, 131)).astype(dtype)
    arr[0, 0], arr[-1, -1] = low, top
    offset = min(low, 0)
    lut = rng.integers(0, 256, top - offset + 1).astype(np.uint8)
    np.testing.assert_array_equal(dicom.apply_lut(lut, offset, arr), lut[arr.astype(np.int64) - offset])
    counts = dicom._histogram(arr, offset, top - offset + 1)
    np.testing.assert_array_equal(counts, np.bincount(arr.ravel().astype(np.int64) - offset, minlength=len(lut)))


def test_unreadable_file_raises_dicom_error(tmp_path):
    path = tmp_path / "x.dicom"
    path.write_bytes(b"not a dicom at all" * 20)
    with pytest.raises(DicomError, match="not a DICOM file"):
        read_dicom(path)


def with_header(path, out, **tags):
    """A copy of the DICOM `path` at `out` whose header says `tags` (the pixel data unchanged)."""
    ds = pydicom.dcmread(path)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(out)
    return out


@pytest.mark.parametrize("tags, words", [
    (dict(Columns=33), "holds 3840 bytes, but Rows 48 x Columns 33 at 16 bits allocated need 3168 bytes"),
    (dict(Rows=38), "holds 3840 bytes, but Rows 38 x Columns 40 at 16 bits allocated need 3040 bytes"),
    (dict(Rows=50), "pixel data is truncated: it holds 3840 bytes, but Rows 50 x Columns 40"),
])
def test_pixel_data_longer_or_shorter_than_the_header_is_an_error(dicom_factory, tmp_path, tags, words):
    # pydicom trims longer data as padding: the image would come out sheared (Columns) or cropped (Rows)
    good = dicom_factory("good.dcm", gradient(48, 40))
    bad = with_header(good, tmp_path / "bad.dcm", **tags)
    with pytest.raises(DicomError) as e:
        read_dicom(bad)
    assert words in str(e.value)
    if "truncated" not in words:
        assert "re-export the file" in str(e.value)


def test_one_padding_byte_of_an_odd_length_is_allowed(dicom_factory):
    pixels = (np.arange(15, dtype=np.uint8).reshape(3, 5) * 17)
    path = dicom_factory("odd.dcm", pixels, bits_stored=8, BitsAllocated=8)
    assert len(pydicom.dcmread(path).PixelData) == 16  # 15 bytes and the pad byte DICOM requires
    assert read_dicom(path).image.shape == (3, 5)


def test_an_unknown_transfer_syntax_is_not_supported_and_the_supported_ones_are_listed(dicom_factory):
    from pydicom.encaps import encapsulate

    path = dicom_factory("mpeg.dcm", gradient())
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG-2: no decoder anywhere
    ds.PixelData = encapsulate([ds.PixelData])
    ds.save_as(path, enforce_file_format=False)
    with pytest.raises(DicomError) as e:
        read_dicom(path)
    message = str(e.value)
    assert "transfer syntax MPEG2 Main Profile / Main Level (1.2.840.10008.1.2.4.100) is not supported" in message
    for name in ("Explicit VR Little Endian", "JPEG 2000 Image Compression (Lossless Only)", "RLE Lossless"):
        assert name in message
    assert "install" not in message  # pylibjpeg and its plugins are installed: installing them changes nothing
