"""classifier: targets, sampler, augmentation, weights files, training, resume, torchrun, predictions, the gate."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from classifier import (SUMMARY_COLUMNS, abnormal_targets, create_model, gate_operating_point, load_weights, predict,
                        train_fold)
from classifier._data import EpochSampler, train_transform
from vinbig.artifacts import CLASSIFIER_PRED_COLUMNS, ArtifactError, Work, read_classifier_preds, read_meta
from vinbig.app.cli import main
from vinbig.config import ConfigError, load_config

from conftest import classifier_checkpoint, own_work
from faults import damage, errors

# timm's smallest EfficientNet at 64 px, data loaded in the test process
TINY_SET = {"backbone": "test_efficientnet", "imgsz": 64, "batch": 8, "workers": 0, "predict_batch": 16}
TINY = [arg for k, v in TINY_SET.items() for arg in ("--set", f"classifier.{k}={v}")]
NO_AUG = {"hflip": 0, "degrees": 0, "translate": 0, "scale": 0, "brightness": 0, "contrast": 0}
LAST_KEYS = {"model", "model_ema", "optimizer", "scheduler", "scaler", "epoch", "best_auc", "backbone", "imgsz"}


def tiny_cfg(**overrides) -> dict:
    """The classifier config section with TINY_SET and `overrides`."""
    return load_config(overrides=[f"classifier.{k}={v}" for k, v in {**TINY_SET, **overrides}.items()])["classifier"]


def summary(work, fold: int) -> pd.DataFrame:
    return pd.read_csv(Work(work).classifier_summary(fold))


def no_partial_files(root) -> bool:
    return not [p for p in root.rglob("*.partial")]


@pytest.fixture(scope="module")
def trained(synth_work, tmp_path_factory):
    """A work folder with all three folds trained for two epochs through the command line."""
    work = own_work(synth_work, tmp_path_factory.mktemp("trained"))
    for k in range(3):
        assert main(["train-classifier", "--work", str(work), "--fold", str(k), "--epochs", "2", *TINY, "-q"]) == 0
    return work


# --------------------------------------------------------------------------- data


def test_targets_follow_labels(work_copy):
    table = abnormal_targets(Work(work_copy.work))
    labels = pd.read_csv(work_copy.work / "labels.csv", dtype={"image_id": str})
    abnormal = set(labels.loc[labels["class_id"] != 14, "image_id"])
    assert list(table.columns) == ["image_id", "fold", "abnormal"]
    assert len(table) == 30 and table["image_id"].is_unique
    assert set(table.loc[table["abnormal"] == 1, "image_id"]) == abnormal
    assert table["abnormal"].sum() == 20


def test_an_image_whose_dicom_failed_is_left_out_with_a_warning(work_copy, caplog):
    images = Work(work_copy.work).images("train")
    shared = images.resolve()
    images.unlink()  # an images/train of its own, where one image failed to convert
    images.mkdir()
    meta = pd.read_csv(shared / "meta.csv", dtype={"image_id": str})
    failed = meta["image_id"].iloc[3]
    meta.drop(index=3).to_csv(images / "meta.csv", index=False)
    table = abnormal_targets(Work(work_copy.work))
    assert len(table) == 29 and failed not in set(table["image_id"])
    assert f"1 image(s) of {Work(work_copy.work).folds} have no PNG" in caplog.text and failed in caplog.text


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("n", [10, 11])
def test_sampler_shares_every_image_once(world, n):
    shares = [list(EpochSampler(np.zeros(n), world, r, seed=1)) for r in range(world)]
    assert len({len(s) for s in shares}) == 1  # every process takes as many steps
    assert set().union(*shares) == set(range(n))
    assert sum(map(len, shares)) - n < world  # padding only to a multiple of world
    sampler = EpochSampler(np.zeros(n), world, 0, seed=1)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first and list(EpochSampler(np.zeros(n), world, 0, seed=1)) == first


def test_balanced_sampler_draws_both_classes_alike():
    targets = np.r_[np.ones(100), np.zeros(900)]
    drawn = targets[list(EpochSampler(targets, balanced=True, seed=3))]
    assert len(drawn) == 1000 and 0.44 < drawn.mean() < 0.56


def test_augmentation():
    image = torch.arange(64 * 64, dtype=torch.int32).reshape(1, 64, 64).remainder(251).to(torch.uint8)
    assert train_transform(tiny_cfg(**NO_AUG)) is None
    flip = train_transform(tiny_cfg(**{**NO_AUG, "hflip": 1.0}))
    assert torch.equal(flip(image), image.flip(-1))
    out = train_transform(tiny_cfg())(image)
    assert out.dtype == torch.uint8 and out.shape == image.shape


# --------------------------------------------------------------------------- weights files


@pytest.mark.parametrize("saved", ["state_dict", "timm_checkpoint", "imagenet_head"])
def test_local_weights_load(tmp_path, caplog, saved):
    import timm

    source = timm.create_model("test_efficientnet", num_classes=1000 if saved == "imagenet_head" else 1)
    state = source.state_dict()
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": state, "epoch": 3} if saved == "timm_checkpoint" else state, path)
    model = create_model("test_efficientnet")
    with caplog.at_level(logging.INFO):
        load_weights(model, path, "test_efficientnet")
    loaded = model.state_dict()
    for key, value in state.items():
        if key.startswith("classifier."):
            continue
        assert torch.equal(loaded[key], value), key
    if saved == "imagenet_head":
        assert loaded["classifier.weight"].shape == (1, 256)
        assert "does not fit one output" in caplog.text
    else:
        assert torch.equal(loaded["classifier.weight"], state["classifier.weight"])


@pytest.mark.parametrize("content, expected", [
    (None, ["no file at", "Put the weights of a timm 'test_efficientnet' model there", "weights: null"]),
    ("test_resnet", ["does not fit the timm model 'test_efficientnet'", "missing tensors", "Set classifier.backbone"]),
    ("text", ["not a readable weights file"]),
])
def test_bad_weights_file_says_what_to_do(tmp_path, content, expected):
    import timm

    path = tmp_path / "weights.pth"
    if content == "text":
        path.write_text("not weights")
    elif content:
        torch.save(timm.create_model(content, num_classes=1).state_dict(), path)
    with pytest.raises(ConfigError) as e:
        load_weights(create_model("test_efficientnet"), path, "test_efficientnet")
    for fragment in expected:
        assert fragment in str(e.value)


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("balance", ["pos_weight", "sampler"])
def test_loss_falls(work_copy, balance):
    cfg = tiny_cfg(epochs=5, lr=0.003, warmup_epochs=0, ema=False, drop_rate=0, drop_path_rate=0, batch=5,
                   balance=balance, **NO_AUG)
    result = train_fold(work_copy.work, 1, cfg)
    loss = summary(work_copy.work, 1)["train_loss"]
    assert loss.iloc[-1] < 0.75 * loss.iloc[0], loss.tolist()
    assert result.epochs == 5 and 0 <= result.best_epoch < 5


@pytest.mark.parametrize("fold", [0, 1, 2])
def test_training_writes_summary_and_checkpoints(trained, fold):
    out = Work(trained).fold_dir("classifier", fold)
    rows = summary(trained, fold)
    assert tuple(rows.columns) == SUMMARY_COLUMNS
    assert rows["epoch"].tolist() == [0, 1]
    assert rows["val_auc"].between(0, 1).all() and (rows["lr"] > 0).all() and (rows["seconds"] >= 0).all()
    last = torch.load(out / "last.pt", weights_only=True)
    best = torch.load(out / "best.pt", weights_only=True)
    assert set(last) == LAST_KEYS and last["epoch"] == 1 and last["backbone"] == "test_efficientnet"
    assert best["imgsz"] == 64 and best["epoch"] in (0, 1) and best["auc"] == rows["val_auc"].max()
    assert (out / "config_classifier.yaml").is_file() and no_partial_files(trained)


def test_resume_continues_from_the_last_epoch(trained, work_copy, caplog):
    work = work_copy.work
    before = summary(trained, 0)
    shutil.copytree(Work(trained).fold_dir("classifier", 0), Work(work).fold_dir("classifier", 0))
    args = ["train-classifier", "--work", str(work), "--fold", "0", *TINY, "--resume"]
    assert main([*args, "--epochs", "3", "-q"]) == 0
    after = summary(work, 0)
    assert after["epoch"].tolist() == [0, 1, 2]
    pd.testing.assert_frame_equal(after.iloc[:2], before)
    assert torch.load(Work(work).fold_dir("classifier", 0) / "last.pt", weights_only=True)["epoch"] == 2
    with caplog.at_level(logging.INFO):
        assert main([*args, "--epochs", "3"]) == 0  # nothing left to do
    assert "already has all 3 epochs" in caplog.text and len(summary(work, 0)) == 3
    config = Work(work).fold_dir("classifier", 0) / "config_classifier.yaml"
    kept = config.read_text()
    assert main([*args, "--backbone", "test_resnet"]) == 2  # another model cannot continue this run
    assert "holds a 'test_efficientnet'" in caplog.text and "--backbone test_efficientnet" in caplog.text
    assert config.read_text() == kept


def test_a_trained_fold_is_kept_unless_overwrite_is_given(trained, work_copy, caplog):
    work = work_copy.work
    out = Work(work).fold_dir("classifier", 0)
    shutil.copytree(Work(trained).fold_dir("classifier", 0), out)
    before = (out / "last.pt").read_bytes()
    args = ["train-classifier", "--work", str(work), "--fold", "0", *TINY, "--epochs", "1", "-q"]
    assert main(args) == 2
    assert "already holds a run (last.pt); use --resume to continue it or --overwrite" in caplog.text
    assert (out / "last.pt").read_bytes() == before
    assert main([*args, "--overwrite"]) == 0
    assert summary(work, 0)["epoch"].tolist() == [0]


def test_torchrun_two_processes_write_one_set_of_outputs_that_one_process_resumes(work_copy):
    work = work_copy.work
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "vinbig", "train-classifier", "--work", str(work), "--fold", "0", "--epochs", "1", *TINY]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("cpu x 2 process(es)") == 1  # only rank 0 logs
    assert done.stderr.count("epoch 1/1: train_loss") == 1
    out = Work(work).fold_dir("classifier", 0)
    assert summary(work, 0)["epoch"].tolist() == [0]
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config_classifier.yaml", "last.pt", "progress.json",
                                                     "summary.csv"]
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 0
    # a run started by two processes (two GPUs) resumes in one, on this session's device
    assert main(["train-classifier", "--work", str(work), "--fold", "0", "--epochs", "2", *TINY, "--resume", "-q"]) == 0
    assert summary(work, 0)["epoch"].tolist() == [0, 1]
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("device, inside", [("cpu", None), ("cuda", True), ("cuda:1", True)])
@pytest.mark.parametrize("before", [False, True])
def test_cudnn_benchmark_is_on_for_a_cuda_classifier_and_restored_afterwards(device, inside, before, monkeypatch):
    from classifier._model import cudnn_benchmark

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", before)
    with cudnn_benchmark(torch.device(device)):
        assert torch.backends.cudnn.benchmark is (before if inside is None else inside)
    assert torch.backends.cudnn.benchmark is before
    with pytest.raises(KeyboardInterrupt), cudnn_benchmark(torch.device(device)):
        raise KeyboardInterrupt  # a stopped run restores it too
    assert torch.backends.cudnn.benchmark is before


@pytest.mark.parametrize("workers, world, expected", [(8, 1, 4), (8, 2, 2), (2, 2, 2), (8, 8, 1), (0, 2, 0)])
def test_data_loader_workers_share_the_cpus_between_torchrun_processes(monkeypatch, workers, world, expected):
    import classifier._train

    monkeypatch.setattr(classifier._train, "cpu_count", lambda: 4)
    assert classifier._train.loader_workers(workers, world) == expected


@pytest.mark.parametrize("args, expected", [
    (["--fold", "7"], "fold 7 is not in"),
    (["--fold", "0", "--resume"], "last.pt not found at"),
    (["--fold", "0", "--weights", "/nonexistent/w.pth"], "no file at /nonexistent/w.pth"),
    (["--fold", "0", "--backbone", "efficientnet-b0"], "Similar names: efficientnet_b0"),
    (["--fold", "0", "--set", "classifier.balance=oversample"], "classifier.balance 'oversample' is not one of"),
    (["--fold", "0", "--set", "classifier.sched=plateau"], "classifier.sched 'plateau' is not one of"),
    (["--fold", "0", "--set", "classifier.opt=adamx"], "classifier.opt: Optimizer adamx not found"),
    pytest.param(["--fold", "0", "--device", "cuda"], "torch sees no GPU; set classifier.device: cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")),
])
def test_train_mistakes_exit_2_with_the_fix(work_copy, caplog, args, expected):
    assert main(["train-classifier", "--work", str(work_copy.work), *TINY, "-q", *args]) == 2
    assert expected in caplog.text


# --------------------------------------------------------------------------- predictions


def test_predictions_oof_and_test(trained, caplog):
    work = Work(trained)
    folds = pd.read_csv(work.folds, dtype={"image_id": str})
    with caplog.at_level(logging.INFO):
        assert main(["predict-classifier", "--work", str(trained), "--split", "oof", *TINY]) == 0
    assert "OOF AUC" in caplog.text and "gate: below p =" in caplog.text
    oof = read_classifier_preds(work, "oof")
    assert tuple(oof.columns) == CLASSIFIER_PRED_COLUMNS
    assert oof["image_id"].is_unique and len(oof) == len(folds) and set(oof["run"]) == {"default"}
    pd.testing.assert_frame_equal(oof[["image_id", "fold"]].sort_values("image_id").reset_index(drop=True),
                                  folds.sort_values("image_id").reset_index(drop=True))  # each image by its own fold
    assert oof["p_abnormal"].between(0, 1).all()

    assert main(["predict-classifier", "--work", str(trained), "--split", "test", "--tta", "hflip", *TINY, "-q"]) == 0
    test = read_classifier_preds(work, "test")
    ids = set(read_meta(work.images("test"))["image_id"])
    assert tuple(test.columns) == CLASSIFIER_PRED_COLUMNS and test["p_abnormal"].between(0, 1).all()
    assert set(test["run"]) == {"default"}
    assert sorted(test["fold"].unique()) == [-1, 0, 1, 2]
    for _, rows in test.groupby("fold"):
        assert set(rows["image_id"]) == ids and rows["image_id"].is_unique
    per_fold = test[test["fold"] >= 0].groupby("image_id")["p_abnormal"].mean()
    mean = test[test["fold"] == -1].set_index("image_id")["p_abnormal"]
    np.testing.assert_allclose(mean.loc[per_fold.index], per_fold, rtol=1e-9)
    assert (work.preds / "config_classifier_test.yaml").is_file() and no_partial_files(trained)


def test_prediction_names_the_folds_to_train(trained, work_copy):
    work = work_copy.work
    shutil.copytree(Work(trained).fold_dir("classifier", 0), Work(work).fold_dir("classifier", 0))
    with pytest.raises(ArtifactError) as e:
        predict(work, "test", tiny_cfg())
    train = f"vinbig train-classifier --work {work}"
    for fragment in ("no trained classifier for 2 fold(s)", f"{Work(work).checkpoint('classifier', 1)} not found",
                     f"run '{train} --fold 1'; '{train} --fold 2'"):
        assert fragment in str(e.value)
    assert not Work(work).classifier_preds("test").exists()


# --------------------------------------------------------------------------- the gate


POS, NEG = [0.1, 0.2, 0.3, 0.4], [0.05, 0.15, 0.5]


@pytest.mark.parametrize("pos, neg, max_miss, threshold, missed, caught", [
    (POS, NEG, 0.0, 0.1, 0, 1),
    (POS, NEG, 0.24, 0.1, 0, 1),  # 0.24 of 4 images allows none below
    (POS, NEG, 0.25, 0.2, 1, 2),
    (POS, NEG, 0.5, 0.3, 2, 2),
    (POS, NEG, 1.0, np.inf, 4, 3),
    ([0.1, 0.1, 0.3], [0.05, 0.1], 0.34, 0.1, 0, 1),  # ties at the threshold stay above it
])
def test_gate_operating_point(pos, neg, max_miss, threshold, missed, caught):
    p = np.r_[pos, neg]
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    gate = gate_operating_point(p, y, max_miss)
    assert gate["threshold"] == threshold
    assert (gate["abnormal_missed"], gate["normal_caught"]) == (missed, caught)
    assert gate["miss_rate"] <= max_miss and gate["normal_share"] == caught / len(neg)


# --------------------------------------------------------------------------- faults: outputs and checkpoints


@pytest.fixture
def scored(monkeypatch) -> list:
    """Each fold model's scoring run, recorded."""
    import classifier._predict

    calls, real = [], classifier._predict.infer
    monkeypatch.setattr(classifier._predict, "infer", lambda *a, **kw: calls.append(kw.get("desc")) or real(*a, **kw))
    real_folds = classifier._predict.infer_folds
    monkeypatch.setattr(classifier._predict, "infer_folds",  # the test split: every fold model in one pass
                        lambda models, *a, **kw: calls.extend(models) or real_folds(models, *a, **kw))
    return calls


