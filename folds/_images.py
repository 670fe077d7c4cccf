"""`vinbig images`: every DICOM under a folder to `<image_id>.png`, plus meta.csv and errors.csv.

Safe to stop and rerun: each PNG is written to a temporary file and renamed; each finished image
is appended to a journal (``.meta.journal.csv``) right after its rename, so a killed run loses
nothing it finished. A rerun skips images whose PNG exists at the requested size and converts the
rest; meta.csv and errors.csv are rewritten atomically at the end.

A rerun never mixes two settings: ``.images.json`` holds the settings that change the pixels (``size``, ``voi``,
``percentiles``) of every PNG listed in meta.csv and the journal. A rerun with other ones first removes
config_images.yaml, meta.csv and the journal (in that order, so that no file ever describes PNGs that are not
what it says), records its own settings, and converts every image again; config_images.yaml is saved when it
finishes.

The output folder is checked to be writable before the conversion starts. A write that fails on the
way (a full disk) or a worker process that dies (the out-of-memory killer) stops the run with one
error naming the cause; the images converted until then are kept for the rerun.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from vinbig import log
from vinbig.artifacts import (
    DICOM_SUFFIXES,
    ERROR_COLUMNS,
    META_COLUMNS,
    SAFE_ID,
    ArtifactError,
    atomic_path,
    check_writable,
    config_path,
    errors_path,
    meta_path,
    png_path,
    source_path,
    write_csv,
    writing,
)
from vinbig.boxes import png_size
from vinbig.dicom import VOI_MODES, DicomError, convert, failure_reason
from vinbig.errors import WorkerDiedError
from vinbig.parallel import process_map

logger = logging.getLogger(__name__)
JOURNAL = ".meta.journal.csv"
SETTINGS = ".images.json"  # the settings that change the pixels, of every PNG listed in meta.csv and the journal
PIXEL_KEYS = ("size", "voi", "percentiles")


def find_dicoms(src: Path) -> list[Path]:
    """Every file under `src` whose suffix is .dicom or .dcm (any case), sorted."""
    return sorted(p for p in src.rglob("*") if p.suffix.lower() in DICOM_SUFFIXES and p.is_file())


PNG_STRATEGIES = {"huffman": "IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY", "default": "IMWRITE_PNG_STRATEGY_DEFAULT"}


def png_params(level: int, strategy: str = "huffman") -> list[int]:
    """`cv2.imencode` settings for a PNG at zlib `level`: every row with PNG's Average filter (level 0: no
    filter, the data is only stored). libpng's per-row choice among the five filters, which OpenCV asks for
    once a level is given, takes 1.7 times as long at level 1 and its files are no smaller on radiographs at
    long side 1024 (see BENCHMARKS.md). `strategy` "huffman" codes the filtered rows without string matching:
    faster, and smaller on radiographs, whose noise leaves few repeated strings. The pixels are the same either
    way, PNG being lossless."""
    params = [cv2.IMWRITE_PNG_COMPRESSION, int(level), cv2.IMWRITE_PNG_STRATEGY, getattr(cv2, PNG_STRATEGIES[strategy])]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV 4.12 and later; older ones keep libpng's choice
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_AVG if level else cv2.IMWRITE_PNG_FILTER_NONE]
    return params


def convert_one(path: Path, out: Path, *, size: int, voi: str, percentiles, png_compression: int,
                png_strategy: str = "huffman") -> dict:
    """Convert one file; returns its meta.csv row, an errors.csv row (key ``reason``) if the file could not be
    converted, or ``{"write_error": text}`` if its PNG could not be written (the fault of the output, not the
    file: the run stops)."""
    image_id = path.stem
    target = png_path(out, image_id)
    try:
        px, image = convert(path, size=size, voi=voi, percentiles=percentiles)
        png_h, png_w = image.shape
        ok, buf = cv2.imencode(".png", image, png_params(png_compression, png_strategy))
        if not ok:
            raise DicomError("OpenCV could not encode the PNG")
        try:
            with atomic_path(target) as tmp:
                tmp.write_bytes(buf.tobytes())
        except OSError as e:
            return {"write_error": f"{target}: {e.strerror or e}"}
    except Exception as e:  # one bad file must never stop the batch
        return {"file": str(path), "image_id": image_id, "reason": failure_reason(e)}
    return {
        "image_id": image_id, "width": px.width, "height": px.height, "png_width": png_w,
        "png_height": png_h, "photometric": px.photometric, "bits_stored": px.bits_stored, "voi": px.voi,
        "window_low": px.window_low, "window_high": px.window_high, "transfer_syntax": px.transfer_syntax,
    }


def _read_rows(path: Path) -> pd.DataFrame:
    """meta rows from meta.csv or the journal; a torn last line of a killed run is dropped."""
    if not path.is_file() or not path.stat().st_size:
        return pd.DataFrame(columns=list(META_COLUMNS))
    try:
        df = pd.read_csv(path, dtype={"image_id": str}, on_bad_lines="skip")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        logger.warning("ignoring unreadable %s; its images are converted again", path)
        return pd.DataFrame(columns=list(META_COLUMNS))
    if not set(META_COLUMNS) <= set(df.columns):
        logger.warning("ignoring %s: it lacks some of the columns %s", path, list(META_COLUMNS))
        return pd.DataFrame(columns=list(META_COLUMNS))
    complete = ["image_id", "width", "height", "png_width", "png_height", "transfer_syntax"]
    return df.loc[:, list(META_COLUMNS)].dropna(subset=complete)


def _merge(frames: list[pd.DataFrame], out: Path) -> pd.DataFrame:
    """Rows of `frames`, the last one of each image winning, for images whose PNG exists."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=list(META_COLUMNS))
    df = pd.concat(frames, ignore_index=True).drop_duplicates("image_id", keep="last")
    return df[[png_path(out, i).is_file() for i in df.image_id]]


