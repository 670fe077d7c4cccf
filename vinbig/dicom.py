"""Read a DICOM radiograph into display-ready 8-bit pixels.

The transforms of the standard, in order: modality LUT (rescale slope/intercept or a Modality
LUT Sequence), VOI (the file's VOI LUT Sequence or window, else a robust percentile window), and
MONOCHROME1 inversion so that bone is always bright. They are evaluated once per possible stored
value, on a lookup table of at most 65,536 entries, and the image is mapped with one integer gather:
no floating-point pass over the full image. The full-size image is touched only by integer passes:
its minimum and maximum, a histogram (only for the percentile window) and the gather, each through
the fastest exact call at hand (OpenCV's 16-bit `LUT` and `calcHist` where they apply, numpy
otherwise); native pixel data is a read-only view on the bytes read, not a copy.

Compressed transfer syntaxes decode through pydicom's pixel plugins (pylibjpeg with its openjpeg,
libjpeg and rle plugins: JPEG 2000, JPEG-LS, JPEG lossless and baseline, RLE); any other syntax is an
error that lists the supported ones. Uncompressed pixel data must have the length the header gives it.

Every file is bounded before its pixel data is decoded (:func:`check_header`): one greyscale frame of at most
:data:`MAX_PIXELS` at 1, 8, 16 or 32 bits allocated; a Deflated data set is inflated no further than its header
declares; a compressed frame must declare in its codestream the size of the header, within the limits of
:mod:`vinbig.codestream`, and only the one frame the header declares is decoded; and 32-bit data whose values span
more than a table's 65,536 entries is mapped through a table of its distinct values (at most 65,536), so that no
input of a few MB makes vinbig allocate gigabytes.

The header parsed on the way is kept (:attr:`Pixels.header`, without its pixel data), and :func:`convert` is the
whole conversion of ``vinbig images`` up to the PNG: read, then resized to the long side asked for.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi

from vinbig.codestream import CodestreamError, UnboundedCodestream, check_codestream

VOI_MODES = ("auto", "percentile")
# the first pixel data tag pydicom's stop_before_pixels stops at (Float Pixel Data; then Double Float and Pixel Data)
_PIXEL_DATA_FIRST = 0x7FE00008


class DicomError(Exception):
    """A file that cannot be converted; the message says why and, where possible, how to fix it."""


@dataclass(frozen=True)
class Pixels:
    """8-bit pixels of a radiograph at its original size, and how they were made."""

    image: np.ndarray  # uint8, rows x columns, bone bright
    photometric: str
    bits_stored: int
    voi: str  # voi_lut | window | percentile | constant
    window_low: float  # in modality units; NaN for a VOI LUT Sequence
    window_high: float
    transfer_syntax: str
    # the file's header as read_dicom parsed it, without the pixel data and what follows it (what
    # ``pydicom.dcmread(path, stop_before_pixels=True)`` gives): the UIDs, patient and study of the image
    header: pydicom.Dataset | None = field(default=None, repr=False, compare=False)

    @property
    def height(self) -> int:
        return self.image.shape[0]

    @property
    def width(self) -> int:
        return self.image.shape[1]


# The most a file may declare, checked in its header before any pixel data is decoded or inflated: the largest chest
# radiographs are about 3000 x 3500 (10.5 Mpixel), so 50 Mpixel leaves room for any real one while a hostile
# header cannot make vinbig allocate gigabytes (50 Mpixel at 32 bits is 200 MB).
MAX_PIXELS = 50_000_000
BITS_ALLOCATED = (1, 8, 16, 32)
# the most a Deflated data set inflates to before its header is read (the header of a radiograph is a few KB)
_HEADER_BYTES = 4 << 20
_SLACK_BYTES = 1 << 20  # what may follow the pixel data of a Deflated data set (trailing padding)


def _number(ds: pydicom.Dataset, keyword: str, default: int | None = None) -> int:
    """`keyword` of the header as an int (`default` when absent or empty); a DicomError naming the element when it is
    missing or not a number."""
    value = ds.get(keyword)
    if value is None or value == "":
        value = default
    try:
        return int(value)
    except (TypeError, ValueError):
        tag = pydicom.datadict.tag_for_keyword(keyword)
        raise DicomError(f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X}) is "
                         f"{'missing' if value is None else repr(value)}; re-export the file from its source") from None


def check_header(ds: pydicom.Dataset) -> int:
    """Check the image the header declares against vinbig's limits, before any pixel data is decoded: one frame of
    one sample (greyscale) of Rows x Columns <= :data:`MAX_PIXELS` at 1, 8, 16 or 32 bits allocated. Returns the
    bytes of its uncompressed pixel data; raises :class:`DicomError` with the reason."""
    samples = _number(ds, "SamplesPerPixel", 1)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(f"not a greyscale radiograph (SamplesPerPixel {samples}, "
                         f"PhotometricInterpretation {photometric or 'missing'})")
    rows, cols = _number(ds, "Rows"), _number(ds, "Columns")
    if rows < 1 or cols < 1:
        raise DicomError(f"the header declares an image of Rows {rows} x Columns {cols}, which holds no pixel; "
                         "re-export the file from its source")
    if rows * cols > MAX_PIXELS:
        raise DicomError(f"the header declares an image of Rows {rows} x Columns {cols} ({rows * cols / 1e6:.0f} "
                         f"Mpixel), more than the {MAX_PIXELS / 1e6:.0f} Mpixel vinbig converts (the largest chest "
                         "radiographs are about 3000 x 3500); downscale it or leave it out")
    bits = _number(ds, "BitsAllocated")
    if bits not in BITS_ALLOCATED:
        raise DicomError(f"Bits Allocated is {bits}; vinbig reads {', '.join(map(str, BITS_ALLOCATED))}; "
                         "re-export the file from its source")
    stored = _number(ds, "BitsStored", bits)
    if not 1 <= stored <= bits:
        raise DicomError(f"Bits Stored is {stored}, outside 1 to Bits Allocated {bits}; re-export the file "
                         "from its source")
    if _number(ds, "PixelRepresentation", 0) not in (0, 1):
        raise DicomError(f"Pixel Representation is {ds.PixelRepresentation}, neither 0 (unsigned) nor 1 (signed); "
                         "re-export the file from its source")
    frames = _number(ds, "NumberOfFrames", 1)
    if frames != 1:
        raise DicomError(f"the header declares {frames} frames; vinbig converts single-frame radiographs: "
                         "split the file into one file per frame")
    return (rows * cols + 7) // 8 if bits == 1 else rows * cols * bits // 8


def _inflate(fp, path: Path, file_meta) -> pydicom.Dataset:
    """The data set of a Deflated file, inflated only as far as its header allows: the header (at most 4 MB) is
    inflated and checked first, then the rest up to the pixel data it declares. pydicom inflates the whole stream
    at once, which lets a 1 MB file declare gigabytes."""
    import zlib

    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    try:
        start = 132 + 12 + int(file_meta.FileMetaInformationGroupLength)  # preamble, 'DICM', the group length
    except (AttributeError, TypeError, ValueError):
        raise DicomError("a Deflated file without File Meta Information Group Length (0002,0000); re-export "
                         "the file") from None
    preamble = fp.read(128)
    fp.seek(start)
    zipped = fp.read()

    def parse(limit: int, stop_when=None) -> tuple[pydicom.Dataset, bool]:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = inflater.decompress(zipped, limit)
        except zlib.error as e:
            raise DicomError(f"the Deflated data set is corrupt ({e}); copy or download the file again") from None
        more = bool(inflater.unconsumed_tail)
        return read_dataset(DicomBytesIO(data), False, True, stop_when=stop_when), more

    header, _ = parse(_HEADER_BYTES, lambda tag, vr, length: tag in (0x7FE00008, 0x7FE00009, 0x7FE00010))
    need = check_header(header)
    dataset, more = parse(_HEADER_BYTES + need + _SLACK_BYTES)
    if more:
        raise DicomError(f"the Deflated data set inflates to more than the {need} bytes of pixel data its header "
                         "declares; re-export the file from its source")
    return pydicom.FileDataset(str(path), dataset, preamble, file_meta, is_implicit_VR=False,
                               is_little_endian=True)


def _open(path: Path) -> pydicom.Dataset:
    from pydicom.filereader import read_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    try:
        file_meta = read_file_meta_info(path)
        if file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
            with open(path, "rb") as fp:
                ds = _inflate(fp, path, file_meta)
        else:
            ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise DicomError("not a DICOM file: no 'DICM' prefix or File Meta Information; check that it is a "
                         "complete DICOM Part 10 file") from None
    except (EOFError, OSError, ValueError, KeyError, TypeError) as e:
        raise DicomError(f"the DICOM header is truncated or corrupt ({type(e).__name__}: {e}); "
                         "copy or download the file again") from None
    tsuid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not tsuid:
        raise DicomError("missing Transfer Syntax UID (0002,0010) in the file meta information, so the pixel "
                         "encoding is unknown; re-export the file with its transfer syntax")
    if "PixelData" not in ds:
        raise DicomError("no Pixel Data element (7FE0,0010): the file is truncated or holds no image; "
                         "copy or download it again")
    check_header(ds)
    return ds


def supported_transfer_syntaxes() -> list[str]:
    """Names of the transfer syntaxes whose pixel data this installation decodes (pydicom and its plugins)."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import AllTransferSyntaxes, UID

    names = []
    for uid in AllTransferSyntaxes:
        try:
            if get_decoder(uid).is_available:
                names.append(UID(uid).name)
        except NotImplementedError:  # no decoder at all for this syntax
            pass
    return names


