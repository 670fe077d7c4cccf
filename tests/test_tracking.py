"""Experiment tracking (vinbig.tracking): every training's progress.json, the tensorboard and MLflow trackings read
back with their own readers, the OOF mAP of tune and report, no network socket with any backend, a tracker that
cannot start or fails later, ultralytics' own integrations off by its settings, and VINBIG_THREADS."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import own_work
from test_fusion import make_classifier_preds, make_detector_preds
from vinbig.app.cli import main
from vinbig.artifacts import Work
from vinbig.config import setting
from vinbig.tracking import BACKENDS, PROGRESS

DETECTOR = ["--model", "yolov8n.yaml", "--imgsz", "64", "--batch", "8", "--device", "cpu", "--workers", "0",
            "--no-plots", "-q"]
CLASSIFIER = ["--backbone", "test_efficientnet", "--imgsz", "64", "--batch", "8", "--workers", "0", "--device", "cpu",
              "--predict-batch", "16", "-q"]
# tune and report on made-up predictions of two detector runs, a and b
RUNS = ["--set", "runs.detector={a: {}, b: {}}", "--set", "fusion.workers=1", "-q"]
TUNE = [*RUNS, *(a for s in ("fusion.tune_iou_thr=[0.4]", "fusion.tune_skip_box_thr=[0.0]",
                             "fusion.tune_conf_type=[avg]", "fusion.tune_low=[0.0]", "fusion.tune_high=[1.01]",
                             "fusion.tune_run_weights=[1.0]") for a in ("--set", s))]
REPORT = [*RUNS, "--set", "fusion.report_images=1"]
PROGRESS_KEYS = {"stage", "run", "fold", "epoch", "epochs", "fitness", "metrics", "elapsed_s", "finished"}
DETECTOR_LOSSES = ("train/box_loss", "train/cls_loss", "train/dfl_loss")


def backend(name: str, *more: str) -> list[str]:
    return ["--set", f"tracking.backend={name}", *(a for s in more for a in ("--set", s))]


def progress(work: Work, stage: str, fold: int) -> dict:
    return json.loads((work.fold_dir(stage, fold) / PROGRESS).read_text())


# --------------------------------------------------------------------------- one interpreter without the network

# Imported by every Python process started with its folder on PYTHONPATH: a name lookup or an AF_INET/AF_INET6
# connection is refused and logged with the stack that made it; AF_UNIX sockets work.
GUARD = '''
import os, socket, traceback

def _log(name, args):
    with open(os.environ["NETWORK_LOG"], "a") as log:
        log.write(f"{name}{args[:2]!r}\\n" + "".join(traceback.format_stack(limit=12)) + "\\n")

def _deny(name):
    def blocked(*args, **kwargs):
        _log(name, args)
        raise OSError(f"network access blocked by the test: {name}")
    return blocked

def _inet_only(name, real):
    def guarded(self, *args, **kwargs):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _log(name, args)
            raise OSError(f"network access blocked by the test: {name}")
        return real(self, *args, **kwargs)
    return guarded

socket.getaddrinfo = _deny("getaddrinfo")
socket.create_connection = _deny("create_connection")
socket.socket.connect = _inet_only("connect", socket.socket.connect)
socket.socket.connect_ex = _inet_only("connect_ex", socket.socket.connect_ex)
'''

# each command's exit code, and the progress.json of the fold it trained right after it
RUN = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path

    from vinbig.app.cli import main

    for argv, fold_dir in json.loads(sys.argv[1]):
        rc = main(argv)
        shown = Path(fold_dir) / "progress.json" if fold_dir else None
        print("RC", json.dumps([rc, json.loads(shown.read_text()) if shown and shown.is_file() else None]), flush=True)
    print("API KEY", json.dumps(os.environ.get("ULTRALYTICS_API_KEY")), flush=True)
''')


def user_env(tmp_path: Path) -> tuple[dict, Path]:
    """A user's shell, as ultralytics and MLflow see it outside pytest and CI (they keep quiet there), with an
    Ultralytics Platform key set (its callbacks would upload with one), the network guard on, and the caches in
    `tmp_path`; and the guard's log."""
    guard = tmp_path / "guard"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(GUARD)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("YOLO_", "PYTEST_", "GITHUB_", "RUNNER_", "MLFLOW_", "WANDB_"))
           and k not in ("CI", "DO_NOT_TRACK")}
    env.update(ULTRALYTICS_API_KEY="not-a-real-key", XDG_CACHE_HOME=str(tmp_path / "cache"),
               NETWORK_LOG=str(tmp_path / "network.log"),
               PYTHONPATH=os.pathsep.join(p for p in (str(guard), env.get("PYTHONPATH")) if p))
    return env, tmp_path / "network.log"


