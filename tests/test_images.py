"""`vinbig images`: the real chest CR, bad inputs, resizing, reruns and a kill in the middle."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from conftest import RG1, gradient, read_png
from faults import start_slow_images
from folds import convert_images
from vinbig.artifacts import ERROR_COLUMNS, META_COLUMNS
from vinbig.app.cli import main

REPO = Path(__file__).resolve().parent.parent


def run_images(src, out, *extra) -> int:
    return main(["images", "--src", str(src), "--out", str(out), "-q", *extra])


@pytest.fixture(scope="module")
def rg1_converted(rg1_dir, tmp_path_factory):
    """The four RG1 files converted at full size (long side 2048 >= 1955: no resize)."""
    out = tmp_path_factory.mktemp("rg1") / "png"
    assert run_images(rg1_dir, out, "--size", "2048", "--workers", "2") in (0, 1)  # other files may fail
    return out


def test_real_cr_all_four_convert_with_original_size_in_meta(rg1_converted):
    meta = pd.read_csv(rg1_converted / "meta.csv").set_index("image_id")
    assert list(meta.reset_index().columns) == list(META_COLUMNS)
    for name in RG1:
        assert (meta.loc[name, "width"], meta.loc[name, "height"]) == (1841, 1955)
        assert meta.loc[name, "photometric"] == "MONOCHROME1"
        image = read_png(rg1_converted / f"{name}.png")
        assert image.dtype == np.uint8 and image.shape == (1955, 1841)  # rows x columns, single channel


@pytest.mark.parametrize("compressed, plain", [("RG1_J2KR", "RG1_UNCR"), ("RG1_J2KI", "RG1_UNCI")])
def test_real_cr_compressed_png_equals_uncompressed_twin(rg1_converted, compressed, plain):
    np.testing.assert_array_equal(read_png(rg1_converted / f"{compressed}.png"),
                                  read_png(rg1_converted / f"{plain}.png"))


def test_real_cr_monochrome1_relabelled_monochrome2_is_the_negative(rg1_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(rg1_dir / "RG1_UNCR.dcm", src / "mono1.dcm")
    ds = pydicom.dcmread(rg1_dir / "RG1_UNCR.dcm")
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.save_as(src / "mono2.dcm")
    assert run_images(src, tmp_path / "out", "--size", "2048", "--workers", "1") == 0
    m1 = read_png(tmp_path / "out" / "mono1.png").astype(int)
    m2 = read_png(tmp_path / "out" / "mono2.png").astype(int)
    assert np.abs(m1 + m2 - 255).max() <= 1
    meta = pd.read_csv(tmp_path / "out" / "meta.csv").set_index("image_id")
    assert meta.loc["mono1", "photometric"] == "MONOCHROME1" and meta.loc["mono2", "photometric"] == "MONOCHROME2"


def test_resize_keeps_aspect_ratio_and_records_png_size(rg1_dir, tmp_path):
    out = tmp_path / "out"
    summary = convert_images(rg1_dir, out, size=512, workers=1)
    meta = pd.read_csv(out / "meta.csv").set_index("image_id")
    assert summary.converted >= 4
    assert (meta.loc["RG1_UNCR", "png_width"], meta.loc["RG1_UNCR", "png_height"]) == (482, 512)
    assert read_png(out / "RG1_UNCR.png").shape == (512, 482)


def bad_files(src: Path, rg1_dir: Path) -> dict[str, str]:
    """Write one file per kind of fault; returns {file name: expected words of its reason}."""
    good = (rg1_dir / "RG1_UNCR.dcm").read_bytes()
    (src / "truncated.dcm").write_bytes(good[: len(good) // 2])
    (src / "header_only.dicom").write_bytes(good[:400])
    (src / "text.dicom").write_bytes(b"image_id,class_name\n" * 50)
    ds = pydicom.dcmread(rg1_dir / "RG1_UNCR.dcm")
    del ds.PixelData
    ds.save_as(src / "no_pixels.dicom")
    ds = pydicom.dcmread(rg1_dir / "RG1_UNCR.dcm")
    del ds.file_meta.TransferSyntaxUID
    ds.save_as(src / "no_syntax.dicom", enforce_file_format=False)
    ds = pydicom.dcmread(rg1_dir / "RG1_J2KR.dcm")
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG-2: no decoder
    ds.save_as(src / "mpeg.dicom", enforce_file_format=False)
    return {
        "truncated.dcm": "pixel data is truncated",
        "header_only.dicom": "truncated or holds no image",
        "text.dicom": "not a DICOM file",
        "no_pixels.dicom": "no Pixel Data element",
        "no_syntax.dicom": "missing Transfer Syntax UID",
        "mpeg.dicom": "transfer syntax MPEG2 Main Profile / Main Level (1.2.840.10008.1.2.4.100) is not supported",
    }


def test_bad_files_are_listed_with_reasons_and_the_rest_converts(rg1_dir, tmp_path, caplog):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(rg1_dir / "RG1_UNCR.dcm", src / "good.dicom")
    (src / "sub").mkdir()
    shutil.copy(rg1_dir / "RG1_UNCR.dcm", src / "sub" / "good.dcm")  # same image id twice
    shutil.copy(rg1_dir / "RG1_UNCR.dcm", src / "bad id!.dcm")
    expected = bad_files(src, rg1_dir)
    expected["good.dcm"] = "duplicate image id"
    expected["bad id!.dcm"] = "not a safe image id"
    out = tmp_path / "out"

    assert run_images(src, out, "--size", "256", "--workers", "2") == 1
    errors = pd.read_csv(out / "errors.csv")
    assert list(errors.columns) == list(ERROR_COLUMNS)
    reasons = {Path(f).name: r for f, r in zip(errors.file, errors.reason)}
    assert set(reasons) == set(expected)
    for name, words in expected.items():
        assert words in reasons[name], (name, reasons[name])
    meta = pd.read_csv(out / "meta.csv")
    assert list(meta.image_id) == ["good"]
    assert sorted(p.name for p in out.glob("*.png")) == ["good.png"]

    # --allow-errors: same outputs, exit code 0
    assert run_images(src, out, "--size", "256", "--allow-errors") == 0


@pytest.mark.parametrize("tags, words", [
    (dict(Columns=33), "Rows 48 x Columns 33 at 16 bits allocated need 3168 bytes"),  # sheared by pydicom
    (dict(Rows=38), "Rows 38 x Columns 40 at 16 bits allocated need 3040 bytes"),  # cropped by pydicom
])
def test_pixel_data_longer_than_the_header_says_is_an_error_not_a_garbled_png(dicom_factory, tmp_path, tags, words):
    dicom_factory("good.dcm", gradient(48, 40))
    ds = pydicom.dcmread(dicom_factory("bad.dcm", gradient(48, 40)))
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(tmp_path / "src" / "bad.dcm")
    out = tmp_path / "out"
    assert run_images(tmp_path / "src", out, "--size", "64", "--workers", "1") == 1
    errors = pd.read_csv(out / "errors.csv")
    assert list(errors.image_id) == ["bad"]
    assert f"the pixel data holds 3840 bytes, but {words}" in errors.reason[0]
    assert "re-export the file" in errors.reason[0]
    assert list(pd.read_csv(out / "meta.csv").image_id) == ["good"]
    assert not (out / "bad.png").exists()


def test_missing_src_and_empty_src_name_the_folder(tmp_path, caplog):
    assert run_images(tmp_path / "nope", tmp_path / "out") == 2
    assert "nope is not a folder" in caplog.text
    (tmp_path / "empty").mkdir()
    assert run_images(tmp_path / "empty", tmp_path / "out") == 2
    assert "no .dicom or .dcm files" in caplog.text


def test_an_output_path_that_is_a_file_is_one_line_before_any_work(dicom_factory, tmp_path, caplog):
    dicom_factory("a.dcm", gradient())
    out = tmp_path / "out"
    out.write_text("not a folder")
    assert run_images(tmp_path / "src", out, "--workers", "1") == 2
    assert f"cannot write {out}: a file stands where the folder should be ({out}); choose another output" in caplog.text
    assert "Traceback" not in caplog.text


def test_a_full_disk_stops_the_run_naming_the_png_and_a_rerun_finishes(dicom_factory, tmp_path, monkeypatch, caplog):
    import errno

    for i in range(5):
        dicom_factory(f"im{i}.dicom", gradient(60, 50))
    src, out = tmp_path / "src", tmp_path / "out"
    real = Path.write_bytes

    def full_disk(self, data):
        if "im2.png" in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    assert run_images(src, out, "--size", "32", "--workers", "1") == 2  # not 5 files "failed" in errors.csv
    assert f"cannot write {out / 'im2.png'}: No space left on device; free some disk space" in caplog.text
    assert "the 2 image(s) converted so far are kept" in caplog.text
    assert not (out / "errors.csv").exists() and not (out / "config_images.yaml").exists()
    assert sorted(p.name for p in out.glob("*.png")) == ["im0.png", "im1.png"]

    monkeypatch.setattr(Path, "write_bytes", real)
    summary = convert_images(src, out, size=32, workers=1)
    assert (summary.skipped, summary.converted, summary.errors, summary.images) == (2, 3, 0, 5)


def test_rerun_skips_done_images_and_redoes_them_at_a_new_size(dicom_factory, tmp_path):
    for i in range(3):
        dicom_factory(f"im{i}.dicom", gradient(60 + i, 50))
    src, out = tmp_path / "src", tmp_path / "out"
    first = convert_images(src, out, size=32, workers=1)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    second = convert_images(src, out, size=32, workers=1)
    assert (first.converted, second.converted, second.skipped) == (3, 0, 3)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == mtimes
    third = convert_images(src, out, size=40, workers=1)
    assert third.converted == 3
    assert read_png(out / "im0.png").shape == (40, 33)


@pytest.mark.parametrize("strategy", ["huffman", "default"])
@pytest.mark.parametrize("level", [0, 1, 9])
def test_the_png_holds_exactly_the_resized_image_at_every_compression_level(dicom_factory, tmp_path, level, strategy):
    import cv2

    from vinbig.dicom import read_dicom

    noisy = np.clip(gradient(90, 70).astype(int) + np.random.default_rng(0).integers(-60, 60, (90, 70)), 0, 4095)
    path = dicom_factory("a.dcm", noisy.astype(np.uint16))
    out = tmp_path / "out"
    convert_images(tmp_path / "src", out, size=50, workers=1, png_compression=level, png_strategy=strategy)
    expect = cv2.resize(read_dicom(path).image, (39, 50), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(read_png(out / "a.png"), expect)


def test_the_png_strategy_reaches_the_encoder_and_an_unknown_one_is_refused(dicom_factory, tmp_path):
    noisy = np.clip(gradient(200, 160).astype(int) + np.random.default_rng(1).integers(-300, 300, (200, 160)), 0, 4095)
    dicom_factory("a.dcm", noisy.astype(np.uint16))
    sizes = {}
    for strategy in ("huffman", "default"):
        out = tmp_path / strategy
        convert_images(tmp_path / "src", out, size=160, workers=1, png_compression=9, png_strategy=strategy)
        sizes[strategy] = (out / "a.png").stat().st_size
    assert sizes["huffman"] != sizes["default"]  # another coding of the same pixels
    assert main(["images", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "x"), "--png-strategy", "rle",
                 "-q"]) == 2


def test_parallel_and_serial_give_identical_pngs(dicom_factory, tmp_path):
    for i in range(6):
        dicom_factory(f"im{i}.dicom", gradient(70, 50 + i), photometric="MONOCHROME1" if i % 2 else "MONOCHROME2")
    src = tmp_path / "src"
    convert_images(src, tmp_path / "serial", size=48, workers=1)
    convert_images(src, tmp_path / "parallel", size=48, workers=2)
    for i in range(6):
        np.testing.assert_array_equal(read_png(tmp_path / "serial" / f"im{i}.png"),
                                      read_png(tmp_path / "parallel" / f"im{i}.png"))
    a = pd.read_csv(tmp_path / "serial" / "meta.csv")
    b = pd.read_csv(tmp_path / "parallel" / "meta.csv")
    pd.testing.assert_frame_equal(a, b)


# A run of `vinbig images` whose PNG writer stops half-way through the 4th image, as a kill would
# find it; the test then kills the whole process group.
HANGING_RUN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    real = Path.write_bytes
    def write_bytes(self, data):
        if "im3" in self.name:
            with open(self, "wb") as f:
                f.write(data[: len(data) // 2]); f.flush()
            time.sleep(600)
        return real(self, data)
    Path.write_bytes = write_bytes
    from vinbig.app.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_kill_mid_write_leaves_no_partial_png_and_rerun_converts_the_rest(dicom_factory, tmp_path):
    for i in range(6):
        dicom_factory(f"im{i}.dicom", gradient(80, 64))
    src, out = tmp_path / "src", tmp_path / "out"
    cmd = [sys.executable, "-c", HANGING_RUN, "images", "--src", str(src), "--out", str(out),
           "--size", "32", "--workers", "1", "-q"]
    proc = subprocess.Popen(cmd, start_new_session=True, cwd=REPO)
    try:
        deadline = time.time() + 120
        while not list(out.glob(".im3.png.*.partial")) and time.time() < deadline:
            assert proc.poll() is None, "the run ended before it was killed"
            time.sleep(0.05)
        assert list(out.glob(".im3.png.*.partial")), "the run never reached the 4th image"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    assert sorted(p.name for p in out.glob("*.png")) == ["im0.png", "im1.png", "im2.png"]
    assert not (out / "meta.csv").exists()
    for i in range(3):
        assert read_png(out / f"im{i}.png").shape == (32, 26)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}

    summary = convert_images(src, out, size=32, workers=1)
    assert (summary.skipped, summary.converted, summary.errors) == (3, 3, 0)
    assert not list(out.glob("*.partial")) and not list(out.glob(".*.partial"))
    assert {k: v for k, v in ((p.name, p.stat().st_mtime_ns) for p in out.glob("*.png")) if k in before} == before
    meta = pd.read_csv(out / "meta.csv")
    assert list(meta.image_id) == [f"im{i}" for i in range(6)]
    assert not (out / ".meta.journal.csv").exists()


def spawned_workers(parent: int) -> list[int]:
    """Pids of the multiprocessing workers among the children of `parent` (not its resource tracker)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # a process that ended meanwhile
        if ppid == parent and b"spawn_main" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


