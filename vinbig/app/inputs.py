"""The inputs of `vinbig predict`: DICOM files and folders found, named and read, each converted in memory as
``vinbig images`` converts it (:func:`vinbig.dicom.convert`: no PNG is written)."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from vinbig.artifacts import DICOM_SUFFIXES

_PREFETCH = 1  # batches of DICOMs read ahead by background threads while the models run (0: read when needed)

@dataclass
class Image:
    """One input, read and converted: its header (no pixel data), the 8-bit pixels at the conversion size."""

    file: Path
    image_id: str
    header: object  # pydicom Dataset, as read_dicom parsed it, without its pixel data
    width: int  # original DICOM columns
    height: int  # original DICOM rows
    image: object  # numpy uint8 array, long side images.size (as `vinbig images` writes the PNG)
    voi: str
    window: tuple[float, float]
    seconds: float = 0.0


def find_inputs(inputs: Sequence[Path], out: Path | None = None) -> tuple[list[Path], list[dict]]:
    """The DICOM files of `inputs` (a file as given; a folder searched for .dicom and .dcm files, sorted, leaving
    out the output folder `out` and its GSPS files), each once, and error rows for inputs that are not there,
    folders without DICOMs, paths that are not UTF-8 (named with the bytes escaped) and unusable or repeated image
    ids (the file name without its suffix, as `vinbig images` names the PNGs)."""
    from folds import check_ids, find_dicoms

    skip = Path(out).resolve() if out is not None else None
    files, errors, seen = [], [], set()
    for path in map(Path, inputs):
        if path.is_dir():
            found = [f for f in find_dicoms(path) if skip is None or not f.resolve().is_relative_to(skip)]
            if not found:
                errors.append({"file": shown(path), "image_id": "", "reason": f"no {' or '.join(DICOM_SUFFIXES)} "
                               "file in this folder or under it"})
        elif path.is_file():
            found = [path]
        else:
            errors.append({"file": shown(path), "image_id": shown(path.stem), "reason": "not found"})
            continue
        for f in found:
            if shown(f) != str(f):
                errors.append({"file": shown(f), "image_id": shown(f.stem), "reason": "the path is not UTF-8 text "
                               "(its undecodable bytes are shown as \\xNN); rename the folder or file in UTF-8"})
            elif f.resolve() not in seen:
                seen.add(f.resolve())
                files.append(f)
    files, bad = check_ids(files)
    return files, errors + bad


def shown(path: Path | str) -> str:
    """`path` as text that can be written anywhere: bytes of a name that are not UTF-8 (held by Python as lone
    surrogates) shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def read_image(path: Path, images: Mapping) -> Image:
    """`path` converted as `vinbig images` converts it (``images`` config section), in memory, with the header
    read_dicom parsed (for the GSPS and the SOP Instance UID). Raises DicomError."""
    from vinbig.dicom import convert

    t = time.perf_counter()
    px, image = convert(path, size=images["size"], voi=images["voi"], percentiles=tuple(images["percentiles"]))
    return Image(Path(path), Path(path).stem, px.header, px.width, px.height, image, px.voi,
                 (px.window_low, px.window_high), time.perf_counter() - t)


def _read_or_error(path: Path, images: Mapping) -> Image | dict:
    from vinbig.dicom import failure_reason

    try:
        return read_image(path, images)
    except Exception as e:  # one bad file must never stop the others
        return {"file": str(path), "image_id": path.stem, "reason": failure_reason(e)}


def read_batches(files: Sequence[Path], images: Mapping, batch: int, prefetch: int = _PREFETCH
                 ) -> Iterator[list[Image | dict]]:
    """`files` read `batch` at a time, in order (an Image, or an error row for a file that cannot be read);
    background threads read up to `prefetch` batches ahead while the models work on the current one."""
    from vinbig.parallel import prefetched

    read = partial(_read_or_error, images=images)
    with contextlib.closing(prefetched(read, files, batch, prefetch, name="read-dicom")) as batches:
        for _, images_or_errors in batches:  # closed with this generator: the reads not started are cancelled
            yield images_or_errors

