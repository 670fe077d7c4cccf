"""Predict with every fold's detector of every run: out-of-fold on the train images, all folds on the test images.

Each (run, fold, tta) triple is one prediction set; the fusion stage merges them. Boxes are mapped from the
PNG back to original DICOM pixels and clipped to the image. Rows are written to the parquet file in
row groups as they come, so memory does not grow with the number of images; the file appears only
when complete.

The models predict in memory (detector._models: ``load_models(...).predict(images, meta)``); this module reads the
PNGs and writes the rows. Each PNG is read once: on the test split every fold model of every run (and every TTA
set) predicts a batch before the next batch is read, and background threads read the batches ahead. The rows are written model by
model, in the order a loop over the runs and folds would write them (later models' rows wait in ``.partial``
files beside the output), so the file is the same as one pass per model would make. Predicting some runs only
(``--run``) keeps the other runs' rows of the existing file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import cv2
import numpy as np
import pandas as pd

from vinbig import log
from vinbig.artifacts import (DEFAULT_RUN, DETECTOR_PRED_COLUMNS, ArtifactError, Work, atomic_path, check_fold,
                              check_output, fold_ids, images_command, png_path, predict_command, read_folds,
                              read_meta, write_fix, writing)
from vinbig.parallel import prefetched

from detector._models import check_tta, load_models, weights_path

logger = logging.getLogger(__name__)

_ROW_GROUP = 200_000  # rows buffered before a parquet row group is written
_PREFETCH = 2  # batches read ahead by background threads (0: read in the main thread as each batch is needed)


def plan(work: Work, split: str, folds: Sequence[int] | None = None) -> tuple[pd.DataFrame, dict[int, list[str]]]:
    """The image sizes of `split` and, per fold, the image ids that fold's model predicts."""
    f = read_folds(work)
    if split == "oof":
        meta = read_meta(work.images("train"))
        converted = f[f.image_id.isin(meta.image_id)]
        todo = {k: list(converted.image_id[converted.fold == k]) for k in fold_ids(f)}
    elif split == "test":
        meta = read_meta(work.images("test"))
        todo = {k: list(meta.image_id) for k in fold_ids(f)}
    else:
        raise ValueError(f"split must be oof or test, not {split!r}")
    if folds is not None:
        check_fold(work, folds, f)
        todo = {k: todo[k] for k in folds}
    empty = [k for k, ids in todo.items() if not ids]
    if split == "oof" and empty:  # every image of the fold failed to convert
        raise ArtifactError(f"fold(s) {empty} of {work.folds} have no converted image in {work.images('train')}; "
                            f"run '{images_command(work.images('train'))}' again")
    return meta.set_index("image_id"), todo


@dataclass(frozen=True)
class DetectorPredictions:
    """``path``: the parquet file written; ``boxes`` rows from ``sets`` (run x fold x TTA) over ``images`` images."""

    path: Path
    boxes: int
    images: int
    sets: int


