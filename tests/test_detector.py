"""The detector stage: YOLO labels, fold datasets, offline training with resume, OOF and test prediction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from detector import (DETECTOR_CLASSES, boxes_to_yolo, fold_dataset, label_text, unflip_boxes,
                      yolo_to_boxes)
from vinbig.artifacts import CLASS_NAMES, DETECTOR_PRED_COLUMNS, NO_FINDING, Work
from vinbig.errors import ConfigError

from conftest import T4, detector_checkpoint, gpus
from faults import damage, errors, guarded_env

TINY = ["--model", "yolov8n.yaml", "--epochs", "1", "--imgsz", "64", "--batch", "8", "--device", "cpu",
        "--workers", "0", "-q"]

# The commands of `run_offline`, run in one interpreter whose sockets refuse every connection (tests/faults.py).
RUN_COMMANDS = textwrap.dedent('''
    import json, sys

    from vinbig.app.cli import main

    for argv in json.loads(sys.argv[1]):
        rc = main(argv)
        print(f"RC {rc} {' '.join(argv[:1])}", flush=True)
''')


def run_offline(tmp_path: Path, commands: list[list[str]]) -> tuple[list[int], str]:
    """Run `commands` in one guarded interpreter; return their exit codes and the network-attempt log."""
    env, log = guarded_env(tmp_path)
    proc = subprocess.run([sys.executable, "-c", RUN_COMMANDS, json.dumps(commands)],
                          capture_output=True, text=True, env=env, timeout=900)
    codes = [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("RC ")]
    assert proc.returncode == 0, proc.stderr[-3000:]
    return codes, log.read_text() if log.exists() else ""


# --------------------------------------------------------------------------- labels


def random_boxes(rng: np.random.Generator, width: int, height: int, n: int) -> np.ndarray:
    x = np.sort(rng.uniform(0, width, size=(n, 2)), axis=1)
    y = np.sort(rng.uniform(0, height, size=(n, 2)), axis=1)
    boxes = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
    boxes[0] = [0, 0, width, height]  # the whole image: the edges must survive too
    return boxes


def test_labels_round_trip_within_a_pixel_on_any_image_size():
    """Original pixels -> YOLO label text -> ultralytics' own reading -> original pixels, 500 random images."""
    from ultralytics.utils.ops import xywhn2xyxy

    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(500):
        width, height = (int(v) for v in rng.integers(300, 3500, size=2))  # rarely square
        boxes = random_boxes(rng, width, height, int(rng.integers(1, 12)))
        classes = rng.integers(0, NO_FINDING, size=len(boxes))
        table = np.loadtxt(label_text(classes, boxes, width, height).splitlines(), ndmin=2)
        assert (table[:, 0] == classes).all()
        assert ((table[:, 1:] >= 0) & (table[:, 1:] <= 1)).all()
        back = xywhn2xyxy(table[:, 1:], w=width, h=height)
        worst = max(worst, float(np.abs(back - boxes).max()))
        np.testing.assert_allclose(yolo_to_boxes(table[:, 1:], width, height), back, atol=1e-9)
    assert worst < 1.0, worst


def test_label_of_a_wide_image_uses_width_for_x_and_height_for_y():
    xywhn = boxes_to_yolo([[100, 50, 300, 150]], width=1000, height=500)
    np.testing.assert_allclose(xywhn, [[0.2, 0.2, 0.2, 0.2]])
    assert label_text([], np.zeros((0, 4)), 1000, 500) == ""


def test_unflip_maps_a_box_found_on_the_flipped_image_back_exactly():
    rng = np.random.default_rng(1)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(20, 200, size=2))
        x0, x1 = sorted(rng.choice(w + 1, size=2, replace=False))
        y0, y1 = sorted(rng.choice(h + 1, size=2, replace=False))
        image = np.zeros((h, w), np.uint8)
        image[y0:y1, x0:x1] = 255
        ys, xs = np.nonzero(cv2.flip(image, 1))
        on_flipped = [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]  # pixel edges
        assert unflip_boxes(on_flipped, w).tolist() == [[x0, y0, x1, y1]]
    boxes = rng.integers(0, 2560, size=(20, 4)) / 4  # quarter pixels, as exact as the float flip itself
    np.testing.assert_array_equal(unflip_boxes(unflip_boxes(boxes, 640), 640), boxes)


# --------------------------------------------------------------------------- fold datasets


