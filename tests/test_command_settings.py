"""Each command takes only the settings it reads: its options and its --help are the config keys it reads, a flag it
does not take is refused in one line naming the commands that take it, a --set of a key it does not read is warned
about, and its config is resolved once (vinbig demo: from configs/demo.yaml)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import vinbig.app.cli as cli
import vinbig.config
import vinbig.options
from vinbig.app.cli import build_parser, main
from vinbig.app.demo import demo_config_path
from vinbig.artifacts import Work
from vinbig.config import setting, settings

from test_fusion import make_classifier_preds, make_detector_preds
from test_options import REQUIRED, cfg_of, help_entries, help_of, parse  # noqa: F401 (help_of: a fixture)


def keys(section: str, *names: str, but: tuple[str, ...] = ()) -> set[str]:
    """``section.key`` of `names`, or of every key of `section` but those of `but`."""
    return {f"{section}.{k}" for k in names} if names else {s.name for s in settings(section) if s.key not in but}


FUSE = keys("fusion", "iou_thr", "skip_box_thr", "conf_type", "levels", "calibration", "calibration_knots", "weights",
            "run_weights", "classifier_weights", "engine", "workers", "gate", "low", "high")
TRACKING = keys("tracking")  # the trainings log their epochs there, tune and report their OOF mAP
# The config keys each command reads, from its code: those of its own section are its options. Written out here
# once more, so that a change of a command's declaration is a change of this table too.
READS = {
    "synth": keys("synth"),
    "images": keys("images"),
    "folds": keys("folds"),
    "train-detector": keys("detector", but=("conf", "iou", "max_det", "predict_batch"))
    | keys("folds", "outside_boxes", "exclude_readers", "reader_weights", "iou_thr", "conf_type")
    | {"runs.detector"} | TRACKING,
    "predict-detector": keys("detector", "device", "imgsz", "conf", "iou", "max_det", "predict_batch")
    | {"runs.detector"},
    "train-classifier": keys("classifier", but=("tta", "gate_miss")) | {"runs.classifier"} | TRACKING,
    "predict-classifier": keys("classifier", "device", "predict_batch", "workers", "amp", "tta", "gate_miss")
    | {"runs.classifier"},
    "fuse": FUSE,
    "tune": FUSE | keys("fusion", "tune_iou_thr", "tune_skip_box_thr", "tune_conf_type", "tune_levels",
                        "tune_calibration", "tune_low", "tune_high", "tune_run_weights", "tune_run_weights_by")
    | TRACKING,
    "report": FUSE | keys("fusion", "report_images", "report_score_thr") | TRACKING,
    "runs": {"runs.detector", "runs.classifier"},
    "score": set(), "validate": set(),
    "export": {s.name for s in settings()},  # its config.yaml is the config of inference
    "demo": {s.name for s in settings()},  # each stage is given its --config and --set
    "train": {s.name for s in settings()},  # its jobs read the config it resolves
    "predict": keys("images", "size", "voi", "percentiles")
    | keys("detector", "device", "imgsz", "conf", "iou", "max_det", "predict_batch")
    | keys("classifier", "device", "amp", "tta", "predict_batch")
    | FUSE - {"fusion.workers"} | {"fusion.report_score_thr", "runs.detector", "runs.classifier"},
}
OWN = {"synth": "synth", "images": "images", "folds": "folds", "train-detector": "detector",
       "predict-detector": "detector", "train-classifier": "classifier", "predict-classifier": "classifier",
       "fuse": "fusion", "tune": "fusion", "report": "fusion"}  # the section whose keys are a command's options
ALIASES = {"predict-detector": {"--batch"}, "predict-classifier": {"--batch"}}


def commands() -> dict:
    return dict(next(a for a in build_parser()._actions if a.dest == "command").choices)


def test_the_table_names_every_command():
    assert set(READS) == set(commands())


@pytest.mark.parametrize("command", sorted(READS))
def test_a_command_reads_the_keys_of_the_table(command):
    assert commands()[command].get_default("reads") == frozenset(READS[command])


@pytest.mark.parametrize("command", sorted(READS))
def test_help_lists_the_keys_a_command_reads_and_no_other(command, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        main([command, "--help"])
    entries = help_entries(capsys.readouterr().out)
    # a setting's help ends with its type, range and default: '(int, 1..; default 40)'
    listed = {flag for flag, text in entries.items() if re.search(r"\([^()]*; default [^()]*\)$", text)}
    own = [s for s in settings() if s.name in READS[command] and s.section == OWN.get(command)]
    expected = {s.flag for s in own} | {f"--no-{s.flag[2:]}" for s in own if s.type == "bool"}
    assert listed == expected | ALIASES.get(command, set())
    dests = {a.dest for a in commands()[command]._actions if "." in a.dest}
    assert dests == {s.name for s in own}


def test_a_flag_the_command_does_not_take_is_one_line_naming_the_commands_that_take_it(capsys):
    with pytest.raises(SystemExit) as e:
        main(["predict-detector", "--epochs", "3", "--work", "W", "--split", "oof"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "usage" not in err
    assert err.startswith("vinbig predict-detector: error: --epochs is not an option of predict-detector")
    assert "train-detector, train-classifier take it" in err and "detector.epochs" in err


@pytest.mark.parametrize("argv, words", [
    (["predict-classifier", *REQUIRED["predict-classifier"], "--lr", "0.1"], "train-classifier takes it"),
    (["train-detector", *REQUIRED["train-detector"], "--conf", "0.1"], "predict-detector takes it"),
    (["fuse", *REQUIRED["fuse"], "--tune-low", "[0.1]"], "tune takes it"),
    (["train-detector", *REQUIRED["train-detector"], "--tta", "hflip"], "predict-detector, predict-classifier"),
    (["predict-detector", *REQUIRED["predict-detector"], "--foldz", "1"], "did you mean --folds?"),
    (["predict-detector", *REQUIRED["predict-detector"], "--epoch", "1"],
     "did you mean --epochs (an option of train-detector, train-classifier)?"),
    (["images", "--src", "S"], "the following arguments are required: --out"),
])
def test_every_parse_error_of_a_command_is_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and words in err, err


@pytest.mark.parametrize("stage", ["detector", "classifier"])
def test_a_prediction_commands_batch_is_its_prediction_batch(stage, help_of):
    """--batch of a prediction command is its prediction batch, as in predict-detector (predict-classifier's set
    the training batch, which it does not read)."""
    command = f"predict-{stage}"
    entries = help_of(command)
    assert entries["--batch"] == entries["--predict-batch"] == \
        f"{' '.join(setting(stage, 'predict_batch').meaning.split())} ({setting(stage, 'predict_batch').declared}; " \
        f"default {setting(stage, 'predict_batch').text})"
    args = parse(command, *REQUIRED[command], "--batch", "3")
    assert getattr(args, f"{stage}.predict_batch") == 3 and not hasattr(args, f"{stage}.batch")
    # the training batch is set with --set only there
    cfg = cfg_of(command, *REQUIRED[command], "--set", f"{stage}.batch=5", "--batch", "3")
    assert (cfg[stage]["batch"], cfg[stage]["predict_batch"]) == (5, 3)
    # the training command keeps --batch for the training batch
    assert getattr(parse(f"train-{stage}", *REQUIRED[f"train-{stage}"], "--batch", "4"), f"{stage}.batch") == 4


def ran(argv: list[str], warn: bool = True) -> dict:
    """The config `vinbig ARGV` gives its command (run as cli.run runs it, the command itself a stub)."""
    args = build_parser().parse_args(argv)
    seen = {}
    args.func = lambda args, cfg: seen.update(cfg) or 0
    assert cli.run(args, warn) == 0
    return seen


def test_a_set_of_a_key_the_command_does_not_read_warns_once_naming_the_commands_that_do(caplog):
    argv = ["predict-detector", *REQUIRED["predict-detector"], "--set", "detector.epochs=3", "--set",
            "detector.epochs=3", "--set", "detector.conf=0.01", "--set", "folds.n_folds=3"]
    cfg = ran(argv)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2, warnings
    assert "detector.epochs" in warnings[0] and "(train-detector reads it)" in warnings[0]
    assert "folds.n_folds" in warnings[1] and "(folds reads it)" in warnings[1]
    # applied all the same: the resolved config (saved with the detector section) holds it
    assert cfg["detector"]["epochs"] == 3 and cfg["detector"]["conf"] == 0.01


def test_a_step_of_a_pipeline_is_not_warned_about_the_keys_of_other_steps(caplog):
    ran(["images", *REQUIRED["images"], "--set", "detector.epochs=3"], warn=False)
    ran(["export", "--work", "W", "--out", "O", "--set", "detector.epochs=3"])  # its config.yaml holds every key
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_every_key_is_read_by_a_command():
    readers = {key for command, names in READS.items() if command not in ("demo", "export", "train")
               for key in names}
    assert readers == {s.name for s in settings()}


@pytest.mark.parametrize("function, section", [("vinbig.synth:make_dataset", "synth"),
                                               ("folds:convert_images", "images"), ("folds:make_folds", "folds")])
def test_a_command_that_reads_every_key_of_its_section_passes_each_to_its_stage(function, section):
    """synth, images and folds call their stage with ``**cfg[section]``: each key of the section is a keyword
    parameter of it (make_folds has one more, skip_box_thr, that the config leaves at its default)."""
    import importlib

    module, name = function.split(":")
    params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    assert {s.key for s in settings(section)} <= {p for p, v in params.items() if v.kind is v.KEYWORD_ONLY}


# --------------------------------------------------------------------------- what a command reads, recorded


class Recorded(dict):
    """A config section that notes each key read from it in the class's `read` (a deep copy notes there too)."""

    read: set[str] = set()

    def __init__(self, section: str, values: dict):
        super().__init__(values)
        self.section = section

    def __getitem__(self, key):
        Recorded.read.add(f"{self.section}.{key}")
        return super().__getitem__(key)

    def get(self, key, default=None):
        Recorded.read.add(f"{self.section}.{key}")
        return super().get(key, default)


