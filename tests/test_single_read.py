"""Test prediction reads each test PNG once for all fold models, and writes what a pass per fold would write.

The loop of before (a pass over the images per fold model, read in the main thread) is written here over the
stages' own calls: ``detector.load_models(...).predict_each`` one model at a time, written as predict-detector
writes, and ``classifier.score_fold`` one fold at a time.
"""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import classifier_checkpoint, detector_checkpoint
from vinbig.artifacts import BOX, CLASSIFIER_PRED_COLUMNS, DETECTOR_PRED_COLUMNS, Work, read_meta

FOLDS = 3  # the synthetic work folder's


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The file name of every image OpenCV decodes, in the order read."""
    names, real = [], cv2.imread
    monkeypatch.setattr(cv2, "imread", lambda path, *a: names.append(path.rsplit("/", 1)[-1]) or real(path, *a))
    return names


@pytest.fixture(scope="module")
def detector_pts(tmp_path_factory) -> list:
    """An untrained YOLOv8n per fold, each with its own random weights and head biases (untrained, every fold
    would give the same boxes; these differ, so a fold mix-up shows)."""
    return [detector_checkpoint(tmp_path_factory.mktemp("detector") / "best.pt", seed=k, perturb=True, biases=True)
            for k in range(FOLDS)]


def row_groups(path) -> list[int]:
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path)
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def per_model(dp, work: Work, split: str, cfg: dict, out, tta=(), folds=None, runs=None):
    """The file of the loop of before: a pass over the images per model (runs, then folds), each image read when
    its batch is needed, written as predict-detector writes its rows."""
    import contextlib

    runs = runs or {"default": cfg}
    meta, by_fold = dp.plan(work, split, folds)
    models = dp.load_models(work, runs, list(by_fold), tta=tta, device=cfg["device"])
    image_dir = work.images("train" if split == "oof" else "test")

    def frames():
        for run, k in models.keys:
            ids = by_fold[k]
            for start in range(0, len(ids), models.batch):
                chunk = ids[start:start + models.batch]
                images = [dp.read_png(image_dir, i) for i in chunk]
                yield from (rows for _, rows in models.predict_each(images, meta.loc[chunk], [(run, k)]))

    schema = dp.parquet_schema()
    with contextlib.closing(dp.row_groups(frames(), schema)) as tables:
        return dp.write_parquet(out, tables, schema, "vinbig predict-detector")


def install(pts: list, work: Work, run: str = "default") -> None:
    """Each fold's best.pt of run `run` in `work`, as training writes them."""
    for k, pt in enumerate(pts):
        path = work.checkpoint("detector", k, run=run)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(pt, path)


def classifier_checkpoints(work: Work, sizes=(64, 64, 48)) -> None:
    """An untrained test_efficientnet per fold with a random head (a zero head gives 0.5 everywhere); fold 2
    was trained at another size."""
    for k, imgsz in enumerate(sizes):
        classifier_checkpoint(work.checkpoint("classifier", k), seed=k, std=0.5, imgsz=imgsz)


@pytest.mark.parametrize("folds", [None, [2, 0]])
def test_detector_reads_each_test_image_once_and_writes_the_per_fold_file(work_copy, detector_pts, reads, monkeypatch,
                                                                          folds):
    import detector._predict as dp
    from vinbig.config import load_config

    work = Work(work_copy.work)
    install(detector_pts, work)
    cfg = load_config(overrides=["detector.imgsz=64", "detector.conf=0.000001", "detector.device=cpu",
                                 "detector.predict_batch=4"])["detector"]  # 6 test images: two batches
    monkeypatch.setattr(dp, "_ROW_GROUP", 50)  # several row groups, some spanning two folds
    ids = read_meta(work.images("test"))["image_id"].tolist()

    single = dp.predict(work, "test", cfg, tta=["hflip"], folds=folds, out=work.preds / "single.parquet")
    assert sorted(reads) == sorted(f"{i}.png" for i in ids)  # once each
    assert not list(work.preds.glob(".*partial"))  # the later folds' waiting rows are gone

    reads.clear()
    per_fold = per_model(dp, work, "test", cfg, work.preds / "per_fold.parquet", ["hflip"], folds)
    order = folds or list(range(FOLDS))
    assert sorted(reads) == sorted(f"{i}.png" for i in ids * len(order))

    a, b = pd.read_parquet(single.path), pd.read_parquet(per_fold)
    assert len(a) > 3 * 50 and list(a["fold"].unique()) == order and set(a["tta"]) == {"none", "hflip"}
    assert list(a.columns) == list(DETECTOR_PRED_COLUMNS) and set(a["run"]) == {"default"}
    scores = [set(a.loc[a["fold"] == k, "score"]) for k in order]
    assert not scores[0] & scores[1]  # each fold's model its own boxes
    pd.testing.assert_frame_equal(a, b, check_exact=True)  # the same rows in the same order, exactly
    assert row_groups(single.path) == row_groups(per_fold) and len(row_groups(single.path)) > 2
    assert single.path.read_bytes() == per_fold.read_bytes()
    assert (single.boxes, single.images, single.sets) == (len(b), len(ids), len(order) * 2)