def _read_done(out: Path, size: int) -> pd.DataFrame:
    """meta rows of earlier runs (meta.csv, then the journal) whose PNG exists at the requested size."""
    done = _merge([_read_rows(meta_path(out)), _read_rows(out / JOURNAL)], out)
    if not len(done):
        return done
    expect = np.array([png_size(int(w), int(h), size) for w, h in zip(done.width, done.height)])
    same = (done.png_width.to_numpy() == expect[:, 0]) & (done.png_height.to_numpy() == expect[:, 1])
    return done[same]


def _pixel_settings(size: int, voi: str, percentiles) -> dict:
    return {"size": int(size), "voi": str(voi), "percentiles": [float(p) for p in percentiles]}


def _settings_of_pngs(out: Path) -> dict | None:
    """The pixel settings of the PNGs listed in meta.csv and the journal: SETTINGS; for the output of an earlier
    version without it, its config_images.yaml unless a run was stopped there; None when unknown."""
    import yaml

    try:
        return json.loads((out / SETTINGS).read_text())
    except (OSError, ValueError):
        pass
    if (out / JOURNAL).exists():
        return None
    try:
        images = yaml.safe_load(config_path(out, "images").read_text())["images"]
        return _pixel_settings(*(images[k] for k in PIXEL_KEYS))
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def _claim_settings(out: Path, wanted: dict) -> None:
    """Make `wanted` the pixel settings of `out`. PNGs converted with others are converted again: their
    config_images.yaml, meta.csv and journal are removed first, in that order, then `wanted` is recorded."""
    have = _settings_of_pngs(out)
    if have == wanted:
        return
    described = [p for p in (config_path(out, "images"), meta_path(out), out / JOURNAL) if p.exists()]
    if described:
        was = ", ".join(f"{k} {v}" for k, v in have.items()) if have else "unknown settings"
        logger.warning("the PNGs in %s were converted with %s; converting every image again with %s (meta.csv and "
                       "config_images.yaml are written when it finishes)", out, was,
                       ", ".join(f"{k} {v}" for k, v in wanted.items()))
    with writing(out / SETTINGS, _fix(out)):
        for path in described:
            path.unlink()
        with atomic_path(out / SETTINGS) as tmp:
            tmp.write_text(json.dumps(wanted) + "\n")