def test_fold_dataset_links_images_and_writes_a_label_for_every_image(work_copy):
    work = Work(work_copy.work)
    data_yaml = fold_dataset(work, 1)
    root = data_yaml.parent
    assert root == work.root / "detector" / "default" / "data" / "fold1"  # the dataset of run "default"
    data = yaml.safe_load(data_yaml.read_text())
    assert data["nc"] == 14 and list(data["names"].values()) == list(CLASS_NAMES[:14]) == list(DETECTOR_CLASSES)
    assert "path" not in data  # relative to the yaml: the work folder can move

    folds = pd.read_csv(work.folds, dtype={"image_id": str})
    labels = pd.read_csv(work.labels, dtype={"image_id": str})
    meta = pd.read_csv(work.images("train") / "meta.csv", dtype={"image_id": str}).set_index("image_id")
    for subset, ids in (("train", folds.image_id[folds.fold != 1]), ("val", folds.image_id[folds.fold == 1])):
        pngs = sorted(p.stem for p in (root / "images" / subset).iterdir())
        assert pngs == sorted(ids)
        for image_id in ids:
            link = root / "images" / subset / f"{image_id}.png"
            assert link.is_symlink() and not os.path.isabs(os.readlink(link))
            assert link.resolve() == (work.images("train") / f"{image_id}.png").resolve()
            rows = labels[(labels.image_id == image_id) & (labels.class_id != NO_FINDING)]
            text = (root / "labels" / subset / f"{image_id}.txt").read_text()
            assert len(text.splitlines()) == len(rows)  # empty file for a "No finding" image
            if len(rows):
                table = np.loadtxt(text.splitlines(), ndmin=2)
                back = yolo_to_boxes(table[:, 1:], *meta.loc[image_id, ["width", "height"]])
                np.testing.assert_allclose(back, rows[["x_min", "y_min", "x_max", "y_max"]], atol=0.01)
                assert sorted(table[:, 0].astype(int)) == sorted(rows.class_id)


def test_fold_dataset_is_reused_until_its_inputs_change_and_ultralytics_accepts_it(work_copy):
    import detector._offline  # noqa: F401  (ultralytics offline before it is imported)
    from ultralytics.data.utils import check_det_dataset

    work = Work(work_copy.work)
    data_yaml = fold_dataset(work, 0)
    stamp = (data_yaml.parent / "source.sha1").read_text()
    (data_yaml.parent / "marker").write_text("kept while nothing changes")
    assert fold_dataset(work, 0) == data_yaml and (data_yaml.parent / "marker").exists()
    (data_yaml.parent / "marker").unlink()  # a file vinbig did not write stops a rebuild (test_no_foreign_deletes.py)

    labels = pd.read_csv(work.labels, dtype={"image_id": str})
    labels.loc[labels.class_id != NO_FINDING, "x_max"] -= 1
    labels.to_csv(work.labels, index=False)
    fold_dataset(work, 0)
    assert (data_yaml.parent / "source.sha1").read_text() != stamp
    assert not list(data_yaml.parent.parent.glob(".*partial"))

    data = check_det_dataset(str(data_yaml))
    assert data["nc"] == 14 and Path(data["val"]).is_dir()


# --------------------------------------------------------------------------- offline patches


def test_fonts_come_from_this_machine_and_the_amp_check_needs_no_weights(tmp_path, monkeypatch):
    import detector._offline as offline
    import ultralytics.data.utils
    import ultralytics.engine.trainer
    import ultralytics.utils
    from ultralytics.nn.tasks import DetectionModel

    monkeypatch.setattr(ultralytics.utils, "USER_CONFIG_DIR", tmp_path)  # no Arial.ttf downloaded there
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        font = offline.local_font(name)
        assert font.is_file() and font.suffix == ".ttf"
    assert ultralytics.data.utils.check_font is offline.local_font
    assert ultralytics.engine.trainer.check_amp is offline.offline_check_amp
    assert offline.offline_check_amp(DetectionModel("yolov8n.yaml", nc=14, verbose=False)) is False  # CPU: no AMP
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("model, words", [
    ("weights/yolov8s.pt", "weights file .*yolov8s.pt not found. Nothing is downloaded: put the .pt file"),
    ("yolov9000.yaml", "not an ultralytics architecture nor a file; use e.g. yolov8n.yaml"),
    ("yolov8s", "neither an architecture yaml"),
])
def test_a_model_that_cannot_be_used_says_what_to_do(model, words):
    from detector._train import resolve_model

    with pytest.raises(ConfigError, match=words):
        resolve_model(model)