@pytest.fixture
def recorded(monkeypatch):
    """The keys the next command reads from its resolved config."""
    real = cli.resolve
    monkeypatch.setattr(Recorded, "read", set())
    monkeypatch.setattr(cli, "resolve", lambda *a: {s: Recorded(s, v) for s, v in real(*a).items()})
    return Recorded.read


@pytest.mark.parametrize("argv", [["tune"], ["fuse", "--split", "oof"], ["fuse", "--split", "test"], ["report"],
                                  ["runs"]], ids=lambda a: " ".join(a))
def test_a_command_reads_the_keys_it_declares_and_no_other(argv, work_copy, recorded):
    work = Work(work_copy.work)
    for split in ("oof", "test"):  # two runs of each stage: tune weighs the runs
        make_detector_preds(work, split, runs=("a", "b"))
        make_classifier_preds(work, split, runs=("a", "b"))
    grids = ["fusion.tune_iou_thr=[0.4]", "fusion.tune_skip_box_thr=[0.0]", "fusion.tune_conf_type=[avg]",
             "fusion.tune_low=[0.0]", "fusion.tune_high=[1.01]", "fusion.report_images=1", "fusion.workers=1"]
    where = [] if argv == ["runs"] else ["--work", str(work.root)]
    sample = ["--data", str(work_copy.data)] if "test" in argv else []
    assert main([*argv, *where, *sample, "-q", *(a for s in grids for a in ("--set", s))], pipeline=True) == 0
    assert recorded == READS[argv[0]]