def _unsupported(ts) -> DicomError:
    """The error for a transfer syntax pydicom cannot decode: not supported, or a codec plugin missing."""
    from pydicom.pixels import get_decoder

    label = f"{ts.name} ({ts})" if ts.name != str(ts) else str(ts)
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        decoder = None
    if decoder is not None and not decoder.is_available:  # a codec vinbig knows, but its plugin is missing
        return DicomError(f"transfer syntax {label} needs a codec plugin that is not installed: "
                          "install pylibjpeg, pylibjpeg-openjpeg, pylibjpeg-libjpeg and pylibjpeg-rle "
                          "(pip install -e .)")
    return DicomError(f"transfer syntax {label} is not supported; the supported ones are: "
                      f"{'; '.join(supported_transfer_syntaxes())}. Convert the file to one of them first "
                      "(e.g. uncompressed, with gdcmconv --raw)")


def _bits_per_pixel(ds: pydicom.Dataset) -> int | None:
    """Bits Allocated, or None when the header lacks it (the decoder then says what is wrong)."""
    try:
        return int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        return None


def _check_native_length(ds: pydicom.Dataset) -> None:
    """Uncompressed pixel data must be exactly Rows x Columns x samples x frames x Bits Allocated long (plus the
    one padding byte that makes a DICOM value even). pydicom trims longer data as padding, which turns a wrong
    Rows or Columns into a sheared or cropped image: such a file is an error."""
    try:
        if ds.file_meta.TransferSyntaxUID.is_encapsulated:
            return  # compressed: the decoded shape is checked after decoding
    except ValueError:
        return  # a private or unknown syntax: the decoder says it is not supported
    bits = _bits_per_pixel(ds)
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return  # the decoder names the missing or bad element
    if bits is None or rows <= 0 or cols <= 0:
        return
    pixels = rows * cols * samples * frames
    expected = (pixels + 7) // 8 if bits == 1 else pixels * ((bits + 7) // 8)
    actual = len(ds.PixelData)
    if actual == expected or (actual == expected + 1 and expected % 2):
        return
    need = (f"Rows {rows} x Columns {cols}" + (f" x {frames} frames" if frames != 1 else "")
            + f" at {bits} bits allocated need {expected} bytes")
    if actual < expected:
        raise DicomError(f"the pixel data is truncated: it holds {actual} bytes, but {need}; "
                         "copy or download the file again")
    raise DicomError(f"the pixel data holds {actual} bytes, but {need}: the header's Rows, Columns or Bits "
                     f"Allocated do not match the data (the image would come out sheared or cropped); "
                     "re-export the file from its source")


