"""vinbig.options: every key of configs/default.yaml is declared once and is an option of each command that reads
it, with its meaning as help (which keys each command reads: tests/test_command_settings.py); option values are
typed like the key; the resolved config (defaults, --config, --set, options) is saved only beside outputs a command
made."""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import gradient
from vinbig.app.cli import build_parser, main
from vinbig.config import load_config, settings
from vinbig.options import resolve

# the config section of each subcommand that has options of config keys; commands that are not here take none
SECTIONS = {
    "synth": ("synth",), "images": ("images",), "folds": ("folds",),
    "train-detector": ("detector",), "predict-detector": ("detector",),
    "train-classifier": ("classifier",), "predict-classifier": ("classifier",),
    "fuse": ("fusion",), "tune": ("fusion",), "report": ("fusion",),
}
# the arguments each command requires besides the settings (never read: the parser only)
REQUIRED = {
    "synth": ["--out", "D"], "images": ["--src", "S", "--out", "O"], "folds": ["--train-csv", "T", "--out", "W"],
    "train-detector": ["--work", "W", "--fold", "0"], "predict-detector": ["--work", "W", "--split", "oof"],
    "train-classifier": ["--work", "W", "--fold", "0"], "predict-classifier": ["--work", "W", "--split", "oof"],
    "fuse": ["--work", "W", "--split", "oof"], "tune": ["--work", "W"], "report": ["--work", "W"],
}
ALIASES = {"predict-detector": {"--batch": "predict_batch"}, "predict-classifier": {"--batch": "predict_batch"}}


def subcommands() -> dict:
    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices


def option_keys(command: str) -> list:
    """The settings that are options of `command`, in the order of default.yaml."""
    dests = {a.dest for a in subcommands()[command]._actions}
    return [s for s in settings() if s.name in dests]


USES = [(command, option_keys(command)) for command in SECTIONS]


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def cfg_of(*argv: str) -> dict:
    return resolve(parse(*argv))


def help_entries(text: str) -> dict[str, str]:
    """``{flag: help}`` of every option in an argparse --help text (one entry per flag of an option)."""
    entries: list[list[str]] = []
    for line in text.splitlines():
        m = re.match(r"^  (-\S.*?)(?:\s{2,}(\S.*))?$", line)
        if m:
            entries.append([m.group(1), m.group(2) or ""])
        elif entries and line.startswith("    ") and line.strip():
            entries[-1][1] += " " + line.strip()
    return {part.split()[0]: " ".join(text.split()) for invocation, text in entries for part in invocation.split(", ")}


