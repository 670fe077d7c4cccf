"""Benchmark `vinbig images` against the common public recipe, on real-size 12-bit DICOMs.

The baseline is the recipe of the popular public VinBigData notebooks, written here from its
description: pydicom's `apply_voi_lut` on the full image, MONOCHROME1 fixed with `max - x`,
min-max scaling in float, `(x * 255).astype(uint8)`, PIL Lanczos resize (`thumbnail`, aspect
kept) and `Image.save` as PNG. vinbig's path is `folds._images.convert_one`, the function the
stage runs per file. Both run in this one process on the same files, each file read once before
timing so that both see a warm page cache; the result is a ratio of images per second.

    python bench/bench_images.py [--n 16] [--size 1024] [--repeats 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_voi_lut

from folds._images import convert_one, convert_images
from vinbig.synth import make_dataset


def baseline(path: Path, out: Path, size: int) -> None:
    """The public recipe: float VOI, min-max, Lanczos, PIL PNG."""
    ds = pydicom.dcmread(path)
    data = apply_voi_lut(ds.pixel_array, ds)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        data = np.amax(data) - data
    data = data - np.min(data)
    data = data / np.max(data)
    data = (data * 255).astype(np.uint8)
    image = Image.fromarray(data)
    image.thumbnail((size, size), Image.LANCZOS)
    image.save(out / f"{path.stem}.png")


def to_12_bit(src: Path, dst: Path) -> None:
    """Rewrite a synthetic DICOM as an uncompressed 12-bit file with the same image, like most real CRs."""
    ds = pydicom.dcmread(src)
    arr = ds.pixel_array.astype(np.float64)
    stored = np.rint(arr / (2 ** int(ds.BitsStored) - 1) * 4095).astype(np.uint16)
    for tag in ("RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth"):
        if tag in ds:
            delattr(ds, tag)
    ds.set_pixel_data(stored, ds.PhotometricInterpretation, 12)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(dst)


def timed(fn, files, repeats: int) -> float:
    """Best of `repeats` passes over `files`, in images per second."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for f in files:
            fn(f)
        best = min(best, time.perf_counter() - start)
    return len(files) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="number of real-size DICOMs")
    ap.add_argument("--size", type=int, default=1024, help="long side of the PNGs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="folder to keep the generated data in (default: a temp folder)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    root = Path(args.keep or tempfile.mkdtemp(prefix="bench_images_"))
    synth, src = root / "synth", root / "dicom12"
    if not src.is_dir() or len(list(src.glob("*.dicom"))) < args.n:
        make_dataset(synth, n_train=args.n, n_test=1, seed=1, size=2430, compressed_fraction=0.0, workers=0)
        src.mkdir(parents=True, exist_ok=True)
        for f in sorted((synth / "train").glob("*.dicom"))[: args.n]:
            to_12_bit(f, src / f.name)
    files = sorted(src.glob("*.dicom"))[: args.n]
    shapes = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    rows = np.median([d.Rows for d in shapes])
    cols = np.median([d.Columns for d in shapes])
    for f in files:  # warm the page cache for both
        f.read_bytes()

    out_base, out_ours = root / "png_baseline", root / "png_vinbig"
    out_base.mkdir(exist_ok=True)
    out_ours.mkdir(exist_ok=True)
    base = timed(lambda f: baseline(f, out_base, args.size), files, args.repeats)
    ours = timed(lambda f: convert_one(f, out_ours, size=args.size, voi="auto", percentiles=(0.5, 99.5),
                                       png_compression=1), files, args.repeats)

    stage_out = root / "png_stage"
    start = time.perf_counter()
    summary = convert_images(src, stage_out, size=args.size, workers=0)
    stage = summary.converted / (time.perf_counter() - start)

    print(f"{len(files)} DICOMs, median {rows:.0f} x {cols:.0f} (rows x columns), 12 bits, uncompressed; "
          f"PNG long side {args.size}; {os.cpu_count()} CPU cores")
    print(f"public recipe (1 process)      {base:6.2f} img/s")
    print(f"vinbig convert_one (1 process) {ours:6.2f} img/s   {ours / base:.2f}x the recipe")
    print(f"vinbig images (all cores)      {stage:6.2f} img/s   {stage / base:.2f}x the recipe, incl. worker start-up")


if __name__ == "__main__":
    main()