def _decode(ds: pydicom.Dataset) -> np.ndarray:
    ts = ds.file_meta.TransferSyntaxUID
    _check_native_length(ds)
    try:
        check_codestream(ds)
    except UnboundedCodestream:
        raise _unsupported(ts) from None
    except CodestreamError as e:
        raise DicomError(str(e)) from None
    try:
        # native data: a read-only view on the bytes read, not a copy; the unused high bits are cleared by
        # _clear_unused_bits, only when some pixel sets them; one frame only, however many the encapsulated data
        # holds (by default pydicom decodes every further one its offset table lists, and appends it)
        ds.pixel_array_options(view_only=True, correct_unused_bits=False, allow_excess_frames=False)
        arr = ds.pixel_array
    except NotImplementedError:
        raise _unsupported(ts) from None
    except RuntimeError as e:
        raise DicomError(f"the {ts.name} pixel data could not be decoded ({e})") from None
    except (ValueError, TypeError, AttributeError, EOFError, OSError) as e:
        raise DicomError(f"the pixel data is truncated or corrupt ({e})") from None
    if arr.ndim != 2:
        raise DicomError(f"expected one greyscale frame, got pixel data of shape {arr.shape}")
    if arr.dtype.kind not in "ui":
        raise DicomError(f"expected integer pixel data, got {arr.dtype}")
    return arr