def test_train_args_map_the_config_to_ultralytics(tmp_path):
    from detector._train import train_args
    from vinbig.config import load_config

    cfg = load_config(overrides=["detector.device=[0, 1]", "detector.extra={cls: 1.5}"])["detector"]
    args = train_args(cfg, tmp_path / "data.yaml", tmp_path / "detector" / "fold2")
    assert args["device"] == "0,1" and args["cls"] == 1.5 and args["name"] == "fold2"
    assert args["project"] == str((tmp_path / "detector").resolve()) and Path(args["data"]).is_absolute()
    assert args["hsv_h"] == args["hsv_s"] == 0.0 and args["epochs"] == cfg["epochs"]
    with pytest.raises(ConfigError, match="must not set"):
        train_args({**cfg, "extra": {"data": "x.yaml"}}, tmp_path / "d.yaml", tmp_path / "fold0")


def test_every_training_key_of_the_detector_section_is_an_ultralytics_argument():
    """A new key of the detector section goes to ultralytics' train() under its name: it must be one of its
    arguments (or one vinbig reads itself)."""
    from detector._train import TRAIN_KEYS, VINBIG_KEYS
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from vinbig.config import settings

    assert set(TRAIN_KEYS) | set(VINBIG_KEYS) == {s.key for s in settings("detector")}
    assert set(TRAIN_KEYS) <= set(DEFAULT_CFG_DICT), sorted(set(TRAIN_KEYS) - set(DEFAULT_CFG_DICT))


@pytest.mark.parametrize("n_gpus, device, batch, expected", [
    (0, None, 16, "cpu"), (1, None, 16, "0"), (2, None, 16, "0,1"),  # null: every GPU torch sees, DDP over several
    (2, None, -1, "0"),  # AutoBatch works on one GPU: null takes GPU 0 alone, with a warning
    (2, "cpu", 16, "cpu"), (2, "1", -1, "1"), (0, [0, 1], 16, "0,1"),
])
def test_the_training_device_is_this_machines(monkeypatch, caplog, n_gpus, device, batch, expected):
    from detector._train import train_args, training_device
    from vinbig.config import load_config

    gpus(monkeypatch, *[T4] * n_gpus)
    assert training_device(device, batch) == expected
    assert ("trains on one GPU only" in caplog.text) == (batch == -1 and device is None)
    cfg = {**load_config()["detector"], "device": device, "batch": batch}
    assert train_args(cfg, Path("data.yaml"), Path("fold0"))["device"] == expected


def test_autobatch_on_two_named_gpus_is_an_error_that_says_what_to_change(monkeypatch):
    from detector._train import training_device

    with pytest.raises(ConfigError, match=r"detector.batch -1 \(AutoBatch\) works on one GPU only, and "
                                          r"detector.device is 0,1; give detector.batch a size"):
        training_device("0,1", -1)


@pytest.mark.parametrize("n_gpus, device, ckpt_batch, expected", [
    (0, None, 16, "cpu"),  # a run started on two GPUs resumes on a machine without any
    (1, None, 16, "0"),  # or on one GPU
    (2, None, -1, "0"),  # a run of AutoBatch stays on one GPU
    (2, "cpu", 16, "cpu"),  # the resuming session's config decides
])
def test_a_resumed_run_takes_the_device_of_the_session_that_resumes_it(tmp_path, monkeypatch, caplog, n_gpus, device,
                                                                        ckpt_batch, expected):
    from ultralytics.engine.model import Model

    from detector import train_fold
    from vinbig.config import load_config

    work = Work(tmp_path / "work")
    # an untrained YOLOv8n saved as ultralytics saves a run stopped after its first epoch
    detector_checkpoint(work.checkpoint("detector", 0, "last"), epoch=0, optimizer={"state": {}, "param_groups": []},
                        train_args={"batch": ckpt_batch, "device": "0,1"})
    calls = []
    monkeypatch.setattr(Model, "train", lambda self, **kwargs: calls.append(kwargs))  # the arguments are the point
    gpus(monkeypatch, *[T4] * n_gpus)
    cfg = {**load_config()["detector"], "device": device}
    with caplog.at_level("INFO"):
        assert train_fold(work, 0, cfg, resume=True).trained
    [kwargs] = calls
    assert kwargs["resume"] is True and kwargs["device"] == expected
    assert f"fold 0: resuming on device {expected} (the run started on 0,1)" in caplog.text


# --------------------------------------------------------------------------- training and prediction


