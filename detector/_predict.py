"""Predict with every fold's detector of every run: out-of-fold on the train images, all folds on the test images.

Each (run, fold, tta) triple is one prediction set; the fusion stage merges them. Boxes are mapped from the
PNG back to original DICOM pixels and clipped to the image. Rows are written to the parquet file in
row groups as they come, so memory does not grow with the number of images; the file appears only
when complete.

Each PNG is read once: on the test split every fold model of every run (and every TTA set) predicts a batch
before the next batch is read, and background threads read the batches ahead. The rows are written model by
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
                              read_meta, train_command, write_fix, writing)
from vinbig.boxes import clip, to_original
from vinbig.devices import Device, parse_device
from vinbig.parallel import prefetched

logger = logging.getLogger(__name__)

TTAS = ("none", "hflip")
_ROW_GROUP = 200_000  # rows buffered before a parquet row group is written
_PREFETCH = 2  # batches read ahead by background threads (0: read in the main thread as each batch is needed)
_SINGLE_READ = True  # models predicting the same images share each batch read (False: a pass over the images per model)


def unflip_boxes(xyxy: np.ndarray, width: float) -> np.ndarray:
    """Boxes predicted on a horizontally flipped image of `width` pixels, mapped back to the unflipped image.

    Pixel edges, not centres: column c of the flipped image is column ``width - 1 - c`` of the original, so a
    box spanning edges ``[x0, x1]`` there spans ``[width - x1, width - x0]`` here.
    """
    b = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    return np.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], axis=1)


def weights_path(work: Work, fold: int, which: str = "best", run: str = DEFAULT_RUN) -> Path:
    """The path of fold `fold`'s `which` checkpoint; it, or (for best) its exported form, must be there."""
    from detector._weights import has_weights

    path = work.checkpoint("detector", fold, which, run)
    if not (path.is_file() or which == "best" and has_weights(path)):
        what = f"fold {fold}" + (f" of run {run}" if run != DEFAULT_RUN else "")
        raise ArtifactError(f"no detector weights for {what} at {path}; run "
                            f"'{train_command(work, 'detector', fold, run)}'{work.old_layout_hint('detector')}")
    return path


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
            runs: Mapping[str, Mapping] | None = None, keep_runs: Sequence[str] = ()) -> DetectorPredictions:
    """Write ``WORK/preds/detector_{split}.parquet`` (or `out`).

    `runs` maps each run to predict to its detector section (vinbig.runs.run_config); None predicts the run
    ``default`` with `cfg`. The rows of the runs `keep_runs` in the existing file are kept as they are.
    Before any model runs, every checkpoint is loaded and the output is checked to be writable; a
    damaged checkpoint or an output that cannot be written is an error naming the file and the fix.
    """
    from detector._offline import follow_log_level  # first: ultralytics offline

    follow_log_level()
    work = Work.of(work)

    bad = sorted(set(tta) - set(TTAS))
    if bad:
        raise ValueError(f"unknown TTA {bad}; choose from {list(TTAS[1:])}")
    sets = list(dict.fromkeys(["none", *tta]))  # each set once: a repeated one would count twice in fusion
    runs = dict(runs or {DEFAULT_RUN: cfg})
    meta, by_fold = plan(work, split, folds)
    keys = [(run, k) for run in runs for k in by_fold]  # one model per run and fold; todo, models: by index
    todo = {m: by_fold[k] for m, (run, k) in enumerate(keys)}
    paths = {m: weights_path(work, k, weights, run) for m, (run, k) in enumerate(keys)}  # all present first
    out = Path(out or work.detector_preds(split))
    made_by = predict_command(work, "detector", split)
    check_output(out, made_by)
    kept = kept_rows(out, keep_runs, made_by)
    models = {m: load_fold_model(work, keys[m][1], weights, path, keys[m][0]) for m, path in paths.items()}
    schema = parquet_schema()
    device = prediction_device(cfg["device"])
    args = {run: predict_args(c, device) for run, c in runs.items()}
    image_dir = work.images("train" if split == "oof" else "test")
    counted = {"boxes": 0}

    def batches(ids: Sequence[str], pass_models: Sequence[int]) -> Iterator[tuple[int, pd.DataFrame]]:
        """``(model, rows of one batch)``: each batch of `ids` read once, predicted by every model of the pass."""
        names = [f"{keys[m][0]}/{keys[m][1]}" if len(runs) > 1 else str(keys[m][1]) for m in pass_models]
        bar = log.progress(total=len(ids), unit="img",
                           desc=f"{split} fold{'s' * (len(pass_models) > 1)} {','.join(names)}")
        batch = min(c["predict_batch"] for c in runs.values())
        for chunk, images in read_batches(image_dir, ids, batch, _PREFETCH):
            flipped = [cv2.flip(im, 1) for im in images] if "hflip" in sets else None
            for m in pass_models:
                run, fold = keys[m]
                rows = _predict_images(models[m], chunk, images, flipped, meta, fold, sets, args[run], run)
                counted["boxes"] += len(rows)
                yield m, rows
            bar.update(len(chunk))
        bar.close()
        for m in pass_models:
            del models[m]  # released once its pass is done

    def frames() -> Iterator[pd.DataFrame]:
        pairs = (item for ids, pass_models in passes(split, todo) for item in batches(ids, pass_models))
        yield from fold_order(pairs, list(todo), out, made_by, schema)  # model by model, whatever the passes
        yield from kept

    with contextlib.closing(row_groups(frames(), schema)) as tables:  # spill files go, also on an error
        write_parquet(out, tables, schema, made_by)
    n_boxes, n_images = counted["boxes"], len({i for v in todo.values() for i in v})
    logger.info("%s: %d boxes from %d model(s) (run%s %s, folds %s) x %d prediction set(s) (%s) on %d images -> %s%s",
                split, n_boxes, len(keys), "s" * (len(runs) > 1), ", ".join(runs), ",".join(map(str, by_fold)),
                len(sets), ", ".join(sets), n_images, out,
                f"; kept the rows of run(s) {', '.join(keep_runs)}" if keep_runs and out.is_file() else "")
    return DetectorPredictions(out, n_boxes, n_images, len(keys) * len(sets))