def _clear_unused_bits(ds: pydicom.Dataset, arr: np.ndarray, low: int, high: int) -> np.ndarray:
    """`arr` with the bits above Bits Stored ignored, as pydicom's default decoding gives it (shifted left, then
    back right: cleared, or the sign extended); `arr` itself when no pixel lies outside the range of Bits Stored
    (`low` .. `high` are its minimum and maximum), where the shifts would change nothing."""
    try:
        shift = int(ds.BitsAllocated) - int(ds.BitsStored)
    except (AttributeError, TypeError, ValueError):
        return arr
    keep = arr.dtype.itemsize * 8 - shift  # the bits the shifts leave
    if shift <= 0 or keep <= 0:
        return arr
    signed = arr.dtype.kind == "i"
    lo, hi = (-(1 << (keep - 1)), (1 << (keep - 1)) - 1) if signed else (0, (1 << keep) - 1)
    if lo <= low and high <= hi:
        return arr
    arr = arr.copy()
    np.left_shift(arr, shift, out=arr)
    np.right_shift(arr, shift, out=arr)
    return arr


_OPENCV_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))  # unsigned, in the machine's byte order


def _opencv_lut(arr: np.ndarray, offset: int | np.ndarray) -> bool:
    """Whether OpenCV's LUT maps this image exactly: unsigned 8 or 16 bits indexing the table directly."""
    return (not isinstance(offset, np.ndarray) and offset == 0 and arr.dtype in _OPENCV_DTYPES
            and (arr.dtype.itemsize == 1 or _opencv_lut16()))


_LUT16: list[bool] = []


def _opencv_lut16() -> bool:
    """Whether this OpenCV maps 16-bit images through a 65,536-entry table (recent versions do, e.g. 5.0; older
    ones take 8-bit images only, and vinbig then gathers with numpy)."""
    if not _LUT16:
        import cv2

        try:
            ok = cv2.LUT(np.array([[1, 65535]], np.uint16), np.arange(65536, dtype=np.uint16).astype(np.uint8))
            _LUT16.append(ok.dtype == np.uint8 and ok.tolist() == [[1, 255]])
        except cv2.error:
            _LUT16.append(False)
    return _LUT16[0]


_CHUNK = 1 << 17  # pixels per numpy gather: its int64 copy of the indices stays in the CPU cache
TABLE_ENTRIES = 1 << 16  # the most entries of a VOI table: every stored value of 16-bit data