@pytest.fixture
def help_of(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: no wrapping inside a meaning

    def get(command: str) -> dict[str, str]:
        with pytest.raises(SystemExit) as e:
            parse(command, "--help")
        assert e.value.code == 0
        return help_entries(capsys.readouterr().out)

    return get


# --------------------------------------------------------------------------- the declaration


def test_every_key_of_the_default_config_is_declared_once():
    cfg = load_config()
    declared = settings()
    assert {s.section for s in declared} == set(cfg)
    for section, values in cfg.items():
        keys = [s.key for s in settings(section)]
        assert keys == list(values), f"{section}: the declared keys differ from default.yaml's"
    assert len({(s.section, s.key) for s in declared}) == len(declared)


@pytest.mark.parametrize("s", settings(), ids=lambda s: f"{s.section}.{s.key}")
def test_a_declaration_has_a_meaning_and_a_type_its_default_has(s):
    assert s.meaning and s.type, f"{s.section}.{s.key}: '# (type) meaning' is incomplete"
    assert s.default == load_config()[s.section][s.key]
    kinds = {"int": int, "float": float, "bool": bool, "str": str, "null": type(None)}
    allowed = []
    for kind in s.type.split("|"):
        base = kind.split("[")[0]
        allowed.append({"list": list, "dict": dict}.get(base) or kinds[base])
    assert type(s.default) in allowed, f"{s.section}.{s.key}: default {s.default!r} is not a {s.type}"


# --------------------------------------------------------------------------- one option per key


def test_each_command_has_options_of_the_sections_it_documents():
    for name in subcommands():
        assert tuple(dict.fromkeys(s.section for s in option_keys(name))) == SECTIONS.get(name, ()), name


@pytest.mark.parametrize("command, keys", USES, ids=[c for c, _ in USES])
def test_every_key_a_command_reads_is_an_option_with_its_meaning_as_help(command, keys, help_of):
    entries = help_of(command)
    aliases = ALIASES.get(command, {})
    for s in keys:
        if s.flag in aliases:  # the alias took the flag: see tests/test_command_settings.py
            continue
        assert s.flag in entries, f"vinbig {command}: no {s.flag} ({s.name})"
        assert entries[s.flag] == f"{' '.join(s.meaning.split())} ({s.declared}; default {s.text})", s.flag
        if s.type == "bool":
            assert f"--no-{s.flag[2:]}" in entries, f"vinbig {command}: no --no-{s.flag[2:]}"


@pytest.mark.parametrize("command, keys", USES, ids=[c for c, _ in USES])
def test_every_option_takes_its_default_as_written_in_default_yaml(command, keys):
    """Each option parses (to the dest section.key) the default's own text back to the default's value."""
    aliases = ALIASES.get(command, {})
    for s in keys:
        if s.flag in aliases:
            continue
        argv = [s.flag] if s.type == "bool" else [s.flag, s.text]
        args = parse(command, *REQUIRED[command], *argv)
        expected = True if s.type == "bool" else s.default
        assert getattr(args, s.name) == expected, f"vinbig {command} {' '.join(argv)}"
        assert resolve(args)[s.section][s.key] == expected


def test_commands_without_sections_take_no_setting(help_of):
    for command in ("validate", "score", "export", "demo"):
        assert "--size" not in help_of(command) and "--epochs" not in help_of(command), command


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("text", ["R8,R9", "[R8, R9]", " R8 , R9 ", "R8,R9,"])
def test_a_list_option_takes_commas_or_yaml(text):
    cfg = cfg_of("folds", *REQUIRED["folds"], "--exclude-readers", text)
    assert cfg["folds"]["exclude_readers"] == ["R8", "R9"]


def test_a_float_list_option_gives_floats():
    values = cfg_of("images", *REQUIRED["images"], "--percentiles", "1,99")["images"]["percentiles"]
    assert values == [1.0, 99.0] and all(type(v) is float for v in values)


@pytest.mark.parametrize("text, value", [("0,1", [0, 1]), ("[0, 1]", [0, 1]), ("cpu", "cpu"), ("0", 0),
                                         ("null", None)])
def test_the_detector_device_is_a_name_an_index_or_a_list(text, value):
    assert cfg_of("train-detector", *REQUIRED["train-detector"], "--device", text)["detector"]["device"] == value


def test_bool_options_switch_both_ways():
    assert cfg_of("train-detector", *REQUIRED["train-detector"], "--no-amp")["detector"]["amp"] is False
    assert cfg_of("train-detector", *REQUIRED["train-detector"], "--set", "detector.amp=false",
                  "--amp")["detector"]["amp"] is True
    assert cfg_of("images", *REQUIRED["images"], "--allow-errors")["images"]["allow_errors"] is True


def test_a_dict_option_is_yaml():
    cfg = cfg_of("folds", *REQUIRED["folds"], "--reader-weights", "{R8: 0.5}")
    assert cfg["folds"]["reader_weights"] == {"R8": 0.5}


@pytest.mark.parametrize("command", ["train-detector", "train-classifier"])
def test_a_training_command_takes_one_run(command):
    assert parse(command, *REQUIRED[command]).run is None  # the only run of the config ('default' without runs)
    assert parse(command, *REQUIRED[command], "--run", "m640").run == "m640"


@pytest.mark.parametrize("command", ["predict-detector", "predict-classifier", "fuse"])
def test_a_prediction_or_fusion_command_takes_runs_to_narrow_it_to(command):
    assert getattr(parse(command, *REQUIRED[command]), "runs", None) is None  # every run (fuse: unset)
    assert parse(command, *REQUIRED[command], "--run", "m640", "--run", "s1024").runs == ["m640", "s1024"]


@pytest.mark.parametrize("command", ["train-detector", "predict-detector", "train-classifier", "predict-classifier"])
def test_the_run_commands_save_the_runs_section_with_their_config(command):
    saves = parse(command, *REQUIRED[command]).saves
    assert set(SECTIONS[command]) <= set(saves) and "runs" in saves


@pytest.mark.parametrize("command, argv, words", [
    ("train-detector", ["--epochs", "x"], r"argument --epochs: 'x' is not an? int"),
    ("images", ["--size", "1.5"], r"argument --size: '1\.5' is not an? int"),
    ("folds", ["--iou-thr", "high"], r"argument --iou-thr: 'high' is not a float"),
    ("train-detector", ["--amp", "yes"], r"unrecognized arguments: yes"),
])
def test_a_wrong_type_is_argparses_error(command, argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        parse(command, *REQUIRED[command], *argv)
    assert e.value.code == 2
    assert re.search(words, capsys.readouterr().err)


def test_options_override_set_which_overrides_config(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("detector:\n  epochs: 5\n  imgsz: 320\n  lr0: 0.5\n")
    base = ["train-detector", *REQUIRED["train-detector"], "--config", str(config)]
    d = cfg_of(*base)["detector"]
    assert (d["epochs"], d["imgsz"], d["lr0"], d["batch"]) == (5, 320, 0.5, 16)  # the file, then the defaults
    d = cfg_of(*base, "--set", "detector.epochs=6", "--set", "detector.lr0=0.25")["detector"]
    assert (d["epochs"], d["imgsz"], d["lr0"]) == (6, 320, 0.25)
    # an option wins, wherever it stands on the command line
    d = cfg_of("train-detector", "--epochs", "7", *base[1:], "--set", "detector.epochs=6")["detector"]
    assert (d["epochs"], d["imgsz"]) == (7, 320)


# --------------------------------------------------------------------------- the saved config


def saved(path) -> dict:
    return yaml.safe_load(path.read_text())


def test_a_failed_images_run_saves_no_config(tmp_path):
    empty, out = tmp_path / "empty", tmp_path / "out"
    empty.mkdir()
    assert main(["images", "--src", str(empty), "--out", str(out), "--size", "64", "-q"]) == 2
    assert not (out / "config_images.yaml").exists()


def test_a_failed_images_run_keeps_the_config_of_the_earlier_outputs(tmp_path, dicom_factory):
    dicom_factory("a.dcm", gradient())
    src, empty, out = tmp_path / "src", tmp_path / "empty", tmp_path / "out"
    empty.mkdir()
    assert main(["images", "--src", str(src), "--out", str(out), "--size", "64", "--workers", "1", "-q"]) == 0
    assert saved(out / "config_images.yaml") == {"images": {**load_config()["images"], "size": 64, "workers": 1}}
    assert main(["images", "--src", str(empty), "--out", str(out), "--size", "999", "-q"]) == 2
    assert saved(out / "config_images.yaml")["images"]["size"] == 64  # the PNGs there are still 64 px
    assert (out / "a.png").is_file()


def test_a_failed_folds_run_keeps_the_config_of_the_earlier_outputs(tmp_path, synth_work):
    out = tmp_path / "work"
    assert main(["folds", "--train-csv", str(synth_work.data / "train.csv"), "--out", str(out), "--n-folds", "3",
                 "-q"]) == 0
    assert saved(out / "config_folds.yaml") == {"folds": {**load_config()["folds"], "n_folds": 3}}
    folds = (out / "folds.csv").read_bytes()
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,class_name\nabc,Nodule/Mass\n")
    assert main(["folds", "--train-csv", str(bad), "--out", str(out), "--n-folds", "2", "-q"]) == 2
    assert saved(out / "config_folds.yaml")["folds"]["n_folds"] == 3
    assert (out / "folds.csv").read_bytes() == folds
    # and into a fresh folder, nothing at all
    assert main(["folds", "--train-csv", str(bad), "--out", str(tmp_path / "fresh"), "-q"]) == 2
    assert not (tmp_path / "fresh" / "config_folds.yaml").exists()