def predict(work: Work | str | os.PathLike, split: str, cfg: Mapping, *, tta: Sequence[str] = (),
            folds: Sequence[int] | None = None, weights: str = "best", out: Path | None = None,
            runs: Mapping[str, Mapping] | None = None, keep_runs: Sequence[str] = (),
            half: bool = True) -> DetectorPredictions:
    """Write ``WORK/preds/detector_{split}.parquet`` (or `out`).

    `runs` maps each run to predict to its detector section (vinbig.runs.run_config); None predicts the run
    ``default`` with `cfg`. The rows of the runs `keep_runs` in the existing file are kept as they are.
    Before any model runs, every checkpoint is loaded and the output is checked to be writable; a
    damaged checkpoint or an output that cannot be written is an error naming the file and the fix. `half` False:
    FP32 on a GPU too (bench/gpu_check.py compares).
    """
    work = Work.of(work)
    check_tta(tta)
    runs = dict(runs or {DEFAULT_RUN: cfg})
    meta, by_fold = plan(work, split, folds)
    keys = [(run, k) for run in runs for k in by_fold]  # one model per run and fold; todo: by index
    todo = {m: by_fold[k] for m, (run, k) in enumerate(keys)}
    paths = {(run, k): weights_path(work, k, weights, run) for run, k in keys}  # all present first
    out = Path(out or work.detector_preds(split))
    made_by = predict_command(work, "detector", split)
    check_output(out, made_by)
    kept = kept_rows(out, keep_runs, made_by)
    models = load_models(work, runs, list(by_fold), weights=weights, tta=tta, device=cfg["device"], paths=paths,
                         half=half)
    schema = parquet_schema()
    image_dir = work.images("train" if split == "oof" else "test")
    counted = {"boxes": 0}

    def batches(ids: Sequence[str], pass_models: Sequence[int]) -> Iterator[tuple[int, pd.DataFrame]]:
        """``(model, rows of one batch)``: each batch of `ids` read once, predicted by every model of the pass."""
        names = [f"{keys[m][0]}/{keys[m][1]}" if len(runs) > 1 else str(keys[m][1]) for m in pass_models]
        bar = log.progress(total=len(ids), unit="img",
                           desc=f"{split} fold{'s' * (len(pass_models) > 1)} {','.join(names)}")
        index = {key: m for m, key in enumerate(keys)}
        for chunk, images in read_batches(image_dir, ids, models.batch, _PREFETCH):
            for key, rows in models.predict_each(images, meta.loc[list(chunk)], [keys[m] for m in pass_models]):
                counted["boxes"] += len(rows)
                yield index[key], rows
            bar.update(len(chunk))
        bar.close()
        for m in pass_models:
            models.release(keys[m])  # released once its pass is done

    def frames() -> Iterator[pd.DataFrame]:
        pairs = (item for ids, pass_models in passes(split, todo) for item in batches(ids, pass_models))
        yield from fold_order(pairs, list(todo), out, made_by, schema)  # model by model, whatever the passes
        yield from kept

    with contextlib.closing(row_groups(frames(), schema)) as tables:  # spill files go, also on an error
        write_parquet(out, tables, schema, made_by)
    n_boxes, n_images = counted["boxes"], len({i for v in todo.values() for i in v})
    sets = models.sets
    logger.info("%s: %d boxes from %d model(s) (run%s %s, folds %s) x %d prediction set(s) (%s) on %d images -> %s%s",
                split, n_boxes, len(keys), "s" * (len(runs) > 1), ", ".join(runs), ",".join(map(str, by_fold)),
                len(sets), ", ".join(sets), n_images, out,
                f"; kept the rows of run(s) {', '.join(keep_runs)}" if keep_runs and out.is_file() else "")
    return DetectorPredictions(out, n_boxes, n_images, len(keys) * len(sets))


def kept_rows(out: Path, keep_runs: Sequence[str], made_by: str) -> list[pd.DataFrame]:
    """The rows of the runs `keep_runs` in the existing prediction file `out` (read now, before it is replaced)."""
    if not keep_runs or not out.is_file():
        return []
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(out).names
        if "run" not in names:
            logger.warning("%s was written before named runs; the rows of runs %s are not kept: predict them again "
                           "(without --run)", out, ", ".join(keep_runs))
            return []
        df = pd.read_parquet(out, filters=[("run", "in", list(keep_runs))])
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise ArtifactError(f"{out} is not a readable parquet file ({e}), so the other runs' rows cannot be kept; "
                            f"run '{made_by}' without --run") from None
    return [df] if len(df) else []


def write_parquet(out: Path, tables: Iterable, schema, made_by: str) -> Path:
    """Write the row groups `tables` to `out` as they come, through a partial file that replaces `out` when
    complete. A failed write (a full disk, a lost permission) is an ArtifactError naming `out` and its cause."""
    import pyarrow.parquet as pq

    with atomic_path(out) as tmp:
        writer = _writing(out, made_by, pq.ParquetWriter, tmp, schema)
        try:
            for table in tables:
                _writing(out, made_by, writer.write_table, table)
        except BaseException:
            with contextlib.suppress(Exception):
                writer.close()
            raise
        _writing(out, made_by, writer.close)
    return out


def _writing(out: Path, made_by: str, fn, *args):
    """``fn(*args)``, a write to `out`: an OSError becomes one ArtifactError naming the file, the cause and the fix."""
    with writing(out, lambda e: f"the file was left as it was: {write_fix(e)}, then run '{made_by}' again"):
        return fn(*args)


