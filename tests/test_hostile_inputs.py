"""Hostile and awkward inputs of `vinbig images` and the DICOM reader `vinbig predict` shares: a rerun with other
settings, headers that declare gigabytes, file names that are not UTF-8, and SIGTERM or SIGKILL in the middle."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pydicom
import pytest
import yaml
from pydicom.filebase import DicomBytesIO
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless

import folds._images as images
from conftest import gradient, make_dicom
from faults import start_slow_images
from vinbig.app.cli import main
from vinbig.dicom import MAX_PIXELS, DicomError, convert

REPO = Path(__file__).resolve().parent.parent


def run_images(src, out, *extra) -> int:
    return main(["images", "--src", str(src), "--out", str(out), "--size", "32", "-q", *extra])


def noisy(rows: int = 60, cols: int = 50, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(gradient(rows, cols).astype(int) + rng.integers(-200, 200, (rows, cols)), 0, 4095).astype(np.uint16)


def pngs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.png"))}


def saved_images_config(out: Path) -> dict:
    return yaml.safe_load((out / "config_images.yaml").read_text())["images"]


# --------------------------------------------------------------------------- a rerun never mixes two settings


@pytest.mark.parametrize("first, second", [
    (["--voi", "auto"], ["--voi", "percentile"]),
    (["--percentiles", "0.5,99.5"], ["--percentiles", "5,95"]),
], ids=["voi", "percentiles"])
def test_a_rerun_with_other_pixel_settings_converts_every_image_again(dicom_factory, tmp_path, first, second):
    dicom_factory("window.dcm", noisy(seed=1), WindowCenter=1500, WindowWidth=1000)
    dicom_factory("plain.dcm", noisy(seed=2))
    src, out, fresh = tmp_path / "src", tmp_path / "out", tmp_path / "fresh"
    assert run_images(src, out, "--workers", "1", *first) == 0
    before = pngs(out)
    assert run_images(src, out, "--workers", "1", *second) == 0
    assert run_images(src, fresh, "--workers", "1", *second) == 0

    assert pngs(out) == pngs(fresh) != before  # the PNGs are those of the new settings, not the earlier ones
    assert saved_images_config(out) == saved_images_config(fresh)  # and so is the config vinbig predict reads
    pd.testing.assert_frame_equal(pd.read_csv(out / "meta.csv"), pd.read_csv(fresh / "meta.csv"))


def test_an_interrupted_rerun_with_other_settings_leaves_nothing_that_describes_other_pngs(dicom_factory, tmp_path,
                                                                                            monkeypatch):
    for i in range(4):
        dicom_factory(f"im{i}.dcm", noisy(seed=i), WindowCenter=1500, WindowWidth=800)
    src, out, fresh = tmp_path / "src", tmp_path / "out", tmp_path / "fresh"
    assert run_images(src, out, "--workers", "1", "--voi", "auto") == 0
    real, done = images.convert_one, []

    def stopped_after_two(path, out, **kwargs):  # Ctrl-C (or SIGTERM) while the third image converts
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(path)
        return real(path, out, **kwargs)

    monkeypatch.setattr(images, "convert_one", stopped_after_two)
    assert run_images(src, out, "--workers", "1", "--voi", "percentile") == 130
    monkeypatch.undo()
    # two PNGs are of voi percentile now: no config or meta.csv may still say they are of voi auto
    assert not (out / "config_images.yaml").exists() and not (out / "meta.csv").exists()

    for voi in ("auto", "percentile"):  # a rerun of either command gives the PNGs of its own settings, all of them
        assert run_images(src, out, "--workers", "1", "--voi", voi) == 0
        assert run_images(src, fresh / voi, "--workers", "1", "--voi", voi) == 0
        assert pngs(out) == pngs(fresh / voi) and saved_images_config(out)["voi"] == voi


# --------------------------------------------------------------------------- hostile DICOMs are bounded


def deflated_dicom(path: Path, rows: int, cols: int) -> Path:
    """A Deflated Explicit VR Little Endian file declaring Rows x Columns at 16 bits, with all of that pixel data
    (zeros) in the deflate stream: about 1 MB on disk for 30000 x 30000 (1.8 GB inflated)."""
    ds = pydicom.dcmread(make_dicom(path, np.zeros((2, 2), np.uint16)))
    del ds.PixelData
    ds.Rows, ds.Columns = rows, cols
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(body, ds)
    need = rows * cols * 2
    header = body.getvalue() + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", need)
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunk = 16 << 20
    stream = [squeeze.compress(header) + squeeze.flush(zlib.Z_FULL_FLUSH)]
    block = squeeze.compress(bytes(chunk)) + squeeze.flush(zlib.Z_FULL_FLUSH)  # the same bytes for every chunk
    stream += [block] * (need // chunk)
    stream.append(squeeze.compress(bytes(need % chunk)) + squeeze.flush())
    meta = DicomBytesIO()
    pydicom.filewriter.write_file_meta_info(meta, ds.file_meta)
    path.write_bytes(b"\0" * 128 + b"DICM" + meta.getvalue() + b"".join(stream))
    return path


def wide_32bit(path: Path, pixels: np.ndarray) -> Path:
    return make_dicom(path, pixels.astype(np.uint32), bits_stored=32, BitsAllocated=32)


# `vinbig images` in a child whose peak memory is reported; its address space is capped at 4 GB so that a regression
# fails the test rather than the machine
MEASURED = textwrap.dedent("""
    import resource, subprocess, sys
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    code = subprocess.call([sys.executable, "-m", "vinbig", *sys.argv[1:]], preexec_fn=cap)
    print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
