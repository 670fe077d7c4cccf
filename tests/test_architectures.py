"""Diverse ensemble members: any ultralytics YOLO detection architecture (YOLOv8, YOLO11, YOLO26) trains, resumes,
predicts and exports through the public commands; RT-DETR and models that are not box detectors are refused in
one line before anything is written; a run's seed is its own, so that a seed ensemble is a config of two lines:
two seeds train different weights, the same seed twice the same weights (CPU training is deterministic on one
machine)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import own_work
from faults import errors
from tiny import TINY, set_args
from vinbig.app.cli import main
from vinbig.artifacts import Work

ARCHS = {"v11": "yolo11n.yaml", "y26": "yolo26n.yaml"}
RUNS = {"detector": {**{run: {"model": m} for run, m in ARCHS.items()}, "s0": {}, "s1": {"seed": 1},
                     "s0_again": {"seed": 0}},
        "classifier": {"c0": {}, "c1": {"seed": 1}, "c0_again": {"seed": 0}}}


def vinbig(*args, config=None, keys=TINY) -> int:
    return main([str(a) for a in args] + set_args(keys) + (["--config", str(config)] if config else []) + ["-q"])


def train(stage: str, *args, config=None) -> int:
    """`vinbig train-STAGE` with the tiny keys of its section."""
    return vinbig(f"train-{stage}", *args, config=config, keys=[s for s in TINY if s.startswith(f"{stage}.")])


@pytest.fixture(scope="module")
def trained(synth_work, tmp_path_factory):
    """A WORK whose fold 0 is trained for every run of RUNS: YOLO11 and YOLO26 stopped after their first of two
    epochs and resumed by `train-detector --resume`, the seed runs through `train-detector --run`."""
    from detector import train_fold
    from vinbig.config import load_config
    from vinbig.runs import run_config

    root = tmp_path_factory.mktemp("archs")
    work = own_work(synth_work, root)
    config = root / "runs.yaml"
    config.write_text(yaml.safe_dump({"runs": RUNS}))
    cfg = load_config(config, overrides=TINY)

    def stop_after_first_epoch(trainer):
        if trainer.epoch == 0:
            raise KeyboardInterrupt

    threads = torch.get_num_threads()
    torch.set_num_threads(ultralytics_threads() + 1)  # not what ultralytics sets while it trains
    for run in ARCHS:
        with pytest.raises(KeyboardInterrupt):
            train_fold(work, 0, {**run_config(cfg, "detector", run), "epochs": 2}, run=run,
                       callbacks={"on_fit_epoch_end": stop_after_first_epoch})
        assert train("detector", "--work", work, "--run", run, "--fold", 0, "--resume", config=config) == 0
    for stage in ("detector", "classifier"):
        for run in RUNS[stage]:
            if run not in ARCHS:
                assert train(stage, "--work", work, "--run", run, "--fold", 0, config=config) == 0
    after = torch.get_num_threads()
    torch.set_num_threads(threads)
    return Work(work), config, after


def ultralytics_threads() -> int:
    """The torch CPU threads ultralytics sets for the process when it trains or predicts on the CPU."""
    from ultralytics.utils import NUM_THREADS

    return NUM_THREADS


def detector_weights(work: Work, run: str) -> dict[str, torch.Tensor]:
    from detector import load_checkpoint

    ckpt = load_checkpoint(work.checkpoint("detector", 0, "last", run))
    return (ckpt.get("ema") or ckpt["model"]).float().state_dict()


def classifier_weights(work: Work, run: str) -> dict[str, torch.Tensor]:
    return torch.load(work.checkpoint("classifier", 0, "last", run), weights_only=True)["model"]


def same(a: dict, b: dict) -> bool:
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)


def test_yolo11_and_yolo26_train_resume_and_predict(trained):
    work, config, _ = trained
    for run, model in ARCHS.items():
        run_dir = work.fold_dir("detector", 0, run)
        assert pd.read_csv(run_dir / "results.csv").epoch.tolist() == [1, 2]  # one epoch, then the resumed one
        assert yaml.safe_load((run_dir / "config_detector.yaml").read_text())["detector"]["model"] == model
    assert vinbig("predict-detector", "--work", work.root, "--split", "test", "--folds", 0, "--tta", "hflip",
                  *[a for run in ARCHS for a in ("--run", run)], config=config) == 0
    preds = pd.read_parquet(work.detector_preds("test"))
    assert set(preds.run) == set(ARCHS) and set(preds.tta) == {"none", "hflip"} and len(preds) > 0
    assert preds.score.between(0, 1).all() and (preds.x_max > preds.x_min).all()


def test_an_export_of_yolo11_and_yolo26_predicts_as_the_work_folder(trained, synth_work, tmp_path):
    """The export (safetensors and the architecture yaml, no pickle) gives the boxes of the checkpoints; vinbig
    predict runs on it. The trained fold 0 stands for every fold here (an export needs them all)."""
    import cv2

    import detector
    from vinbig.config import load_config
    from vinbig.runs import run_config

    work, config, _ = trained
    copy = Work(tmp_path / "work")
    copy.root.mkdir()
    for name in ("folds.csv", "labels.csv"):
        shutil.copy(work.root / name, copy.root / name)
    for run in ARCHS:
        for k in range(3):
            copy.checkpoint("detector", k, "best", run).parent.mkdir(parents=True)
            shutil.copy(work.checkpoint("detector", 0, "best", run), copy.checkpoint("detector", k, "best", run))
    archs = yaml.safe_dump({r: RUNS["detector"][r] for r in ARCHS}, default_flow_style=True).strip()
    only = ["--set", f"runs.detector={archs}", "--set", "runs.classifier={}"]  # the runs exported
    out = tmp_path / "export"
    assert vinbig("export", "--work", copy.root, "--out", out, "--no-classifier", *only, config=config) == 0
    assert not list(out.rglob("*.pt"))

    cfg = load_config(config, overrides=TINY)
    runs = {run: run_config(cfg, "detector", run) for run in ARCHS}
    ids = sorted(p.stem for p in work.images("test").glob("*.png"))[:3]
    images = [cv2.imread(str(work.images("test") / f"{i}.png"), cv2.IMREAD_GRAYSCALE) for i in ids]
    meta = pd.read_csv(work.images("test") / "meta.csv", dtype={"image_id": str}).set_index("image_id").loc[ids]
    from_pt = detector.load_models(copy.root, runs, [0], tta=["hflip"]).predict(images, meta)
    exported = detector.load_models(out, runs, [0], tta=["hflip"], pickles=False).predict(images, meta)
    assert len(from_pt) > 0 and set(from_pt.run) == set(ARCHS)
    pd.testing.assert_frame_equal(exported, from_pt, atol=1e-4)

    dicoms = sorted((synth_work.data / "test").glob("*.dicom"))[:2]
    assert vinbig("predict", "--model", out, *dicoms, "--out", tmp_path / "second", *only, config=config) == 0
    table = pd.read_csv(tmp_path / "second" / "predictions.csv", dtype={"image_id": str})
    assert set(table.image_id) == {p.stem for p in dicoms}


def test_two_seeds_train_different_weights_and_the_same_seed_the_same(trained):
    work, _, _ = trained
    s0, s1, again = (detector_weights(work, r) for r in ("s0", "s1", "s0_again"))
    assert not same(s0, s1)
    assert same(s0, again)  # deterministic on the CPU: ultralytics' seeded RNGs and deterministic algorithms
    losses = [pd.read_csv(work.fold_dir("detector", 0, r) / "results.csv").filter(like="loss")
              for r in ("s0", "s0_again")]
    pd.testing.assert_frame_equal(*losses)
    c0, c1, c_again = (classifier_weights(work, r) for r in ("c0", "c1", "c0_again"))
    assert not same(c0, c1) and same(c0, c_again)


def test_training_and_prediction_leave_the_processs_cpu_threads_as_they_were(trained):
    """ultralytics sets torch's threads for the process; vinbig sets them back, so that the classifier trained after
    the detectors in one process (vinbig demo) computes as it does alone (other threads, other sums)."""
    work, config, after_training = trained
    assert after_training == ultralytics_threads() + 1
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(ultralytics_threads() + 1)
        assert vinbig("predict-detector", "--work", work.root, "--split", "test", "--folds", 0, "--run", "s0",
                      config=config) == 0
        assert torch.get_num_threads() == ultralytics_threads() + 1
    finally:
        torch.set_num_threads(threads)


def tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_mtime_ns for p in root.rglob("*")}


@pytest.mark.parametrize("model, words", [pytest.param(m, w, id=m) for m, w in [
    ("rtdetr-l.yaml", "detector.model rtdetr-l.yaml is an RT-DETR, which vinbig does not train (it needs "
                      "ultralytics' RTDETR model and trainer); use a YOLO detection yaml: yolov8n.yaml, yolo11n.yaml, "
                      "yolo26n.yaml"),
    ("yolov8n-seg.yaml", "detector.model yolov8n-seg.yaml is a segmentation model (its head is Segment), and vinbig "
                         "trains box detectors only; use a YOLO detection yaml"),
    ("yolo26n-pose.yaml", "is a pose model (its head is Pose26)"),
    ("yolo11n-obb.yaml", "is an oriented-box (OBB) model (its head is OBB)"),
    ("yolo11n-cls.yaml", "is a classification model (its head is Classify)"),
    ("yolov8s-worldv2.yaml", "is an open-vocabulary (YOLO-World or YOLOE) model (its head is WorldDetect)"),
    ("seg.pt", "detector.model {pt} is a segmentation model (its head is Segment)"),
]])
def test_rtdetr_and_models_that_are_not_box_detectors_are_refused_in_one_line_before_any_write(
        work_copy, tmp_path, caplog, model, words):
    work = work_copy.work
    if model.endswith(".pt"):  # a segmentation checkpoint given as the weights to start from
        import detector  # noqa: F401  (ultralytics offline first)
        from ultralytics.nn.tasks import SegmentationModel

        model = str(tmp_path / model)
        torch.save({"model": SegmentationModel("yolov8n-seg.yaml", nc=14, verbose=False).half(), "epoch": -1,
                    "optimizer": None, "train_args": {}}, model)
        words = words.format(pt=model)
    config = tmp_path / "runs.yaml"
    config.write_text(yaml.safe_dump({"runs": {"detector": {"r": {"model": model}}}}))
    before = tree(work)
    assert train("detector", "--work", work, "--run", "r", "--fold", 0, config=config) == 2
    assert train("detector", "--work", work, "--fold", 0, "--model", model) == 2
    messages = errors(caplog)
    assert len(messages) == 2 and all(words in m and "\n" not in m for m in messages), messages
    assert tree(work) == before and not (work / "detector").exists()


def test_the_demo_refuses_a_run_it_cannot_train_before_any_stage(tmp_path, caplog):
    from vinbig.app.cli import main

    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump({"runs": {"detector": {"a": {}, "b": {"model": "rtdetr-l.yaml"}}}}))
    assert main(["demo", "--out", str(tmp_path / "demo"), "--config", str(config), "-q"]) == 2
    assert [m for m in errors(caplog) if "rtdetr-l.yaml is an RT-DETR" in m and "\n" not in m]
    assert not (tmp_path / "demo").exists()  # not even the synthetic data