def journal_rows(out: Path) -> int:
    journal = out / ".meta.journal.csv"
    return max(0, len(journal.read_text().splitlines()) - 1) if journal.is_file() else 0


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the worker processes in /proc")
def test_a_killed_worker_ends_the_run_with_a_message_and_a_rerun_finishes(dicom_factory, tmp_path):
    proc, out = start_slow_images(dicom_factory, tmp_path, start_new_session=True)
    try:
        deadline = time.time() + 120
        while journal_rows(out) == 0 and time.time() < deadline:  # the first images are in
            assert proc.poll() is None, "the run ended before a worker was killed"
            time.sleep(0.05)
        workers = spawned_workers(proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)  # as the out-of-memory killer does
        output, _ = proc.communicate(timeout=60)  # the old pool waited here forever for the lost images
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert proc.returncode == 2, output
    assert "Traceback" not in output
    assert f"the conversion into {out} stopped: worker process {workers[0]} was killed by SIGKILL" in output
    assert "converted so far are kept; it converts the rest), with a lower --workers" in output
    kept = journal_rows(out)
    assert 0 < kept < 24 and not (out / "meta.csv").exists()
    assert not (out / "config_images.yaml").exists()  # saved only with finished outputs

    assert run_images(tmp_path / "src", out, "--size", "32", "--workers", "1") == 0  # the same command, one process
    assert len(pd.read_csv(out / "meta.csv")) == 24
    assert sorted(p.name for p in out.glob("*.png")) == [f"im{i:02d}.png" for i in range(24)]
    assert not (out / ".meta.journal.csv").exists() and not list(out.glob(".*.partial"))