@pytest.mark.parametrize("fault", ["preds_is_a_file", "full_disk"])
def test_predict_checks_its_output_before_any_model_runs_and_a_failed_write_is_one_line(work_copy, caplog,
                                                                                        monkeypatch, scored, fault):
    import errno

    work = Work(work_copy.work)
    for k in range(3):
        classifier_checkpoint(work.checkpoint("classifier", k))  # untrained: no training needed to predict
    out = work.classifier_preds("test")
    if fault == "preds_is_a_file":
        work.preds.write_text("not a folder")
    else:
        def full_disk(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    assert main(["predict-classifier", "--work", str(work.root), "--split", "test", *TINY, "-q"]) == 2
    [message] = errors(caplog)
    if fault == "preds_is_a_file":
        assert message.startswith(f"cannot write {out}: {work.preds} is a file, where a folder should be; move or "
                                  "rename it")
        assert scored == [] and work.preds.read_text() == "not a folder"
    else:
        assert message == (f"cannot write {out}: No space left on device; the file was left as it was: free space "
                           f"on its disk, then run 'vinbig predict-classifier --work {work.root} --split test' again")
        assert len(scored) == 3 and not out.exists() and no_partial_files(work.root)


@pytest.mark.parametrize("how", ["truncated", "random"])
def test_a_damaged_checkpoint_names_the_file_and_the_fix(work_copy, caplog, scored, how):
    work = Work(work_copy.work)
    for k in range(3):
        classifier_checkpoint(work.checkpoint("classifier", k))  # untrained: no training needed to predict
    best = damage(work.checkpoint("classifier", 1), how)
    assert main(["predict-classifier", "--work", str(work.root), "--split", "test", *TINY, "-q"]) == 2
    [message] = errors(caplog)
    assert message.startswith(f"{best} is not a readable checkpoint (truncated, damaged or another kind of file: ")
    assert message.endswith(f"train the fold again with 'vinbig train-classifier --work {work.root} --fold 1 "
                            "--overwrite'")
    assert scored == [] and not work.classifier_preds("test").exists()  # no fold scored before the check

    caplog.clear()
    last = damage(work.checkpoint("classifier", 0, "last"), how)  # torn when the run was killed
    assert main(["train-classifier", "--work", str(work.root), "--fold", "0", "--resume", *TINY, "-q"]) == 2
    [message] = errors(caplog)
    assert message.startswith(f"{last} is not a readable checkpoint")
    assert message.endswith(f"'vinbig train-classifier --work {work.root} --fold 0 --overwrite'")