@pytest.mark.slow
def test_train_and_predict_every_fold_with_the_network_blocked(work_copy, tmp_path):
    work = str(work_copy.work)
    commands = [["train-detector", "--work", work, "--fold", str(k), *TINY] + ([] if k == 0 else
                ["--set", "detector.plots=false"]) for k in range(3)]
    commands += [
        ["train-detector", "--work", work, "--fold", "0", *TINY],  # a run is there: refused
        ["predict-detector", "--work", work, "--split", "oof", "--tta", "hflip", "--imgsz", "64", "--conf", "1e-6",
         "--device", "cpu", "-q"],
        ["predict-detector", "--work", work, "--split", "test", "--imgsz", "64", "--conf", "1e-6", "--device", "cpu",
         "-q"],
    ]
    codes, network = run_offline(tmp_path, commands)
    assert network == "", f"ultralytics reached for the network:\n{network}"
    assert codes == [0, 0, 0, 2, 0, 0]

    w = Work(work)
    for k in range(3):
        run = w.fold_dir("detector", k)
        for name in ("weights/best.pt", "weights/last.pt", "results.csv", "args.yaml", "config_detector.yaml"):
            assert (run / name).is_file(), name
    assert (w.fold_dir("detector", 0) / "results.png").is_file()  # plots drawn with a local font
    saved = yaml.safe_load((w.fold_dir("detector", 1) / "config_detector.yaml").read_text())
    assert set(saved) == {"detector", "folds", "runs"} and saved["detector"]["plots"] is False
    assert saved["folds"]["outside_boxes"] == "error"  # what the dataset did with boxes beyond their image

    folds = pd.read_csv(w.folds, dtype={"image_id": str}).set_index("image_id").fold
    for split, sets in (("oof", {"none", "hflip"}), ("test", {"none"})):
        path = w.detector_preds(split)
        df = pd.read_parquet(path)
        assert list(df.columns) == list(DETECTOR_PRED_COLUMNS) and len(df) > 0 and set(df.run) == {"default"}
        assert set(df.tta) == sets and df.class_id.between(0, NO_FINDING - 1).all()
        assert df.score.between(0, 1).all()
        meta = pd.read_csv(w.images("train" if split == "oof" else "test") / "meta.csv", dtype={"image_id": str})
        df = df.merge(meta[["image_id", "width", "height"]], on="image_id", how="left")
        assert df.width.notna().all()
        assert ((df.x_min >= 0) & (df.y_min >= 0) & (df.x_max <= df.width) & (df.y_max <= df.height)).all()
        assert ((df.x_max > df.x_min) & (df.y_max > df.y_min)).all()
        if split == "oof":
            assert (df.fold == df.image_id.map(folds)).all()  # each image only by the model that did not train on it
        else:
            assert set(df.fold) == {0, 1, 2}
        assert (path.parent / f"config_detector_{split}.yaml").is_file()


@pytest.mark.slow
def test_an_interrupted_run_resumes_and_a_local_pt_starts_a_new_one(work_copy, tmp_path):
    from detector import train_fold
    from vinbig.app.cli import main
    from vinbig.config import load_config

    work = Work(work_copy.work)
    cfg = load_config(overrides=["detector.model=yolov8n.yaml", "detector.epochs=3", "detector.imgsz=64",
                                 "detector.batch=8", "detector.device=cpu", "detector.workers=0",
                                 "detector.plots=false"])["detector"]

    def stop_after_first_epoch(trainer):
        if trainer.epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_fold(work, 1, cfg, callbacks={"on_fit_epoch_end": stop_after_first_epoch})
    results = work.fold_dir("detector", 1) / "results.csv"
    assert len(pd.read_csv(results)) == 1

    # as if it had started on two GPUs: it resumes on this machine's device (detector.device null)
    last = work.fold_dir("detector", 1) / "weights" / "last.pt"
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["train_args"]["device"] == "cpu"
    ckpt["train_args"]["device"] = "0,1"
    torch.save(ckpt, last)
    assert main(["train-detector", "--work", str(work.root), "--fold", "1", "--resume", "-q"]) == 0
    assert pd.read_csv(results).epoch.tolist() == [1, 2, 3]
    finished = last.read_bytes()
    assert main(["train-detector", "--work", str(work.root), "--fold", "1", "--resume", "-q"]) == 0  # done: no-op
    assert pd.read_csv(results).epoch.tolist() == [1, 2, 3] and last.read_bytes() == finished

    # a local .pt starts a new run from its weights (not from scratch)
    from ultralytics import YOLO

    start = {}

    def first_layer(trainer):
        start["weight"] = trainer.model.state_dict()["model.0.conv.weight"].detach().clone()

    train_fold(work, 2, {**cfg, "model": str(last), "epochs": 1}, callbacks={"on_pretrain_routine_end": first_layer})
    expected = YOLO(str(last)).model.state_dict()["model.0.conv.weight"]
    assert torch.equal(start["weight"].float(), expected.float())
    args = yaml.safe_load((work.fold_dir("detector", 2) / "args.yaml").read_text())
    assert Path(args["model"]).resolve() == last.resolve()