@pytest.fixture(scope="module")
def tracked(synth_work, tmp_path_factory):
    """One guarded interpreter that trains detector folds (fold 0 without a tracker, 1 with tensorboard, 2 with
    MLflow, then fold 0 again with W&B, which is not installed) and classifier folds (0 with tensorboard, 1 and 2
    with MLflow, fold 2 one epoch then resumed for a second), then runs tune and report with MLflow on made-up
    predictions of two detector runs. Returns the work folder, each command's exit code and the progress.json after
    it, the stderr and the network log."""
    root = tmp_path_factory.mktemp("tracked")
    work = Work(own_work(synth_work, root).resolve())
    make_detector_preds(work, "oof", runs=("a", "b"))
    make_classifier_preds(work, "oof")
    w = str(work.root)

    def det(fold, epochs, name, *more):
        argv = ["train-detector", "--work", w, "--fold", str(fold), "--epochs", str(epochs), *DETECTOR, *more,
                *backend(name)]
        return [argv, str(work.fold_dir("detector", fold))]

    def cls(fold, epochs, name, *more):
        argv = ["train-classifier", "--work", w, "--fold", str(fold), "--epochs", str(epochs), *CLASSIFIER, *more,
                *backend(name)]
        return [argv, str(work.fold_dir("classifier", fold))]

    commands = [det(0, 1, "none"), det(1, 2, "tensorboard"), det(2, 2, "mlflow"), det(0, 1, "wandb", "--overwrite"),
                cls(0, 2, "tensorboard"), cls(1, 1, "mlflow"), cls(2, 1, "mlflow"), cls(2, 2, "mlflow", "--resume"),
                [["tune", "--work", w, *TUNE, *backend("mlflow")], None],
                [["report", "--work", w, *REPORT, *backend("mlflow")], None]]
    env, log = user_env(root)
    done = subprocess.run([sys.executable, "-c", RUN, json.dumps(commands)], capture_output=True, text=True, env=env,
                          timeout=900, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    results = [json.loads(line[3:]) for line in lines if line.startswith("RC ")]
    api_key = json.loads(next(line for line in lines if line.startswith("API KEY "))[8:])
    return {"work": work, "codes": [r[0] for r in results], "progress": [r[1] for r in results],
            "stderr": done.stderr, "network": log.read_text() if log.exists() else "", "api_key": api_key,
            "root": root}


@pytest.mark.slow
def test_no_backend_opens_a_network_socket(tracked):
    """Trainings with no tracker, tensorboard and MLflow (its local store), and tune and report logging to MLflow,
    with ULTRALYTICS_API_KEY set, outside pytest: no name lookup, no connection. The key is gone from the process."""
    assert tracked["network"] == "", f"something reached for the network:\n{tracked['network']}"
    wandb = 0 if importlib.util.find_spec("wandb") else 2  # not installed: the one line naming its extra
    assert tracked["codes"] == [0, 0, 0, wandb, 0, 0, 0, 0, 0, 0], tracked["stderr"][-3000:]
    assert tracked["api_key"] is None


@pytest.mark.slow
def test_a_backend_not_installed_is_one_line_naming_its_extra_before_anything_is_done(tracked):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    errors = [line for line in tracked["stderr"].splitlines() if line.startswith("E ")]
    assert len(errors) == 1, errors
    assert errors[0].endswith("vinbig: tracking.backend wandb: the wandb package is not installed; "
                              "pip install 'vinbig[wandb]', or set tracking.backend none")
    # --overwrite was given, and the run trained before is still there, as it was
    assert tracked["progress"][3] == tracked["progress"][0] and tracked["progress"][3]["finished"] is True
    assert tracked["work"].checkpoint("detector", 0, "last").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("stage, fold, epochs, losses", [("detector", 0, 1, DETECTOR_LOSSES),
                                                         ("detector", 1, 2, DETECTOR_LOSSES),
                                                         ("classifier", 0, 2, ("train/loss", "val/loss", "val/auc"))])
def test_progress_json_of_a_finished_fold(tracked, stage, fold, epochs, losses):
    p = progress(tracked["work"], stage, fold)
    assert set(p) == PROGRESS_KEYS
    assert (p["stage"], p["run"], p["fold"]) == (stage, "default", fold)
    assert p["epoch"] == p["epochs"] == epochs and p["finished"] is True
    assert isinstance(p["fitness"], float) and p["elapsed_s"] > 0
    assert set(losses) <= set(p["metrics"]) and all(isinstance(v, float) for v in p["metrics"].values())
    if stage == "classifier":
        assert p["fitness"] == p["metrics"]["val/auc"]
    # a reader never sees a half-written file: nothing is left beside it
    assert not list(tracked["work"].fold_dir(stage, fold).glob(".*partial"))


@pytest.mark.slow
def test_a_resumed_fold_adds_the_seconds_of_its_earlier_session(tracked):
    first, resumed = tracked["progress"][6], tracked["progress"][7]
    assert (first["epoch"], first["epochs"], first["finished"]) == (1, 1, True)
    assert (resumed["epoch"], resumed["epochs"], resumed["finished"]) == (2, 2, True)
    assert resumed["elapsed_s"] > first["elapsed_s"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("stage, fold, tags", [("detector", 1, DETECTOR_LOSSES),
                                               ("classifier", 0, ("train/loss", "val/auc", "lr"))])
def test_tensorboard_reads_the_event_files_of_a_fold(tracked, stage, fold, tags):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked["work"].fold_dir(stage, fold)))
    events.Reload()
    for tag in tags:
        assert [e.step for e in events.Scalars(tag)] == [1, 2], tag
    # the last point is the last epoch's figure of progress.json
    last = events.Scalars(tags[0])[-1].value
    assert last == pytest.approx(progress(tracked["work"], stage, fold)["metrics"][tags[0]], rel=1e-5)