@pytest.mark.parametrize("split", ["test", "oof"])
def test_the_models_of_several_runs_share_each_read_and_write_run_by_run(work_copy, detector_pts, reads, monkeypatch,
                                                                         split):
    """Two runs (their own sizes): on test every model of every run predicts each image read; on oof the runs'
    models of a fold share a pass over its images. The file is the one a pass per model writes, run by run."""
    import detector._predict as dp
    from vinbig.config import load_config

    work = Work(work_copy.work)
    install(detector_pts, work, "b")
    install(detector_pts[::-1], work, "a")  # the same weights in another order: runs differ
    cfg = load_config(overrides=["detector.imgsz=64", "detector.conf=0.000001", "detector.device=cpu",
                                 "detector.predict_batch=4"])["detector"]
    runs = {"b": cfg, "a": {**cfg, "imgsz": 96}}
    ids = read_meta(work.images("train" if split == "oof" else "test"))["image_id"].tolist()

    single = dp.predict(work, split, cfg, runs=runs, out=work.preds / "single.parquet")
    assert sorted(reads) == sorted(f"{i}.png" for i in ids)  # once each, for both runs and every fold
    assert single.sets == 2 * FOLDS

    reads.clear()
    per_model_file = per_model(dp, work, split, cfg, work.preds / "per_model.parquet", runs=runs)
    assert sorted(reads) == sorted(f"{i}.png" for i in ids * (2 if split == "oof" else 2 * FOLDS))

    a = pd.read_parquet(single.path)
    assert list(a["run"].unique()) == ["b", "a"] and list(a.loc[a["run"] == "b", "fold"].unique()) == [0, 1, 2]
    for k in range(FOLDS):  # run a's fold 2 - k has run b's fold k weights: its own image size gives other boxes
        mine = a[(a["run"] == "a") & (a["fold"] == FOLDS - 1 - k)][["image_id", "score", *BOX]].reset_index(drop=True)
        theirs = a[(a["run"] == "b") & (a["fold"] == k)][["image_id", "score", *BOX]].reset_index(drop=True)
        assert len(mine) and len(theirs) and not mine.equals(theirs)
    b = pd.read_parquet(per_model_file)
    key = ["run", "fold", "image_id", "tta", "class_id", "score", *BOX]
    pd.testing.assert_frame_equal(a.sort_values(key, ignore_index=True), b.sort_values(key, ignore_index=True),
                                  check_exact=True)  # the same rows
    pd.testing.assert_frame_equal(a, b, check_exact=True)  # the same rows in the same order, exactly
    assert single.path.read_bytes() == per_model_file.read_bytes()


def test_detector_read_error_names_the_png_and_leaves_no_partial_file(work_copy, detector_pts, monkeypatch):
    import detector._predict as dp
    from vinbig.artifacts import ArtifactError
    from vinbig.config import load_config

    work = Work(work_copy.work)
    install(detector_pts, work)
    cfg = load_config(overrides=["detector.imgsz=64", "detector.device=cpu", "detector.predict_batch=2"])["detector"]
    last = read_meta(work.images("test"))["image_id"].iloc[-1]  # in the third batch: two have been predicted
    real = cv2.imread
    monkeypatch.setattr(cv2, "imread", lambda path, *a: None if path.endswith(f"/{last}.png") else real(path, *a))
    with pytest.raises(ArtifactError, match=f"cannot read .*{last}.png .*run 'vinbig images"):
        dp.predict(work, "test", cfg)
    assert not work.detector_preds("test").exists() and not list(work.preds.glob(".*partial"))