def test_train_refuses_a_fold_that_does_not_exist_and_predict_names_the_missing_weights(work_copy, caplog):
    from vinbig.app.cli import main

    work = str(work_copy.work)
    assert main(["train-detector", "--work", work, "--fold", "7", *TINY]) == 2
    assert "fold 7 is not in" in caplog.text and "whose folds are [0, 1, 2]" in caplog.text
    assert main(["predict-detector", "--work", work, "--split", "test", "-q"]) == 2
    assert "no detector weights for fold 0" in caplog.text and "vinbig train-detector" in caplog.text
    assert f"at {Work(work).checkpoint('detector', 0)};" in caplog.text  # WORK/detector/default/fold0/weights/best.pt
    assert not Work(work).detector_preds("test").exists()


# --------------------------------------------------------------------------- faults: outputs, checkpoints, boxes


PREDICT_TEST = ["--split", "test", "--imgsz", "64", "--conf", "1e-6", "--device", "cpu", "-q"]


@pytest.mark.parametrize("fault", ["preds_is_a_file", "full_disk"])
def test_predict_checks_its_output_before_any_model_runs_and_a_failed_write_is_one_line(work_copy, caplog,
                                                                                        monkeypatch, fault):
    import errno

    import pyarrow.parquet as pq
    import ultralytics
    from vinbig.app.cli import main

    work = Work(work_copy.work)
    for k in range(3):
        detector_checkpoint(work.checkpoint("detector", k))  # untrained: predicts in a second, no training
    loaded = []
    real_yolo = ultralytics.YOLO
    monkeypatch.setattr(ultralytics, "YOLO", lambda *a, **kw: loaded.append(a) or real_yolo(*a, **kw))
    out = work.detector_preds("test")
    if fault == "preds_is_a_file":
        work.preds.write_text("not a folder")
    else:
        def full_disk(self, table, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(pq.ParquetWriter, "write_table", full_disk)

    assert main(["predict-detector", "--work", str(work.root), *PREDICT_TEST]) == 2
    [message] = errors(caplog)
    if fault == "preds_is_a_file":
        assert message.startswith(f"cannot write {out}: {work.preds} is a file, where a folder should be; move or "
                                  "rename it")
        assert loaded == [] and work.preds.read_text() == "not a folder"
    else:
        assert message.startswith(f"cannot write {out}: No space left on device; the file was left as it was: "
                                  "free space on its disk, then run 'vinbig predict-detector")
        assert len(loaded) == 3  # the models ran; the write failed
        assert not out.exists() and not list(work.preds.glob(".*partial"))


@pytest.mark.parametrize("how", ["truncated", "random"])
def test_a_damaged_checkpoint_names_the_file_and_the_fix_without_the_network(work_copy, caplog, monkeypatch, how):
    import socket

    from vinbig.app.cli import main

    attempts = []

    def blocked(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network access blocked by the test")

    for name in ("getaddrinfo", "create_connection"):
        monkeypatch.setattr(socket, name, blocked)
    monkeypatch.setattr(socket.socket, "connect", blocked)

    work = Work(work_copy.work)
    for k in range(3):
        detector_checkpoint(work.checkpoint("detector", k))  # untrained: predicts in a second, no training
    best = damage(work.checkpoint("detector", 1), how)
    assert main(["predict-detector", "--work", str(work.root), *PREDICT_TEST]) == 2
    [message] = errors(caplog)
    assert message.startswith(f"{best.resolve()} is not a readable ultralytics checkpoint (truncated, damaged or "
                              "another kind of file: ")
    assert message.endswith(f"predict with each fold's last.pt (--weights last) or train fold 1 again: "
                            f"'vinbig train-detector --work {work.root} --fold 1 --overwrite'")
    assert not work.detector_preds("test").exists()

    caplog.clear()
    last = damage(detector_checkpoint(work.checkpoint("detector", 2, "last")), how)  # torn by a killed run
    assert main(["train-detector", "--work", str(work.root), "--fold", "2", "--resume", *TINY]) == 2
    [message] = errors(caplog)
    assert message.startswith(f"{last.resolve()} is not a readable ultralytics checkpoint")
    assert message.endswith(f"the run cannot continue from it: start fold 2 over with "
                            f"'vinbig train-detector --work {work.root} --fold 2 --overwrite'")
    assert "yolo26n" not in caplog.text and attempts == []


def test_a_box_beyond_its_image_is_an_error_unless_the_config_says_clip_or_drop(work_copy, caplog, monkeypatch):
    from ultralytics.engine.model import Model
    from vinbig.app.cli import main

    trained = []
    monkeypatch.setattr(Model, "train", lambda self, **kwargs: trained.append(kwargs))  # the dataset is the point
    work = Work(work_copy.work)
    meta = pd.read_csv(work.images("train") / "meta.csv", dtype={"image_id": str}).set_index("image_id")
    labels = pd.read_csv(work.labels, dtype={"image_id": str})
    findings = labels.index[labels.class_id != NO_FINDING]
    wide, away = findings[0], findings[-1]  # two images: one box too wide, one wholly right of its image
    assert labels.image_id[wide] != labels.image_id[away]
    w_wide, h_wide = meta.loc[labels.image_id[wide], ["width", "height"]]
    w_away = meta.loc[labels.image_id[away], "width"]
    labels.loc[wide, "x_max"] = 5000
    labels.loc[away, ["x_min", "x_max"]] = [w_away + 10, w_away + 50]
    labels.to_csv(work.labels, index=False)
    train = ["train-detector", "--work", str(work.root), "--fold", "0", *TINY]

    assert main(train) == 2  # the default: an error listing them, before any training
    [message] = errors(caplog)
    assert f"{work.labels}: 2 box(es) lie beyond their image" in message
    assert (f"{labels.image_id[wide]} line {wide + 2}: ({labels.x_min[wide]:g}, {labels.y_min[wide]:g}, 5000, "
            f"{labels.y_max[wide]:g}) on {w_wide} x {h_wide} px") in message
    assert f"{labels.image_id[away]} line {away + 2}: ({w_away + 10}, " in message
    assert ("Fix them in train.csv and rerun 'vinbig folds --train-csv DATA/train.csv" in message
            and "--set folds.outside_boxes=clip" in message and "--set folds.outside_boxes=drop" in message)
    assert trained == [] and not work.detector_data(0).exists()

    caplog.clear()
    assert main([*train, "--set", "folds.outside_boxes=clip"]) == 0
    assert len(trained) == 1
    assert ("2 box(es) of" in caplog.text and "lie beyond their image and are clipped to its edge "
            "(folds.outside_boxes=clip)" in caplog.text and f"{labels.image_id[wide]} (line {wide + 2})" in caplog.text)
    assert ("1 box(es) of" in caplog.text and "under one pixel wide or high once clipped to their image; left out: "
            f"{labels.image_id[away]} (line {away + 2})" in caplog.text)  # wholly outside: nothing left of it
    root = work.detector_data(0)
    clipped = {image_id: (root / "labels" / subset / f"{image_id}.txt").read_text().splitlines()
               for subset in ("train", "val") for image_id in labels.image_id[[wide, away]]
               if (root / "labels" / subset / f"{image_id}.txt").is_file()}
    n_wide = int((labels.image_id[findings] == labels.image_id[wide]).sum())
    assert len(clipped[labels.image_id[wide]]) == n_wide  # kept, its right edge on the image's
    right_edges = [float(cx) + float(w) / 2 for _, cx, _, w, _ in (line.split() for line in
                                                                   clipped[labels.image_id[wide]])]
    assert max(right_edges) == pytest.approx(1.0, abs=1e-5)
    stamp = (root / "source.sha1").read_text()

    caplog.clear()
    fold_dataset(work, 0, "drop")
    assert "2 box(es) of" in caplog.text and "are left out (folds.outside_boxes=drop)" in caplog.text
    text = next((root / "labels" / s / f"{labels.image_id[wide]}.txt") for s in ("train", "val")
                if (root / "labels" / s / f"{labels.image_id[wide]}.txt").is_file()).read_text()
    assert len(text.splitlines()) == n_wide - 1
    assert (root / "source.sha1").read_text() != stamp  # other labels: the dataset was written again