def _pieces(arr: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, piece)``: the pixels of `arr`, flattened, in pieces of _CHUNK."""
    flat = arr.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        yield start, flat[start:start + _CHUNK]


def _distinct(arr: np.ndarray, value_range: tuple[int, int]) -> np.ndarray:
    """The sorted distinct values of `arr`, a piece at a time (no sorted copy of the image); a DicomError when there
    are more than a table holds."""
    values = np.empty(0, arr.dtype)
    for _, piece in _pieces(arr):
        values = np.union1d(values, piece)
        if values.size > TABLE_ENTRIES:
            raise DicomError(f"the pixel data holds more than {TABLE_ENTRIES} distinct values (from {value_range[0]} "
                             f"to {value_range[1]}); vinbig maps at most 16 bits of distinct values: re-export the "
                             "file with at most 16 bits stored")
    return values


def _histogram(arr: np.ndarray, offset: int | np.ndarray, entries: int) -> np.ndarray:
    """How many pixels hold each stored value `offset` .. `offset + entries - 1`, or each of the sorted values
    `offset` (int64, exact)."""
    if isinstance(offset, np.ndarray):
        counts = np.zeros(entries, np.int64)
        for _, piece in _pieces(arr):
            counts += np.bincount(np.searchsorted(offset, piece), minlength=entries)
        return counts
    if offset == 0 and arr.dtype in _OPENCV_DTYPES and arr.size < 2**24:
        import cv2

        # bins of width exactly 1 from 0: bin v counts value v; float32 counts are exact below 2**24 pixels
        return cv2.calcHist([arr], [0], None, [entries], [0, entries]).ravel().astype(np.int64)
    flat = arr.ravel() if offset == 0 else (arr.ravel().astype(np.int64) - offset)
    return np.bincount(flat, minlength=entries)


def apply_lut(lut: np.ndarray, offset: int | np.ndarray, arr: np.ndarray) -> np.ndarray:
    """``lut[arr - offset]``, the 8-bit image: one OpenCV LUT call, else numpy gathers over cache-sized pieces. When
    `offset` is the sorted array of the values the table holds (:func:`voi_lut` for a wide value range), each pixel
    takes the entry of its value."""
    if _opencv_lut(arr, offset):
        import cv2

        table = np.zeros(256 ** arr.dtype.itemsize, np.uint8)
        table[:lut.size] = lut
        return cv2.LUT(arr, table)
    out = np.empty(arr.shape, np.uint8)
    dst = out.reshape(-1)
    for start, index in _pieces(arr):
        if isinstance(offset, np.ndarray):
            index = np.searchsorted(offset, index)
        elif offset != 0:
            index = index.astype(np.int64) - offset
        np.take(lut, index, out=dst[start:start + index.size])
    return out


def _window_unit(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray | None:
    """DICOM PS3.3 C.11.2.1.2 window mapped to [0, 1]; None when the width is invalid."""
    if function == "SIGMOID":
        if width <= 0:
            return None
        return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - center) / width, -700.0, 700.0)))
    if function == "LINEAR_EXACT":
        if width <= 0:
            return None
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width < 1:  # LINEAR
        return None
    if width == 1:
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _first(value) -> float:
    return float(value[0] if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else value)


def _percentile_window(values: np.ndarray, counts: np.ndarray, percentiles) -> tuple[float, float]:
    """Low and high percentiles of the image in modality units, from its histogram over stored values."""
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(counts[order])
    total = cum[-1]
    lo_i, hi_i = np.searchsorted(cum, [total * percentiles[0] / 100.0, total * percentiles[1] / 100.0])
    return float(values[order][min(lo_i, len(cum) - 1)]), float(values[order][min(hi_i, len(cum) - 1)])


def voi_lut(ds: pydicom.Dataset, arr: np.ndarray, *, voi: str = "auto", percentiles=(0.5, 99.5),
            value_range: tuple[int, int] | None = None) -> tuple[np.ndarray, int, str, float, float]:
    """The 8-bit lookup table for the stored values of `arr` (whose minimum and maximum are `value_range`, when
    the caller has them): every value from the minimum (0 for unsigned data) to the maximum, or, where that range is
    wider than TABLE_ENTRIES (32-bit data), the distinct values of the image.

    Returns ``(lut, offset, voi_used, window_low, window_high)``: the pixels are ``lut[arr - offset]``, or, for a
    table of distinct values, `offset` is their sorted array (:func:`apply_lut` maps both).
    """
    if voi not in VOI_MODES:
        raise ValueError(f"voi must be one of {VOI_MODES}, got {voi!r}")
    low_value, high_value = value_range or (int(arr.min()), int(arr.max()))
    offset = min(low_value, 0)  # unsigned data indexes the table directly
    if high_value - offset < TABLE_ENTRIES:
        stored = np.arange(offset, high_value + 1, dtype=np.int64)
    else:  # a table over every value up to the maximum could take gigabytes (a 32-bit pixel at 2**27)
        offset = _distinct(arr, (low_value, high_value))
        stored = offset.astype(np.int64)
    modality_raw = apply_modality_lut(stored, ds)  # integers unless slope/intercept make them float
    modality = np.asarray(modality_raw, dtype=np.float64)

    unit, used, low, high = None, "percentile", np.nan, np.nan
    if voi == "auto" and "VOILUTSequence" in ds:
        out = np.asarray(apply_voi(modality_raw, ds), dtype=np.float64)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])  # the LUT's output range is 0 .. 2**bits - 1
        unit, used = out / float(2**bits - 1), "voi_lut"
    elif voi == "auto" and "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"
        unit = _window_unit(modality, center, width, function)
        used, low, high = "window", center - width / 2.0, center + width / 2.0
    if unit is None:  # no usable VOI in the file: robust percentile window on the image's histogram
        counts = _histogram(arr, offset, len(stored))
        low, high = _percentile_window(modality, counts, percentiles)
        used = "percentile"
        if high > low:
            unit = np.clip((modality - low) / (high - low), 0.0, 1.0)
        else:  # a constant image: no contrast to show, and no division by zero
            unit, used = np.zeros_like(modality), "constant"
    if ds.PhotometricInterpretation == "MONOCHROME1":
        unit = 1.0 - unit
    lut = np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)
    return lut, offset, used, low, high


def stored_values(ds: pydicom.Dataset, arr: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """The decoded pixels with their unused high bits cleared (only when a pixel sets them), and their minimum and
    maximum: what the VOI table is built over."""
    value_range = int(arr.min()), int(arr.max())
    cleared = _clear_unused_bits(ds, arr, *value_range)
    if cleared is not arr:
        arr, value_range = cleared, (int(cleared.min()), int(cleared.max()))
    return arr, value_range


def read_dicom(path: str | Path, *, voi: str = "auto", percentiles=(0.5, 99.5)) -> Pixels:
    """Read `path` into 8-bit pixels, bone bright. Raises :class:`DicomError` for a file it cannot read."""
    ds = _open(Path(path))
    arr = _decode(ds)
    if arr.shape != (ds.Rows, ds.Columns):
        raise DicomError(f"pixel data of shape {arr.shape} does not match Rows {ds.Rows} x Columns {ds.Columns}")
    arr, value_range = stored_values(ds, arr)
    lut, offset, used, low, high = voi_lut(ds, arr, voi=voi, percentiles=percentiles, value_range=value_range)
    image = apply_lut(lut, offset, arr)
    del ds[_PIXEL_DATA_FIRST:]  # the pixel data and pydicom's decoded array let go: the header stays
    return Pixels(
        image=image,
        photometric=str(ds.PhotometricInterpretation),
        bits_stored=int(ds.get("BitsStored", arr.dtype.itemsize * 8)),
        voi=used,
        window_low=low,
        window_high=high,
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
        header=ds,
    )


def convert(path: str | Path, *, size: int, voi: str = "auto", percentiles=(0.5, 99.5)) -> tuple[Pixels, np.ndarray]:
    """`path` as ``vinbig images`` converts it, in memory: :func:`read_dicom` (pydicom's warnings about files it
    can still read silenced), then resized with OpenCV's area interpolation so that its long side is at most
    `size` (:func:`vinbig.boxes.png_size`: never enlarged). Returns the pixels at the original size (and the
    header) and the converted 8-bit image. Raises :class:`DicomError` for a file it cannot read."""
    import cv2

    from vinbig.boxes import png_size

    with warnings.catch_warnings():  # pydicom warns about files it can still read
        warnings.simplefilter("ignore")
        px = read_dicom(path, voi=voi, percentiles=percentiles)
    width, height = png_size(px.width, px.height, size)
    if (width, height) == (px.width, px.height):
        return px, px.image
    return px, cv2.resize(px.image, (width, height), interpolation=cv2.INTER_AREA)


def failure_reason(e: Exception) -> str:
    """The errors.csv reason of a file whose conversion raised `e`: a DicomError's own message, else the
    unexpected error named (one bad file must never stop the others)."""
    return str(e) if isinstance(e, DicomError) else f"unexpected {type(e).__name__}: {e}"