""")


def refused_before_decoding(path: Path, monkeypatch) -> str:
    """The DicomError of converting `path`, which must come before any pixel is decoded."""
    def not_decoded(*args, **kwargs):
        raise AssertionError("the pixel data was decoded")

    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(not_decoded))
    with pytest.raises(DicomError) as e:
        convert(path, size=64)
    return str(e.value)


def converted_within_1gb(src: Path, out: Path) -> dict[str, str]:
    """`vinbig images` of `src` into `out` in a child process whose peak memory is measured: it exits 1 (some files
    listed), under 1 GB and without a traceback. The reasons of errors.csv, by image id."""
    done = subprocess.run([sys.executable, "-c", MEASURED, "images", "--src", str(src), "--out", str(out),
                           "--size", "32", "--workers", "1", "-q"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    code, peak_kb = map(int, done.stdout.split())
    assert code == 1, done.stderr
    assert peak_kb < 1_000_000, f"peak RSS {peak_kb / 1e6:.2f} GB"
    assert "Traceback" not in done.stderr
    errors = pd.read_csv(out / "errors.csv")
    return dict(zip(errors.image_id, errors.reason))


def test_headers_that_declare_gigabytes_are_listed_and_memory_stays_bounded(dicom_factory, tmp_path):
    dicom_factory("good.dcm", noisy())
    src = tmp_path / "src"
    hot = np.arange(16).reshape(4, 4) * 100
    hot[1, 2] = 2**27  # one pixel far out: the VOI table spanned every value up to it (5 GB)
    wide_32bit(src / "hot32.dcm", hot)
    deflated_dicom(src / "bomb.dcm", 30000, 30000)
    assert (src / "hot32.dcm").stat().st_size < 1000 and (src / "bomb.dcm").stat().st_size < 2_000_000
    wide = np.arange(70000, dtype=np.int64).reshape(350, 200) * 1000  # more distinct values than a table holds
    wide_32bit(src / "wide32.dcm", wide)
    out = tmp_path / "out"

    reasons = converted_within_1gb(src, out)
    assert set(reasons) == {"bomb", "wide32"}
    assert (f"Rows 30000 x Columns 30000 (900 Mpixel), more than the {MAX_PIXELS / 1e6:.0f} Mpixel vinbig converts"
            in reasons["bomb"])
    assert "more than 65536 distinct values (from 0 to 69999000)" in reasons["wide32"]
    # the hot pixel is a real value of a readable image: converted, its window from the 16 values it holds
    meta = pd.read_csv(out / "meta.csv").set_index("image_id")
    assert sorted(meta.index) == ["good", "hot32"]
    assert meta.loc["hot32", "voi"] == "percentile" and meta.loc["hot32", "bits_stored"] == 32


def test_the_32bit_hot_pixel_is_mapped_as_a_16bit_twin_would_be(tmp_path):
    # the table of distinct values gives the same picture as the table over every value
    pixels = noisy(40, 30)
    pixels[5, 5] = 4095 * 8
    twin16 = convert(make_dicom(tmp_path / "a16.dcm", pixels, bits_stored=16), size=40)[1]
    wide = pixels.astype(np.int64) * 32  # the same picture over a range wider than a table (up to 2**20)
    px, image = convert(wide_32bit(tmp_path / "a32.dcm", wide), size=40)
    np.testing.assert_array_equal(image, twin16)
    assert px.voi == "percentile"


def header_only(path: Path, pixel_bytes: bytes = b"\0" * 32, syntax=None, **tags) -> Path:
    make_dicom(path, np.zeros((4, 4), np.uint16))
    ds = pydicom.dcmread(path)
    for key, value in tags.items():
        setattr(ds, key, value)
    if syntax is not None:
        from pydicom.encaps import encapsulate

        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([pixel_bytes])
    else:
        ds.PixelData = pixel_bytes
    ds.save_as(path, enforce_file_format=False)
    return path


@pytest.mark.parametrize("tags, words", [
    (dict(Rows=0), "Rows 0 x Columns 4, which holds no pixel"),
    (dict(Rows=30000, Columns=30000, syntax=JPEG2000Lossless), "(900 Mpixel), more than the 50 Mpixel"),
    (dict(Rows=65535, Columns=65535), "Rows 65535 x Columns 65535 (4295 Mpixel), more than the 50 Mpixel"),
    (dict(BitsAllocated=64, BitsStored=64, HighBit=63), "Bits Allocated is 64; vinbig reads 1, 8, 16, 32"),
    (dict(BitsAllocated=12), "Bits Allocated is 12; vinbig reads"),
    (dict(BitsStored=0), "Bits Stored is 0, outside 1 to Bits Allocated 16"),
    (dict(NumberOfFrames=100000, syntax=JPEG2000Lossless), "declares 100000 frames; vinbig converts single-frame"),
    (dict(SamplesPerPixel=3, PhotometricInterpretation="RGB", Rows=20000, Columns=20000,
          syntax=JPEG2000Lossless), "not a greyscale radiograph (SamplesPerPixel 3"),
], ids=["zero-rows", "j2k-30000", "65535-square", "64-bits", "12-bits", "0-stored", "frames", "rgb"])
def test_hostile_headers_are_refused_before_decoding_with_a_reason(tmp_path, tags, words):
    # the reader vinbig predict shares: one such file among its inputs fails alone, with this reason
    path = header_only(tmp_path / "x.dcm", **tags)
    with pytest.raises(DicomError) as e:
        convert(path, size=64)
    assert words in str(e.value)


# --------------------------------------------------------------------------- names that are not text


def test_a_file_name_that_is_not_utf8_is_listed_escaped_and_the_rest_converts(dicom_factory, tmp_path):
    good = dicom_factory("good.dcm", noisy())
    src, out = tmp_path / "src", tmp_path / "out"
    shutil.copy(good, os.fsdecode(os.fsencode(src) + b"/M\xfcller.dcm"))  # from an old Latin-1 archive
    for _ in range(2):  # the rerun too
        assert run_images(src, out, "--workers", "1") == 1
        errors = pd.read_csv(out / "errors.csv")
        assert list(errors.file) == [f"{src}/M\\xfcller.dcm"] and list(errors.image_id) == ["M\\xfcller"]
        assert "not a safe image id" in errors.reason[0]
        assert list(pd.read_csv(out / "meta.csv").image_id) == ["good"]
        assert saved_images_config(out)["size"] == 32


def test_a_source_folder_whose_name_is_not_utf8_is_one_line(dicom_factory, tmp_path, caplog):
    good = dicom_factory("good.dcm", noisy())
    src = Path(os.fsdecode(os.fsencode(tmp_path) + b"/D\xe9p\xf4t"))
    src.mkdir()
    shutil.copy(good, src / "good.dcm")
    assert run_images(src, tmp_path / "out") == 2
    assert "D\\xe9p\\xf4t is not a UTF-8 name" in caplog.text and "rename the folder" in caplog.text


# --------------------------------------------------------------------------- signals end the whole process tree

def started_mid_run(dicom_factory, tmp_path) -> tuple[subprocess.Popen, list[psutil.Process], Path]:
    """`vinbig images --workers 2` on 24 slow images, piped as `| tail` would, once its first images are in."""
    proc, out = start_slow_images(dicom_factory, tmp_path)
    journal = out / ".meta.journal.csv"
    deadline = time.time() + 120
    while not (journal.is_file() and len(journal.read_text().splitlines()) > 1) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    workers = [c for c in psutil.Process(proc.pid).children(recursive=True)
               if "spawn_main" in " ".join(c.cmdline())]
    assert len(workers) == 2, workers
    return proc, workers, out


def ended(processes: list[psutil.Process], timeout: float = 10) -> list[psutil.Process]:
    """The processes still running after `timeout` seconds (zombies count as ended); kills those."""
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in alive:
        p.kill()
    return alive


@pytest.mark.skipif(sys.platform != "linux", reason="signals and process trees as on Linux")
def test_sigterm_ends_the_command_and_every_worker_and_the_pipe_closes(dicom_factory, tmp_path):
    proc, workers, out = started_mid_run(dicom_factory, tmp_path)
    try:
        proc.send_signal(signal.SIGTERM)  # as timeout, docker stop and job schedulers do: to the command alone
        output, _ = proc.communicate(timeout=60)  # `| tail` returns: no worker keeps the pipe open
    finally:
        if proc.poll() is None:
            proc.kill()
        left = ended(workers)
    assert left == [], "workers outlived the command"
    assert proc.returncode == 143, output
    assert "stopped by SIGTERM; what finished is kept" in output and "rerun the same command" in output
    assert "Traceback" not in output
    assert run_images(out.parent / "src", out, "--workers", "1") == 0  # the rerun converts the rest
    assert len(pd.read_csv(out / "meta.csv")) == 24


@pytest.mark.skipif(sys.platform != "linux", reason="signals and process trees as on Linux")
def test_workers_end_when_the_command_is_killed_with_sigkill(dicom_factory, tmp_path):
    proc, workers, _ = started_mid_run(dicom_factory, tmp_path)
    try:
        proc.kill()  # no handler sees SIGKILL
        proc.communicate(timeout=30)  # the workers, which hold the pipe too, end with it
    finally:
        left = ended(workers)
    assert left == [], "workers outlived the command"


# --------------------------------------------------------------------------- codestreams that lie about their size


def compressed(path: Path, pixels: np.ndarray, syntax, patch=None, **tags) -> Path:
    """`pixels` as a single-frame DICOM in `syntax` (encoded by pydicom's plugins), its codestream passed through
    `patch` (bytearray -> None) before it is encapsulated again."""
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(make_dicom(path, pixels, **tags))
    ds.compress(syntax)
    codestream = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    if patch is not None:
        patch(codestream)
    ds.PixelData = encapsulate([bytes(codestream)])
    ds.save_as(path, enforce_file_format=False)
    return path


def baseline_jpeg(path: Path, pixels: np.ndarray, patch=None) -> Path:
    """8-bit `pixels` as a JPEG Baseline DICOM (OpenCV encodes: pydicom has no JPEG encoder)."""
    import cv2
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = pydicom.dcmread(make_dicom(path, pixels.astype(np.uint16), bits_stored=8))
    codestream = bytearray(cv2.imencode(".jpg", pixels.astype(np.uint8))[1].tobytes())
    if patch is not None:
        patch(codestream)
    ds.BitsAllocated, ds.HighBit = 8, 7
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([bytes(codestream)])
    ds.save_as(path, enforce_file_format=False)
    return path


def siz(**fields):
    """A patch of a JPEG 2000 codestream's SIZ marker (ISO 15444-1 A.5.1): Xsiz, Ysiz, XTsiz, YTsiz, Csiz, Ssiz."""
    offsets = dict(Xsiz=(8, ">I"), Ysiz=(12, ">I"), XTsiz=(24, ">I"), YTsiz=(28, ">I"), Csiz=(40, ">H"),
                   Ssiz=(42, ">B"))

    def patch(codestream: bytearray) -> None:
        assert codestream[:4] == b"\xff\x4f\xff\x51"
        for name, value in fields.items():
            struct.pack_into(offsets[name][1], codestream, offsets[name][0], value)
    return patch


def sof(height: int, width: int, marker: bytes = b"\xff\xc0", components: int | None = None):
    """A patch of the frame header (SOF) of a JPEG or JPEG-LS codestream: its height and width."""
    def patch(codestream: bytearray) -> None:
        at = codestream.index(marker)
        struct.pack_into(">HH", codestream, at + 5, height, width)
        if components is not None:
            codestream[at + 9] = components
    return patch


def test_codestreams_that_declare_gigabytes_are_listed_and_memory_stays_bounded(dicom_factory, tmp_path):
    from pydicom.uid import JPEG2000Lossless

    src = tmp_path / "src"
    dicom_factory("good.dcm", noisy())
    compressed(src / "good_j2k.dcm", noisy(seed=3), JPEG2000Lossless)
    # 30000 x 30000 in one tile behind a header of 60 x 50: the decoders allocated 2 to 4 GB before the decoded
    # shape was compared with the header
    compressed(src / "j2k_bomb.dcm", noisy(), JPEG2000Lossless, siz(Xsiz=30000, Ysiz=30000, XTsiz=30000, YTsiz=30000))
    baseline_jpeg(src / "jpeg_bomb.dcm", noisy() >> 4, sof(30000, 30000))
    # the size the header says, in 65025 tiles of one pixel: 740 MB of decoder structures from 3 KB
    compressed(src / "j2k_tiles.dcm", noisy(255, 255), JPEG2000Lossless, siz(XTsiz=1, YTsiz=1))
    assert all(p.stat().st_size < 100_000 for p in src.iterdir())
    out = tmp_path / "out"

    reasons = converted_within_1gb(src, out)
    assert set(reasons) == {"j2k_bomb", "jpeg_bomb", "j2k_tiles"}
    assert reasons["j2k_bomb"].startswith("the JPEG 2000 Image Compression (Lossless Only) codestream declares "
                                          "30000 x 30000 pixels (1 component(s) of 12 bits), but the header Rows 60 x "
                                          "Columns 50")
    assert reasons["jpeg_bomb"].startswith("the JPEG Baseline (Process 1) codestream declares 30000 x 30000 pixels")
    assert "re-export it from its source" in reasons["jpeg_bomb"]
    assert "splits its image into 65025 tiles; vinbig decodes at most 4096" in reasons["j2k_tiles"]
    assert sorted(pd.read_csv(out / "meta.csv").image_id) == ["good", "good_j2k"]


def _jp2(codestream: bytearray) -> None:
    """The codestream wrapped in a JP2 file (signature, ftyp and jp2c boxes), as some exporters wrongly write."""
    boxes = (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + struct.pack(">I4s4sI4s", 20, b"ftyp", b"jp2 ", 0, b"jp2 ")
             + struct.pack(">I4s", 8 + len(codestream), b"jp2c"))
    codestream[:0] = boxes


def _jp2_bigger(codestream: bytearray) -> None:
    siz(Xsiz=640, Ysiz=600)(codestream)
    _jp2(codestream)


def _second_sof(codestream: bytearray) -> None:
    """A second, larger frame header after the first scan."""
    at = codestream.index(b"\xff\xc0")
    frame = bytes(codestream[at:at + 2 + struct.unpack_from(">H", codestream, at + 2)[0]])
    eoi = codestream.rindex(b"\xff\xd9")
    codestream[eoi:eoi] = frame[:5] + struct.pack(">HH", 6000, 5000) + frame[9:]


@pytest.mark.parametrize("syntax, patch, words", [
    ("JPEG2000Lossless", siz(Xsiz=500, Ysiz=600), "codestream declares 600 x 500 pixels (1 component(s) of 12 bits), "
                                                  "but the header Rows 60 x Columns 50 (1 sample of 16 bits"),
    ("JPEG2000Lossless", siz(Csiz=3), "declares 60 x 50 pixels (3 component(s)"),
    ("JPEG2000Lossless", siz(Ssiz=31), "declares 60 x 50 pixels (1 component(s) of 32 bits), but the header"),
    ("JPEG2000Lossless", _jp2_bigger, "declares 600 x 640 pixels"),
    ("JPEG2000Lossless", lambda c: c.__setitem__(slice(0, 2), b"\0\0"), "does not start with an SOC and a SIZ marker"),
    ("JPEGLSLossless", sof(600, 500, b"\xff\xf7"), "JPEG-LS Lossless Image Compression codestream declares 600 x 500"),
    ("JPEGLSLossless", sof(0, 0, b"\xff\xf7"), "codestream declares 0 x 0 pixels"),
    ("JPEGBaseline8Bit", sof(600, 500), "JPEG Baseline (Process 1) codestream declares 600 x 500 pixels"),
    ("JPEGBaseline8Bit", sof(60, 50, components=3), "declares 60 x 50 pixels (3 component(s) of 8 bits)"),
    ("JPEGBaseline8Bit", sof(0, 50), "declares 0 x 50 pixels"),  # a height the DNL marker would give later
    ("JPEGBaseline8Bit", _second_sof, "declares 6000 x 5000 pixels"),
], ids=["j2k-size", "j2k-components", "j2k-precision", "jp2-size", "j2k-no-soc", "jpeg-ls-size", "jpeg-ls-oversize",
        "jpeg-size", "jpeg-components", "jpeg-dnl", "jpeg-second-frame"])
def test_a_codestream_that_disagrees_with_its_header_is_refused_before_decoding(tmp_path, monkeypatch, syntax, patch,
                                                                                words):
    import pydicom.uid

    path = tmp_path / "x.dcm"
    if syntax == "JPEGBaseline8Bit":
        baseline_jpeg(path, noisy() >> 4, patch)
    else:
        compressed(path, noisy(), getattr(pydicom.uid, syntax), patch)
    assert words in refused_before_decoding(path, monkeypatch)


def test_valid_compressed_files_convert_to_the_png_of_their_uncompressed_twin(tmp_path):
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

    pixels = noisy()
    twin = convert(make_dicom(tmp_path / "plain.dcm", pixels), size=40)[1]
    for syntax in (JPEG2000Lossless, JPEGLSLossless, RLELossless):
        image = convert(compressed(tmp_path / f"{syntax.name}.dcm", pixels, syntax), size=40)[1]
        np.testing.assert_array_equal(image, twin, err_msg=syntax.name)
    eight = noisy() >> 4  # JPEG baseline is lossy: the same image as the decoder gives it, through the same table
    px = convert(baseline_jpeg(tmp_path / "baseline.dcm", eight), size=64)[0]
    assert px.image.shape == (60, 50) and px.transfer_syntax == "1.2.840.10008.1.2.4.50"


def test_an_offset_table_listing_more_frames_than_the_header_decodes_one(tmp_path):
    # pydicom decodes and appends every further frame the Basic Offset Table lists, whatever Number of Frames says
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.uid import JPEG2000Lossless

    pixels = noisy()
    path = compressed(tmp_path / "x.dcm", pixels, JPEG2000Lossless)
    ds = pydicom.dcmread(path)
    codestream = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([codestream] * 50, has_bot=True)  # 50 frames, 6 KB: 50 times the memory decoded
    ds.save_as(path, enforce_file_format=False)
    np.testing.assert_array_equal(convert(path, size=40)[1], convert(make_dicom(tmp_path / "p.dcm", pixels),
                                                                      size=40)[1])


# --------------------------------------------------------------------------- JPEG 2000 coding that takes gigabytes


def _cod(levels: int, block: tuple[int, int], precincts, layers: int = 1, coc: bool = False) -> bytes:
    """A COD marker segment (or a COC of component 0) of a reversible 5-3 codestream (ISO 15444-1 A.6.1, A.6.2):
    code-blocks of 2**block[0] x 2**block[1], precincts 2**px x 2**py for each resolution (None: the default)."""
    style = bytes([1 if precincts else 0])
    body = (b"\0" + style if coc else style + b"\0" + struct.pack(">H", layers) + b"\0")
    body += bytes([levels, block[0] - 2, block[1] - 2, 0, 1]) + bytes(py << 4 | px for px, py in precincts or ())
    return (b"\xff\x53" if coc else b"\xff\x52") + struct.pack(">H", 2 + len(body)) + body


def j2k(rows: int, cols: int, *, block=(6, 6), precincts=None, layers: int = 1, levels: int = 5, tile: int = 0,
        where: str = "cod") -> bytes:
    """A hand-made JPEG 2000 codestream of `rows` x `cols` zeros (12 bits, tiles of `tile` pixels, else one) whose
    coding style is set in the main header's COD (`where` "cod") or COC ("coc"), or in each tile-part header's COD
    ("tile-cod") or COC ("tile-coc"); a few hundred bytes, whatever its size."""
    tile_w, tile_h = (tile, tile) if tile else (cols, rows)
    siz = b"\xff\x51" + struct.pack(">HH8IH3B", 41, 0, cols, rows, 0, 0, tile_w, tile_h, 0, 0, 1, 11, 1, 1)
    qcd = b"\xff\x5c" + struct.pack(">H", 4 + 3 * levels) + b"\x40" + b"\x68" * (3 * levels + 1)
    style = _cod(levels, block, precincts, layers, coc=where.endswith("coc"))
    main = b"\xff\x4f" + siz + (style if where == "cod" else _cod(levels, (6, 6), None, layers))
    main += style if where == "coc" else b""
    parts = b""
    for index in range(-(-rows // tile_h) * -(-cols // tile_w)):
        body = (style if where.startswith("tile") else b"") + b"\xff\x93" + bytes(12)  # empty packets
        parts += b"\xff\x90" + struct.pack(">HHIBB", 10, index, 12 + len(body), 0, 1) + body
    return main + qcd + parts + b"\xff\xd9"


def j2k_dicom(path: Path, rows: int, cols: int, **coding) -> Path:
    return header_only(path, j2k(rows, cols, **coding), JPEG2000Lossless, Rows=rows, Columns=cols)


FOUR = ((2, 2),) * 6  # precincts of 4 x 4 in every resolution: code-blocks of 2 x 2 in the bands


@pytest.mark.parametrize("coding, words", [
    (dict(block=(2, 2)), "in code-blocks of 4 x 4 and precincts down to 32768 x 32768: about 3"),
    (dict(block=(2, 2), where="coc"), "in code-blocks of 4 x 4"),
    (dict(block=(2, 2), where="tile-cod"), "in code-blocks of 4 x 4"),
    (dict(block=(2, 2), where="tile-coc", tile=5000), "tiles of 5000 x 5000 pixels in code-blocks of 4 x 4"),
    (dict(precincts=FOUR), "code-blocks of 64 x 64 and precincts down to 4 x 4"),
    (dict(precincts=FOUR, where="tile-coc"), "precincts down to 4 x 4"),
    (dict(block=(10, 2), precincts=((1, 15),) + ((2, 15),) * 5), "code-blocks of 1024 x 4 and precincts down to 4 x"),
    (dict(layers=65535, precincts=((7, 7),) * 6), "declares 65535 quality layers of up to 3136 precincts in each of 6 "
                                                  "resolutions (a packet index of 1233125376 entries); vinbig decodes "
                                                  "at most 16777216"),
    (dict(layers=300, precincts=((5, 5),) * 33, levels=32), "300 quality layers of up to 48400 precincts"),
], ids=["blocks", "coc", "tile-part", "tile-part-coc", "precincts", "tile-part-precincts", "thin", "layers", "levels"])
def test_jpeg2000_coding_styles_that_take_gigabytes_are_refused_before_decoding(tmp_path, monkeypatch, coding, words):
    path = j2k_dicom(tmp_path / "x.dcm", 7000, 7000, **coding)
    assert path.stat().st_size < 2000
    error = refused_before_decoding(path, monkeypatch)
    assert words in error and "re-encode the file with" in error


@pytest.mark.parametrize("coding", [
    dict(), dict(block=(5, 5)), dict(block=(2, 2), tile=1024), dict(layers=65535),
    dict(precincts=((7, 7),) + ((8, 8),) * 5, layers=20),
], ids=["default", "32x32", "tiles-of-4x4-blocks", "layers", "kakadu-precincts"])
def test_jpeg2000_coding_styles_of_real_encoders_decode(tmp_path, coding):
    # tiny code-blocks in tiles that hold few of them, many layers of the default precincts, precincts of 128 and 256
    _, image = convert(j2k_dicom(tmp_path / "x.dcm", 2000, 1500, **coding), size=64)
    assert image.shape == (64, 48)


def test_jpeg2000_coding_styles_that_declare_gigabytes_are_listed_and_memory_stays_bounded(dicom_factory, tmp_path):
    src = tmp_path / "src"
    dicom_factory("good.dcm", noisy())
    compressed(src / "good_j2k.dcm", noisy(seed=3), JPEG2000Lossless)
    j2k_dicom(src / "small_blocks.dcm", 60, 50, block=(2, 2), precincts=FOUR)  # few code-blocks, however small
    # each of these made OpenJPEG allocate 1.8 to 5 GB (or fail at the test's 4 GB cap) from a file of under 1 KB
    j2k_dicom(src / "blocks.dcm", 7000, 7000, block=(2, 2))
    j2k_dicom(src / "tile_part.dcm", 7000, 7000, block=(2, 2), where="tile-cod")
    j2k_dicom(src / "precincts.dcm", 3000, 3000, precincts=((1, 1),) * 6)
    j2k_dicom(src / "layers.dcm", 7000, 7000, layers=65535, precincts=((7, 7),) * 6)
    assert all(p.stat().st_size < 100_000 for p in src.iterdir())
    out = tmp_path / "out"

    reasons = converted_within_1gb(src, out)
    assert set(reasons) == {"blocks", "tile_part", "precincts", "layers"}
    assert reasons["blocks"].startswith("the JPEG 2000 Image Compression (Lossless Only) codestream codes its tiles "
                                        "of 7000 x 7000 pixels in code-blocks of 4 x 4")
    assert "vinbig decodes at most 1000000" in reasons["tile_part"]
    assert "precincts down to 2 x 2" in reasons["precincts"]
    assert "65535 quality layers" in reasons["layers"]
    assert sorted(pd.read_csv(out / "meta.csv").image_id) == ["good", "good_j2k", "small_blocks"]