def check_ids(files: list[Path]) -> tuple[list[Path], list[dict]]:
    """Files with a usable, unique image id, and error rows for the others."""
    seen: dict[str, Path] = {}
    keep, errors = [], []
    for f in files:
        if not SAFE_ID.match(f.stem):
            errors.append({"file": str(f), "image_id": f.stem,
                           "reason": "file name is not a safe image id (letters, digits, '_', '-', '.'); rename it"})
        elif f.stem in seen:
            errors.append({"file": str(f), "image_id": f.stem,
                           "reason": f"duplicate image id: {seen[f.stem]} has the same name; keep one of them"})
        else:
            seen[f.stem] = f
            keep.append(f)
    return keep, errors


def _text(name: str) -> str:
    """`name` as text: the bytes of a file name that is not UTF-8 (an old archive's 'M\\xfcller.dcm', which Python
    holds as surrogates) written as \\xNN escapes, so that errors.csv and the log can show it."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _fix(out: Path) -> str:
    """What to do when a file of `out` cannot be written (a full disk, a read-only folder)."""
    return f"free some disk space or fix the permissions of {out}, then rerun the same command"


def _cannot_write(what: str, out: Path, kept: str = "") -> ArtifactError:
    return ArtifactError(f"cannot write {what}; {_fix(out)}{kept}")


def _convert_all(job, todo: list[Path], workers: int, out: Path, errors: list[dict], before: int) -> tuple[int, int]:
    """Run `job` over `todo`, journaling every converted image; returns (converted, processes).

    A PNG that cannot be written or a worker process that dies stops the run with an ArtifactError; the images
    converted until then stay in the journal for the rerun.
    """
    journal_path = out / JOURNAL
    new_journal = not journal_path.is_file() or journal_path.stat().st_size == 0
    converted, processes = 0, 1

    def kept() -> str:
        return f" (the {before + converted} image(s) converted so far are kept; it converts the rest)"

    try:
        with open(journal_path, "a", newline="") as journal, \
                process_map(job, todo, workers, ordered=False, chunksize=4) as (results, processes):
            writer = csv.DictWriter(journal, fieldnames=list(META_COLUMNS))
            if new_journal:
                writer.writeheader()
            for row in log.progress(results, total=len(todo), desc=f"images {out.name}", unit="img"):
                if "write_error" in row:
                    raise _cannot_write(row["write_error"], out, kept())
                if "reason" in row:
                    errors.append(row)
                    logger.debug("%s: %s", row["file"], row["reason"])
                else:
                    writer.writerow(row)
                    journal.flush()
                    converted += 1
    except WorkerDiedError as e:
        raise ArtifactError(f"the conversion into {out} stopped: {e.how}; rerun the same command{kept()}, with a "
                            "lower --workers if memory ran out") from None
    except OSError as e:  # the journal itself could not be written
        raise _cannot_write(f"{journal_path}: {e.strerror or e}", out, kept()) from None
    return converted, processes


@dataclass(frozen=True)
class ImagesResult:
    """What `vinbig images` did: PNGs, meta.csv and errors.csv in `out`."""

    out: Path
    converted: int  # by this run
    skipped: int  # converted before, at the same size
    errors: int  # files that could not be converted (errors.csv)
    images: int  # rows of meta.csv

    @property
    def meta_csv(self) -> Path:
        return meta_path(self.out)

    @property
    def errors_csv(self) -> Path:
        return errors_path(self.out)


def convert_images(src, out, *, size: int = 1024, workers: int = 0, voi: str = "auto",
                   percentiles=(0.5, 99.5), png_compression: int = 1, png_strategy: str = "huffman",
                   allow_errors: bool = False) -> ImagesResult:
    """Convert every DICOM under `src` into `out` (an image folder, e.g. WORK/images/train); see the module
    docstring.

    `allow_errors` is accepted for the config's sake; the caller decides the exit code from the result's
    ``errors``.
    """
    src, out = Path(src), Path(out)
    if voi not in VOI_MODES:
        raise ArtifactError(f"images.voi must be one of {VOI_MODES}, got {voi!r}")
    if not (0 <= int(png_compression) <= 9):
        raise ArtifactError(f"images.png_compression must be 0 to 9, got {png_compression}")
    if png_strategy not in PNG_STRATEGIES:
        raise ArtifactError(f"images.png_strategy must be one of {list(PNG_STRATEGIES)}, got {png_strategy!r}")
    if not src.is_dir():
        raise ArtifactError(f"--src {_text(str(src))} is not a folder; point it at the folder of .dicom files "
                            "(e.g. DATA/train)")
    if _text(str(src.resolve())) != str(src.resolve()):  # source.txt names it for the later stages
        raise ArtifactError(f"--src {_text(str(src.resolve()))} is not a UTF-8 name, which source.txt cannot record "
                            "for the later stages; rename the folder (e.g. with convmv) or move the files")
    files, errors = check_ids(find_dicoms(src))
    if not files and not errors:
        raise ArtifactError(f"no .dicom or .dcm files under {src}; check the path (make synth writes a dataset)")
    check_writable(out, folder=True)  # before any work: a file in its place, no permission, a read-only disk
    for stale in out.glob(".*.partial"):  # what atomic_path leaves of a killed run: .<name>.<pid>.partial
        if stale.name.split(".")[-2].isdigit():
            stale.unlink(missing_ok=True)
    _claim_settings(out, _pixel_settings(size, voi, percentiles))
    with writing(source_path(out), _fix(out)):
        with atomic_path(source_path(out)) as tmp:  # later stages find DATA (sample_submission.csv) from it
            tmp.write_text(f"{src.resolve()}\n")

    done = _read_done(out, size)
    done_ids = set(done.image_id)
    todo = [f for f in files if f.stem not in done_ids]
    logger.info("%d DICOM files under %s: %d already converted, %d to convert at long side %d",
                len(files), src, len(files) - len(todo), len(todo), size)

    job = partial(convert_one, out=out, size=size, voi=voi, percentiles=tuple(percentiles),
                  png_compression=png_compression, png_strategy=png_strategy)
    start = time.perf_counter()
    converted, processes = _convert_all(job, todo, workers, out, errors, len(done))
    elapsed = time.perf_counter() - start

    errors = [{k: _text(str(v)) for k, v in row.items()} for row in errors]  # names that are not UTF-8
    journal_path = out / JOURNAL
    meta = _merge([done, _read_rows(journal_path)], out).sort_values("image_id")
    with writing(meta_path(out), _fix(out)):
        write_csv(meta, meta_path(out), META_COLUMNS)
    with writing(errors_path(out), _fix(out)):
        write_csv(pd.DataFrame(errors, columns=list(ERROR_COLUMNS)).sort_values("file"), errors_path(out),
                  ERROR_COLUMNS)
    journal_path.unlink(missing_ok=True)

    rate = converted / elapsed if elapsed > 0 else 0.0
    logger.info("converted %d in %.1f s (%.1f img/s, %d process%s), skipped %d already done, %d failed; "
                "meta.csv has %d images", converted, elapsed, rate, processes, "es" if processes > 1 else "",
                len(files) - len(todo), len(errors), len(meta))
    for row in errors[:10]:
        logger.warning("could not convert %s: %s", row["file"], row["reason"])
    if len(errors) > 10:
        logger.warning("... and %d more, all listed in %s", len(errors) - 10, errors_path(out))
    return ImagesResult(out, converted, len(files) - len(todo), len(errors), len(meta))