def prediction_device(device_cfg) -> Device:
    """detector.device for prediction: one device (the first GPU of several)."""
    device = parse_device(device_cfg, "detector.device")
    if len(device.gpus) > 1:
        logger.warning("prediction runs on one device; using GPU %d of %s", device.gpus[0], list(device.gpus))
        device = Device("cuda", device.gpus[:1])
    return device


def predict_args(cfg: Mapping, device: Device) -> dict:
    """ultralytics' predict() arguments of a run's detector section `cfg` on `device`."""
    args = dict(imgsz=cfg["imgsz"], conf=cfg["conf"], iou=cfg["iou"], max_det=cfg["max_det"], verbose=False,
                device=device.ultralytics)
    args.update(_fp16(args["device"]))
    return args


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


def load_fold_model(work: Work, fold: int, weights: str, path: Path, run: str = DEFAULT_RUN, *,
                    pickles: bool = True):
    """The ultralytics model of fold `fold`'s `weights` checkpoint `path` (or, for best, its exported form: an
    export copied into a work folder), loaded restricted (detector._weights); a damaged file names the fixes.
    `pickles` False (an export): the exported form only, the .pt is never read."""
    from detector._weights import load_detector

    other = "last" if weights == "best" else "best"
    return load_detector(path, f"predict with each fold's {other}.pt (--weights {other}) or train fold {fold} "
                               f"again: '{train_command(work, 'detector', fold, run)} --overwrite'", pickles=pickles)


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


def _fp16(device) -> dict:
    """The predict() argument for FP16 inference on a GPU (``quantize`` since ultralytics 8.4, ``half`` before)."""
    import torch
    from ultralytics.utils import DEFAULT_CFG_DICT

    if not torch.cuda.is_available() or str(device).lower() == "cpu":
        return {}
    return {"quantize": 16} if "quantize" in DEFAULT_CFG_DICT else {"half": True}


def passes(split: str, todo: Mapping[int, Sequence[str]]) -> list[tuple[list[str], list[int]]]:
    """The passes over the images, ``(image ids, models predicting them)``: models that predict the same images
    share a pass in which each predicts every batch read: on the test split every model, on oof the runs'
    models of one fold."""
    if not _SINGLE_READ:
        return [(list(ids), [m]) for m, ids in todo.items()]
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


def _predict_images(model, ids: Sequence[str], images: list[np.ndarray], flipped: list[np.ndarray] | None,
                    meta: pd.DataFrame, fold: int, sets: Sequence[str], args: Mapping,
                    run: str = DEFAULT_RUN) -> pd.DataFrame:
    """The rows of one fold model's prediction sets on one batch (`flipped`: the images mirrored, for hflip), image
    by image in batch order. Built with one array pass per set: a frame and a meta.csv lookup per image cost more
    than the rest of the bookkeeping (bench/bench_second_opinion.py)."""
    m = meta.loc[list(ids)]
    frames = []
    for tta in sets:
        batch = images if tta == "none" else flipped
        results = model.predict(batch, **args)
        img = np.repeat(np.arange(len(ids)), [len(r.boxes) for r in results])
        xyxy = np.concatenate([r.boxes.xyxy.cpu().numpy().reshape(-1, 4) for r in results]).astype(np.float64)
        cls = np.concatenate([r.boxes.cls.cpu().numpy() for r in results])
        conf = np.concatenate([r.boxes.conf.cpu().numpy() for r in results])
        if tta == "hflip":
            xyxy = unflip_boxes(xyxy, np.array([im.shape[1] for im in batch], dtype=np.float64)[img])
        frames.append(_rows(np.asarray(ids, dtype=object)[img], fold, tta, cls, conf, xyxy, m.iloc[img], run))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=DETECTOR_PRED_COLUMNS)


def _rows(image_id, fold: int, tta: str, cls: np.ndarray, conf: np.ndarray, xyxy_png: np.ndarray,
          m, run: str = DEFAULT_RUN) -> pd.DataFrame:
    """Rows of boxes predicted on PNGs, in original pixels, clipped, empty ones left out. `image_id` and `m` (meta.csv
    rows: width, height, png_width, png_height) are one per box, or one for all the boxes."""
    w, h, pw, ph = (np.asarray(m[c], dtype=np.float64) for c in ("width", "height", "png_width", "png_height"))
    xyxy = clip(to_original(xyxy_png, w, h, pw, ph), w, h)
    keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    ids = np.broadcast_to(np.asarray(image_id, dtype=object), keep.shape)[keep]
    return pd.DataFrame({"image_id": ids, "run": run, "fold": fold, "tta": tta, "class_id": cls[keep].astype(int),
                         "score": conf[keep], "x_min": xyxy[keep, 0], "y_min": xyxy[keep, 1],
                         "x_max": xyxy[keep, 2], "y_max": xyxy[keep, 3]})


def _table(frames: Iterable[pd.DataFrame], schema):
    import pyarrow as pa

    frames = [f for f in frames if len(f)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=DETECTOR_PRED_COLUMNS)
    return pa.Table.from_pandas(df.loc[:, list(DETECTOR_PRED_COLUMNS)], schema=schema, preserve_index=False)