def test_classifier_reads_each_test_image_once_and_writes_the_per_fold_file(work_copy, reads, monkeypatch):
    import classifier._predict as cp
    from vinbig.config import load_config

    work = Work(work_copy.work)
    classifier_checkpoints(work)
    cfg = load_config(overrides=["classifier.device=cpu", "classifier.workers=0", "classifier.predict_batch=4",
                                 "classifier.tta=hflip"])["classifier"]
    ids = read_meta(work.images("test"))["image_id"].tolist()

    single = cp.predict(work, "test", cfg)
    assert sorted(reads) == sorted(f"{i}.png" for i in ids)
    single_csv = single.path.read_bytes()

    reads.clear()
    from classifier import load_models, score_fold
    from vinbig.artifacts import png_path

    models = load_models(work, {"default": cfg}, list(range(FOLDS)))
    paths = [png_path(work.images("test"), i) for i in ids]
    per_fold = pd.concat([score_fold(models, "default", k, ids, paths, cfg) for k in range(FOLDS)], ignore_index=True)
    assert sorted(reads) == sorted(f"{i}.png" for i in ids * FOLDS)  # a pass per fold

    mine = single.preds[single.preds["fold"] != -1].drop(columns="run")
    key = ["fold", "image_id"]
    pd.testing.assert_frame_equal(mine.sort_values(key, ignore_index=True),
                                  per_fold.loc[:, list(mine.columns)].sort_values(key, ignore_index=True),
                                  check_exact=True, check_dtype=False)  # the same numbers, exactly
    assert single_csv.decode().splitlines()[0] == ",".join(CLASSIFIER_PRED_COLUMNS)  # image_id,run,fold,p_abnormal
    assert set(single.preds["run"]) == {"default"}
    p = single.preds.pivot(index="image_id", columns="fold", values="p_abnormal")
    assert p[0].nunique() == len(ids) and not (p[0] == p[1]).any() and not (p[0] == p[2]).any()  # folds differ


def test_a_full_disk_while_later_folds_wait_names_the_output_and_leaves_no_partial_file(work_copy, detector_pts,
                                                                                         caplog, monkeypatch):
    import errno

    import pyarrow.ipc

    from vinbig.app.cli import main

    work = Work(work_copy.work)
    install(detector_pts, work)

    def full_disk(self, table, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pyarrow.ipc.RecordBatchStreamWriter, "write_table", full_disk)
    out = work.detector_preds("test")
    assert main(["predict-detector", "--work", str(work.root), "--split", "test", "--imgsz", "64", "--conf", "1e-6",
                 "--device", "cpu", "-q"]) == 2
    [message] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert message.startswith(f"cannot write {out}: No space left on device; the file was left as it was: free "
                              "space on its disk, then run 'vinbig predict-detector")
    assert not out.exists() and not list(work.preds.glob(".*partial"))


def test_a_later_fold_waits_with_batches_of_every_kind_of_rows(tmp_path):
    """Rows of a batch where an image has no box come out of pandas with other column types (an empty image's
    ids are floats until concatenated) than those of a batch where every image has one: the rows a later fold
    keeps waiting must still go to one file and come back in order."""
    from detector._models import _rows
    from detector._predict import fold_order, parquet_schema

    meta = pd.Series({"width": 100, "height": 80, "png_width": 50, "png_height": 40})
    one_box = np.array([[1.0, 2.0, 10.0, 12.0]])

    def batch(fold: int, ids: list[str], empty: set) -> pd.DataFrame:
        return pd.concat([_rows(i, fold, "none", np.array([] if i in empty else [3]), np.array([] if i in empty
                                                                                                 else [0.5]),
                                np.zeros((0, 4)) if i in empty else one_box, meta) for i in ids], ignore_index=True)

    frames = [(0, batch(0, ["a", "b"], set())), (1, batch(1, ["a", "b"], set())),
              (0, batch(0, ["c", "d"], {"c"})), (1, batch(1, ["c", "d"], {"c"}))]
    assert frames[1][1]["image_id"].dtype != frames[3][1]["image_id"].dtype  # the two kinds of batch
    out = tmp_path / "detector_test.parquet"
    got = pd.concat(list(fold_order(iter(frames), [0, 1], out, "vinbig predict-detector", parquet_schema())))
    assert got["fold"].tolist() == [0, 0, 0, 1, 1, 1] and got["image_id"].tolist() == ["a", "b", "d"] * 2
    assert got["run"].tolist() == ["default"] * 6
    assert not list(tmp_path.glob(".*.partial"))  # the waiting rows' file is gone