# --------------------------------------------------------------------------- one resolve per command


@pytest.fixture
def loads(monkeypatch):
    """The config file of each load_config call."""
    calls = []
    real = vinbig.config.load_config

    def counted(path=None, *args, **kwargs):
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(vinbig.config, "load_config", counted)
    monkeypatch.setattr(vinbig.options, "load_config", counted)
    return calls


@pytest.fixture
def stubbed_demo(monkeypatch):
    """The argument lists of the demo's steps, recorded instead of run; its summary left out."""
    import vinbig.app.demo as demo

    steps = []

    def step(argv, pipeline=False):
        assert pipeline  # a step is not warned about the keys of the other steps
        steps.append(argv)
        return 0

    monkeypatch.setattr(cli, "main", step)
    monkeypatch.setattr(demo, "summary", lambda *a, **k: {})
    monkeypatch.setattr(demo, "format_summary", lambda s: "")
    return steps


def detector_trainings(steps: list[list[str]]) -> int:
    """The detector folds the demo's steps train: each ``vinbig train --stage detector`` step's runs x folds."""
    return sum(a.count("--run") * a.count("--fold") for a in steps
               if a[0] == "train" and a[a.index("--stage") + 1] == "detector")


def test_the_demo_resolves_its_config_once_from_demo_yaml(tmp_path, loads, stubbed_demo):
    assert main(["demo", "--out", str(tmp_path), "-q", "--set", "folds.n_folds=2"]) == 0
    assert [Path(p) for p in loads] == [demo_config_path()]
    common = ["--config", str(demo_config_path()), "--set", "folds.n_folds=2", "-q"]
    assert stubbed_demo and all(argv[-len(common):] == common for argv in stubbed_demo)
    assert detector_trainings(stubbed_demo) == 2 * 2  # n_folds=2, demo.yaml's two runs


def test_the_demo_takes_another_config(tmp_path, loads, stubbed_demo):
    mine = tmp_path / "mine.yaml"
    mine.write_text("folds:\n  n_folds: 3\n")
    assert main(["demo", "--out", str(tmp_path / "d"), "-q", "--config", str(mine)]) == 0
    assert [Path(p) for p in loads] == [mine]
    assert detector_trainings(stubbed_demo) == 3  # default.yaml's one run, 3 folds


def test_runs_resolves_once(loads, capsys):
    assert main(["runs", "--stage", "detector"]) == 0
    assert loads == [None] and capsys.readouterr().out.strip() == "default"