@pytest.fixture
def mlflow_runs(tracked, monkeypatch):
    """The runs of the local MLflow store of `tracked` (a DataFrame, mlflow.search_runs) and a client of it."""
    uri = f"sqlite:///{tracked['work'].root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow

    return mlflow.search_runs(experiment_names=["vinbig"]), mlflow.MlflowClient(uri)


def steps(client, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


@pytest.mark.slow
def test_mlflow_holds_a_parent_run_per_vinbig_run_and_a_child_per_fold(tracked, mlflow_runs):
    runs, client = mlflow_runs
    work = str(tracked["work"].root)
    assert set(runs["tags.vinbig.work"]) == {work}
    parents = runs[runs["tags.mlflow.parentRunId"].isna() & (runs["tags.vinbig.stage"] != "fusion")]
    assert sorted(zip(parents["tags.vinbig.stage"], parents["tags.vinbig.run"])) == [("classifier", "default"),
                                                                                    ("detector", "default")]
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    parent_of = dict(zip(parents["tags.vinbig.stage"], parents["run_id"]))
    assert sorted(zip(children["tags.vinbig.stage"], children["tags.vinbig.fold"])) == [
        ("classifier", "1"), ("classifier", "2"), ("detector", "2")]  # the resumed fold 2 went on in its own run
    assert all(children["tags.mlflow.parentRunId"] == children["tags.vinbig.stage"].map(parent_of))
    assert set(children["status"]) == {"FINISHED"}

    detector = children[children["tags.vinbig.stage"] == "detector"].iloc[0]
    assert detector["params.detector.epochs"] == "2" and detector["params.detector.model"] == "yolov8n.yaml"
    for key in [*DETECTOR_LOSSES, "metrics/mAP50B"]:  # ultralytics' mAP50(B), as MLflow spells a name
        assert steps(client, detector["run_id"], key) == [1, 2], key
    resumed = children[(children["tags.vinbig.stage"] == "classifier") & (children["tags.vinbig.fold"] == "2")]
    assert steps(client, resumed["run_id"].iloc[0], "train/loss") == [1, 2]
    assert steps(client, resumed["run_id"].iloc[0], "val/auc") == [1, 2]


@pytest.mark.slow
def test_tune_and_report_log_the_oof_map_to_mlflow(tracked, mlflow_runs):
    runs, client = mlflow_runs
    fusion = runs[runs["tags.vinbig.stage"] == "fusion"]
    assert len(fusion) == 1 and fusion["tags.vinbig.command"].iloc[0] == "report"
    run_id = fusion["run_id"].iloc[0]
    tuned, reported = client.get_metric_history(run_id, "oof_map")  # tune's best, then report's with it
    assert 0 < tuned.value <= 1 and reported.value == pytest.approx(tuned.value, abs=1e-9)
    written = (tracked["work"].root / "fusion.yaml").read_text()
    assert f"out-of-fold mAP@0.4 {tuned.value:.4f}" in written
    for run in ("a", "b"):  # report scores each detector run alone
        [alone] = client.get_metric_history(run_id, f"oof_map/{run}")
        assert 0 <= alone.value <= 1
    assert not (tracked["root"] / "mlruns").exists()  # nothing written where the commands ran


# --------------------------------------------------------------------------- a tracker that fails


def test_a_tracker_that_cannot_start_is_one_line_before_any_epoch(work_copy, caplog, tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    work = Work(work_copy.work)
    argv = ["train-classifier", "--work", str(work.root), "--fold", "0", "--epochs", "1", *CLASSIFIER,
            *backend("mlflow", f"tracking.uri=sqlite:///{not_a_folder}/mlflow.db")]
    assert main(argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert errors[0].startswith("tracking.backend mlflow: ") and f"check tracking.uri (sqlite:///{not_a_folder}" \
        in errors[0]
    assert not work.checkpoint("classifier", 0, "last").exists() and not work.classifier_summary(0).exists()


def test_a_tracker_that_fails_later_warns_once_and_the_training_goes_on(work_copy, caplog, monkeypatch):
    """The event files cannot be written after the start (a full disk): one warning, and the training ends normally,
    its progress.json finished; it trained on VINBIG_THREADS torch threads and gave back the threads it found."""
    from torch.utils.tensorboard import SummaryWriter

    import classifier._train as train

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    threads, real_infer = [], train.infer

    def infer(*args, **kwargs):
        threads.append(torch.get_num_threads())
        return real_infer(*args, **kwargs)

    monkeypatch.setattr(SummaryWriter, "add_scalar", full_disk)
    monkeypatch.setattr(train, "infer", infer)
    monkeypatch.setenv("VINBIG_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        work = Work(work_copy.work)
        assert main(["train-classifier", "--work", str(work.root), "--fold", "0", "--epochs", "2", *CLASSIFIER,
                     *backend("tensorboard")]) == 0
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "tracking.backend tensorboard failed" in w]) == 1, warnings
    p = progress(work, "classifier", 0)
    assert (p["epoch"], p["finished"]) == (2, True)
    assert threads == [1, 1] and after == 2


# --------------------------------------------------------------------------- ultralytics' settings and threads

SETTINGS_PROBE = textwrap.dedent('''
    import json, os
    from collections import defaultdict

    import detector._offline as offline
    from ultralytics.utils import SETTINGS
    from ultralytics.utils.callbacks.base import add_integration_callbacks

    class ProbeTrainer:  # ultralytics attaches the integrations to a class named like a trainer
        callbacks = defaultdict(list)

    add_integration_callbacks(ProbeTrainer())
    attached = sorted({f.__module__ for fs in ProbeTrainer.callbacks.values() for f in fs})
    print(json.dumps({"file": str(SETTINGS.file), "settings": dict(SETTINGS), "attached": attached,
                      "on_disk": json.loads(open(SETTINGS.file).read()), "env": {
                          k: os.environ.get(k) for k in ("YOLO_CONFIG_DIR", "YOLO_OFFLINE", "YOLO_AUTOINSTALL",
                                                         "ULTRALYTICS_API_KEY")}}))
''')
INTEGRATIONS = ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")


def probe_settings(tmp_path: Path, **env) -> dict:
    base, _ = user_env(tmp_path)
    done = subprocess.run([sys.executable, "-c", SETTINGS_PROBE], capture_output=True, text=True, timeout=300,
                          env={**base, "YOLO_CONFIG_DIR": str(tmp_path / "mine"), **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_ultralytics_integrations_are_off_by_its_settings_in_vinbigs_folder(tmp_path):
    """A user's YOLO_CONFIG_DIR and a settings file there with every integration on change nothing: vinbig's
    folder holds ultralytics' settings, in its schema (no reset to its defaults, whose integrations are on), with
    every integration, the analytics and the Platform key off, and ultralytics attaches no integration."""
    mine = tmp_path / "mine" / "Ultralytics"
    mine.mkdir(parents=True)
    (mine / "settings.json").write_text(json.dumps({k: True for k in INTEGRATIONS}))
    vinbigs = tmp_path / "cache" / "vinbig" / "ultralytics" / "Ultralytics" / "settings.json"
    vinbigs.parent.mkdir(parents=True)
    vinbigs.write_text(json.dumps({"mlflow": True}))  # an earlier file, not in ultralytics' schema
    seen = probe_settings(tmp_path)
    assert Path(seen["file"]) == vinbigs and seen["env"]["YOLO_CONFIG_DIR"] == str(vinbigs.parent.parent)
    off = {**{k: False for k in INTEGRATIONS}, "sync": False, "api_key": ""}
    for settings in (seen["settings"], seen["on_disk"]):
        assert {k: settings[k] for k in off} == off
        assert {"settings_version", "datasets_dir", "runs_dir", "uuid"} <= set(settings)  # ultralytics' schema
    assert seen["settings"] == seen["on_disk"]
    assert json.loads((mine / "settings.json").read_text()) == {k: True for k in INTEGRATIONS}  # left alone
    assert seen["env"] == {**seen["env"], "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0", "ULTRALYTICS_API_KEY": None}
    # ultralytics attaches its events and Platform callbacks only, inert without a key and offline
    assert seen["attached"] == ["ultralytics.utils.callbacks.platform", "ultralytics.utils.events"]


def test_without_a_writable_cache_the_settings_go_to_a_private_temp_folder(tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    temp = tmp_path / "temp"
    temp.mkdir()
    seen = probe_settings(tmp_path, XDG_CACHE_HOME=str(blocked), TMPDIR=str(temp))
    folder = temp / f"vinbig-ultralytics-{os.getuid()}"
    assert Path(seen["file"]) == folder / "Ultralytics" / "settings.json"
    assert (folder.stat().st_mode & 0o777) == 0o700 and folder.stat().st_uid == os.getuid()
    assert not any(seen["settings"][k] for k in INTEGRATIONS)


def test_vinbig_threads_sets_a_detector_trainings_threads_up_to_ultralytics_own(monkeypatch):
    import ultralytics.utils
    import ultralytics.utils.torch_utils as torch_utils
    from ultralytics.models.yolo.detect import DetectionTrainer

    from detector._offline import OfflineDetectionTrainer, training_threads

    monkeypatch.setattr(ultralytics.utils, "NUM_THREADS", 6)  # ultralytics' own: min(8, CPUs - 1)
    for value, threads in (("2", 2), ("20", 6), ("0", 6), ("two", 6), ("", 6)):
        monkeypatch.setenv("VINBIG_THREADS", value)
        assert training_threads() == threads, value
    monkeypatch.delenv("VINBIG_THREADS")
    assert training_threads() == 6

    seen = []  # what ultralytics' select_device, in the trainer's __init__, gives torch
    monkeypatch.setattr(DetectionTrainer, "__init__", lambda self, *a, **k: seen.append(torch_utils.NUM_THREADS))
    monkeypatch.setattr(torch_utils, "NUM_THREADS", 6)
    monkeypatch.setenv("VINBIG_THREADS", "3")
    OfflineDetectionTrainer()
    monkeypatch.delenv("VINBIG_THREADS")
    OfflineDetectionTrainer()
    assert seen == [3, 6]


def test_the_declared_backends_are_the_ones_vinbig_tracking_knows():
    assert tuple(setting("tracking", "backend").range.split("|")) == BACKENDS
    assert setting("tracking", "backend").default == "none"  # off unless asked for


def test_the_epoch_log_goes_to_a_ddp_worker_with_the_callbacks_and_logs_there(tmp_path):
    """ultralytics pickles a trainer's callbacks for the workers of a DDP run: the launcher writes progress.json and
    opens no event file; rank 0 of the workers opens its own and logs each trained epoch, not the final validation's
    extra on_fit_epoch_end; the seconds count from the launcher's start."""
    import cloudpickle
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import detector._offline  # noqa: F401 (ultralytics offline, before the callbacks import it)
    from detector._train import _epochs
    from vinbig.tracking import Tracker, Tracking

    work = Work(tmp_path / "work")
    tracker = Tracker(work, "detector", "default", 0, Tracking("tensorboard"), {"epochs": 2})
    tracker.start(0, 2, backend=False)  # the DDP launcher
    tracker.t0 -= 100  # which started 100 s before its workers got to train
    fold = work.fold_dir("detector", 0)
    assert progress(work, "detector", 0)["epoch"] == 0 and not list(fold.glob("events.*"))
    worker = cloudpickle.loads(cloudpickle.dumps(_epochs(tracker)))

    trainer = SimpleNamespace(start_epoch=0, epochs=2, epoch=0, tloss=None, metrics={"metrics/mAP50(B)": 0.25},
                              lr={"lr/pg0": 0.01}, fitness=0.5,
                              label_loss_items=lambda loss, prefix: {f"{prefix}/box_loss": 1.5})
    worker["on_train_start"](trainer)
    for epoch in range(2):
        trainer.epoch = epoch
        worker["on_train_epoch_end"](trainer)
        worker["on_fit_epoch_end"](trainer)
    trainer.epoch = 2
    worker["on_fit_epoch_end"](trainer)  # ultralytics' final validation of best.pt: no epoch
    worker["on_train_end"](trainer)

    p = progress(work, "detector", 0)
    assert (p["epoch"], p["epochs"], p["finished"], p["fitness"]) == (2, 2, True, 0.5)
    assert p["metrics"] == {"train/box_loss": 1.5, "metrics/mAP50(B)": 0.25, "lr/pg0": 0.01}
    events = EventAccumulator(str(fold))
    events.Reload()
    assert [e.step for e in events.Scalars("train/box_loss")] == [1, 2]
    assert 100 <= p["elapsed_s"] < 200