def passes(split: str, todo: Mapping[int, Sequence[str]]) -> list[tuple[list[str], list[int]]]:
    """The passes over the images, ``(image ids, models predicting them)``: models that predict the same images
    share a pass in which each predicts every batch read: on the test split every model, on oof the runs'
    models of one fold."""
    groups: dict[tuple, list[int]] = {}
    for m, ids in todo.items():
        groups.setdefault(tuple(ids), []).append(m)
    return [(list(ids), models) for ids, models in groups.items()]


def read_batches(image_dir: Path, ids: Sequence[str], batch: int, prefetch: int = _PREFETCH
                 ) -> Iterator[tuple[Sequence[str], list[np.ndarray]]]:
    """``(image ids, BGR images)`` of `ids`, `batch` at a time, in order; background threads read up to
    `prefetch` batches ahead (OpenCV decodes without holding the GIL). A PNG that cannot be read is an
    ArtifactError naming it, raised when its batch is reached."""
    yield from prefetched(partial(read_png, image_dir), ids, batch, prefetch, name="read-png")


def read_png(image_dir: Path, image_id: str) -> np.ndarray:
    """The PNG of `image_id` as a BGR image (what ultralytics predicts on)."""
    path = png_path(image_dir, image_id)
    im = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if im is None:
        raise ArtifactError(f"cannot read {path} (listed in its meta.csv); run '{images_command(image_dir)}' again")
    return im


def parquet_schema():
    """The Arrow schema of WORK/preds/detector_{split}.parquet: ids as strings, fold and class int16, the score and
    the boxes float32."""
    import pyarrow as pa

    types = {"image_id": pa.string(), "run": pa.string(), "fold": pa.int16(), "tta": pa.string(),
             "class_id": pa.int16()}
    return pa.schema([(c, types.get(c, pa.float32())) for c in DETECTOR_PRED_COLUMNS])


def fold_order(frames: Iterable[tuple[int, pd.DataFrame]], models: Sequence[int], out: Path, made_by: str,
               schema) -> Iterator[pd.DataFrame]:
    """The frames of the passes, ``(model, rows)`` (a model: one run's model of one fold), model by model in
    `models` order, each model's in the order they came: the first model's pass through, the others' wait in a
    ``.partial`` file beside `out` each (removed at the end, also on an error), so memory does not grow with the
    number of images. Spilled rows take the output's `schema` (a batch with an image without boxes has other
    pandas types than one without). A failed write is an ArtifactError naming `out`, as for the output itself."""
    import pyarrow as pa

    first, waiting = models[0], {}  # model -> [spill file, its Arrow stream writer or None]

    def spill(model: int, rows: pd.DataFrame) -> None:
        entry = waiting.setdefault(model, [out.with_name(f".{out.name}.{os.getpid()}.model{model}.partial"), None])
        if len(rows):  # an empty frame adds no row (and would have no column types)
            table = pa.Table.from_pandas(rows.loc[:, list(DETECTOR_PRED_COLUMNS)], schema=schema,
                                         preserve_index=False).combine_chunks()  # one batch, one frame
            if entry[1] is None:
                entry[1] = _writing(out, made_by, pa.ipc.new_stream, str(entry[0]), table.schema)
            _writing(out, made_by, entry[1].write_table, table)

    def replay(model: int) -> Iterator[pd.DataFrame]:
        path, writer = waiting.get(model, (None, None))
        if writer is not None:
            _writing(out, made_by, writer.close)
            with pa.ipc.open_stream(str(path)) as reader:
                for batch in reader:
                    yield batch.to_pandas()

    try:
        for model, rows in frames:
            if model == first:
                yield rows
            else:
                spill(model, rows)
        for model in models[1:]:
            yield from replay(model)
    finally:
        for path, writer in waiting.values():
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def row_groups(frames: Iterable[pd.DataFrame], schema) -> Iterator:
    """Arrow tables of at least ``_ROW_GROUP`` rows (the last one fewer, maybe none) from the frames in order."""
    buffer: list[pd.DataFrame] = []
    for rows in frames:
        buffer.append(rows)
        if sum(len(b) for b in buffer) >= _ROW_GROUP:
            yield _table(buffer, schema)
            buffer = []
    yield _table(buffer, schema)


def _table(frames: Iterable[pd.DataFrame], schema):
    import pyarrow as pa

    frames = [f for f in frames if len(f)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=DETECTOR_PRED_COLUMNS)
    return pa.Table.from_pandas(df.loc[:, list(DETECTOR_PRED_COLUMNS)], schema=schema, preserve_index=False)
