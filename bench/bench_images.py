"""Benchmark `vinbig images` against the public recipe and against the floor, on real-size 12-bit DICOMs.

Three ways to turn the same DICOMs into PNGs of long side --size:

- the public recipe of the popular VinBigData notebooks, written here from its description: pydicom's
  `apply_voi_lut` on the full image, MONOCHROME1 fixed with `max - x`, min-max scaling in float,
  `(x * 255).astype(uint8)`, PIL Lanczos resize (`thumbnail`, aspect kept) and `Image.save` as PNG;
- the floor: read + decode + resize + PNG encode with the fastest library calls and nothing else
  (`pydicom.dcmread`, `pixel_array` as a view on the bytes read, OpenCV area resize of the 16-bit
  image, a min-max stretch of the small image to 8 bits, `cv2.imencode` with vinbig's PNG settings
  at the same level): what any converter must spend, without the intensity mapping of the standard;
- vinbig: `folds.convert_one` in this process, and `vinbig images --workers 1` as a command.

Each is timed in this process (every file read once before, so all see a warm page cache) and as a
whole process (a new Python that imports what it needs and converts every file: the recipe and the
floor import only pydicom, numpy and PIL or OpenCV). Best of --repeats; ratios are images per second
against the recipe measured in the same run. It ends with where vinbig's time goes per image.

    python bench/bench_images.py [--n 36] [--size 1024] [--repeats 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

GLOB = "*.dicom"


def recipe(path: Path, out: Path, size: int) -> None:
    """The public recipe: float VOI, min-max, Lanczos, PIL PNG."""
    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.pixels import apply_voi_lut

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


def floor(path: Path, out: Path, size: int, png: list[int]) -> None:
    """Read, decode, resize and encode with the fastest calls, and nothing else: no intensity mapping of the
    standard (the small 16-bit image is stretched min-max to 8 bits, a picture of the same contrast as
    vinbig's for the encoder), no metadata, no checks."""
    import cv2
    import pydicom

    ds = pydicom.dcmread(path)
    ds.pixel_array_options(view_only=True, correct_unused_bits=False)
    arr = ds.pixel_array
    h, w = arr.shape
    scale = size / max(h, w)
    small = cv2.resize(arr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    small = cv2.normalize(small, None, 0, 255, cv2.NORM_MINMAX, cv2.CV_8U)
    (out / f"{path.stem}.png").write_bytes(cv2.imencode(".png", small, png)[1].tobytes())


def child(argv: list[str]) -> None:
    """`--child recipe|floor SRC OUT N SIZE PNG`: one whole process of the recipe or the floor."""
    kind, src, out, n, size, png = argv
    files = sorted(Path(src).glob(GLOB))[: int(n)]
    warnings.simplefilter("ignore")
    for f in files:
        if kind == "recipe":
            recipe(f, Path(out), int(size))
        else:
            floor(f, Path(out), int(size), [int(x) for x in png.split(",")])


def best_of(fn, repeats: int) -> float:
    """Shortest of `repeats` calls of `fn`, in seconds; `fn` prepares nothing timed."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def whole(cmd: list[str], out: Path, repeats: int) -> float:
    """Best wall time of the command `cmd` writing into a fresh `out` each time (a rerun of vinbig would skip)."""
    best = float("inf")
    for _ in range(repeats):
        fresh(out)
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - start)
    return best


def to_12_bit(src: Path, dst: Path) -> None:
    """Rewrite a synthetic DICOM as an uncompressed 12-bit file with the same image, like most real CRs."""
    import numpy as np
    import pydicom

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


def dataset(root: Path, n: int) -> Path:
    """`n` real-size 12-bit uncompressed DICOMs in root/dicom12 (made once, reused with --keep)."""
    from vinbig.synth import make_dataset

    synth, src = root / "synth", root / "dicom12"
    if not src.is_dir() or len(list(src.glob(GLOB))) < n:
        make_dataset(synth, n_train=n, n_test=1, seed=1, size=2430, compressed_fraction=0.0, workers=0)
        src.mkdir(parents=True, exist_ok=True)
        for f in sorted((synth / "train").glob(GLOB))[:n]:
            to_12_bit(f, src / f.name)
    return src


def breakdown(files: list[Path], out: Path, size: int, level: int, repeats: int,
              strategy: str = "huffman") -> dict[str, float]:
    """Milliseconds per image of each step of vinbig's conversion (best of `repeats` for each step)."""
    import cv2

    from folds import png_params
    from vinbig import dicom
    from vinbig.boxes import png_size

    steps: dict[str, float] = {}

    def add(name: str, start: float, totals: dict) -> float:
        now = time.perf_counter()
        totals[name] = totals.get(name, 0.0) + now - start
        return now

    for _ in range(repeats):
        totals: dict[str, float] = {}
        for f in files:
            t = time.perf_counter()
            ds = dicom._open(f)
            t = add("read the file, parse the header (dcmread)", t, totals)
            arr = dicom._decode(ds)
            t = add("decode (pixel_array: a view on the bytes)", t, totals)
            arr, value_range = dicom.stored_values(ds, arr)
            t = add("minimum and maximum (unused bits check)", t, totals)
            lut, offset, *_ = dicom.voi_lut(ds, arr, value_range=value_range)
            t = add("VOI table (histogram, percentile window)", t, totals)
            image = dicom.apply_lut(lut, offset, arr)
            t = add("apply the table to the full image (LUT)", t, totals)
            image = cv2.resize(image, png_size(image.shape[1], image.shape[0], size), interpolation=cv2.INTER_AREA)
            t = add("resize (OpenCV INTER_AREA)", t, totals)
            buf = cv2.imencode(".png", image, png_params(level, strategy))[1]
            t = add(f"PNG encode, level {level}, Average filter, {strategy} strategy", t, totals)
            (out / f"{f.stem}.png").write_bytes(buf.tobytes())
            t = add("write the PNG", t, totals)
            cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, level])
            add(f"(before: PNG encode, level {level}, libpng's adaptive filters)", t, totals)
        for name, seconds in totals.items():
            steps[name] = min(steps.get(name, float("inf")), 1000 * seconds / len(files))
    return steps


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        return child(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=36, help="number of real-size DICOMs")
    ap.add_argument("--size", type=int, default=1024, help="long side of the PNGs")
    ap.add_argument("--level", type=int, default=1, help="PNG compression level (vinbig's default: 1)")
    ap.add_argument("--strategy", default="huffman", help="PNG strategy, huffman or default (vinbig's default: huffman)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="folder to keep the generated data in (default: a temp folder)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    import numpy as np
    import pydicom

    from folds import convert_images, convert_one, png_params

    root = Path(args.keep or tempfile.mkdtemp(prefix="bench_images_"))
    src = dataset(root, args.n)
    files = sorted(src.glob(GLOB))[: args.n]
    heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    rows, cols = np.median([d.Rows for d in heads]), np.median([d.Columns for d in heads])
    for f in files:  # warm the page cache for all
        f.read_bytes()
    png = png_params(args.level, args.strategy)
    png_arg = ",".join(str(int(x)) for x in png)
    n, size, reps = len(files), args.size, args.repeats
    out = {k: fresh(root / f"png_{k}") for k in ("recipe", "floor", "vinbig", "steps")}

    inproc = {
        "recipe": best_of(lambda: [recipe(f, out["recipe"], size) for f in files], reps),
        "floor": best_of(lambda: [floor(f, out["floor"], size, png) for f in files], reps),
        "vinbig convert_one": best_of(lambda: [convert_one(f, out["vinbig"], size=size, voi="auto",
                                                           percentiles=(0.5, 99.5), png_compression=args.level,
                                                           png_strategy=args.strategy)
                                               for f in files], reps),
    }
    stage = float("inf")
    for _ in range(reps):  # the stage in this process: journal, meta.csv, errors.csv included
        target = fresh(root / "png_stage")
        start = time.perf_counter()
        convert_images(src, target, size=size, workers=1, png_compression=args.level, png_strategy=args.strategy)
        stage = min(stage, time.perf_counter() - start)
    inproc["vinbig convert_images, 1 worker"] = stage

    me = [sys.executable, str(Path(__file__).resolve()), "--child"]
    vinbig = [sys.executable, "-m", "vinbig.app.cli", "images", "--src", str(src), "--size", str(size),
              "--set", f"images.png_compression={args.level}", "--set", f"images.png_strategy={args.strategy}", "-q",
              "--out"]
    cmd_out = root / "png_cmd"
    proc = {
        "recipe": whole(me + ["recipe", str(src), str(out["recipe"]), str(n), str(size), png_arg], out["recipe"], reps),
        "floor": whole(me + ["floor", str(src), str(out["floor"]), str(n), str(size), png_arg], out["floor"], reps),
        "vinbig images --workers 1": whole(vinbig + [str(cmd_out), "--workers", "1"], cmd_out, reps),
        f"vinbig images (all {os.cpu_count()} cores)": whole(vinbig + [str(cmd_out)], cmd_out, reps),
    }
    steps = breakdown(files, out["steps"], size, args.level, reps, args.strategy)

    print(f"{n} DICOMs, median {rows:.0f} x {cols:.0f} (rows x columns), 12 bits, uncompressed; PNG long side "
          f"{size}, level {args.level}; {os.cpu_count()} CPU cores; best of {reps}")
    print("\n| path | in this process, img/s | vs recipe | vs floor "
          "| whole process, s | img/s | vs recipe | vs floor |")
    print("|---|---|---|---|---|---|---|---|")
    names = ["recipe", "floor", "vinbig convert_one", "vinbig convert_images, 1 worker", "vinbig images --workers 1",
             f"vinbig images (all {os.cpu_count()} cores)"]
    for name in names:
        cells = []
        if name in inproc:
            t = inproc[name]
            cells += [f"{n / t:.2f}", f"{inproc['recipe'] / t:.2f}x", f"{t / inproc['floor']:.2f}x"]
        else:
            cells += ["", "", ""]
        if name in proc:
            t = proc[name]
            cells += [f"{t:.2f}", f"{n / t:.2f}", f"{proc['recipe'] / t:.2f}x", f"{t / proc['floor']:.2f}x"]
        else:
            cells += ["", "", "", ""]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for name, per in (("recipe", inproc["recipe"]), ("floor", inproc["floor"]),
                      ("vinbig images --workers 1", stage)):
        print(f"{name}: process start, imports and other fixed costs {proc[name] - per:.2f} s "
              f"(whole process minus its in-process time)")
    print(f"\nvinbig per image, ms (best of {reps} for each step):")
    for name, ms in steps.items():
        print(f"  {ms:6.2f}  {name}")
    print(f"  {sum(v for k, v in steps.items() if not k.startswith('(')):6.2f}  total")
    print(f"PNG bytes per image: floor {sum(p.stat().st_size for p in out['floor'].glob('*.png')) / n / 1024:.0f} KiB, "
          f"vinbig {sum(p.stat().st_size for p in out['vinbig'].glob('*.png')) / n / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
