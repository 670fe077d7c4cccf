"""vinbig.config and the command line: defaults, overrides, typo suggestions, saved configs, --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vinbig.app.cli import build_parser, main
from vinbig.config import ConfigError, default_config_path, load_config, parse_override, save_config


def test_default_config_has_one_section_per_existing_stage():
    cfg = load_config()
    assert {"synth", "images", "folds"} <= set(cfg)
    assert cfg["images"]["size"] == 1024 and cfg["folds"]["n_folds"] == 5 and cfg["folds"]["seed"] == 42


def test_every_default_key_is_commented():
    for line in default_config_path().read_text().splitlines():
        if line.startswith("  ") and ":" in line and not line.strip().startswith("#"):
            assert "# (" in line, f"key without a '# (type) meaning' comment: {line!r}"


@pytest.mark.parametrize(
    "text, section, key, value",
    [
        ("images.size=512", "images", "size", 512),
        ("folds.iou_thr=0.5", "folds", "iou_thr", 0.5),
        ("fusion.high=1", "fusion", "high", 1.0),  # int accepted for a float
        ("folds.exclude_readers=[R8, R9]", "folds", "exclude_readers", ["R8", "R9"]),
        ("folds.reader_weights={R8: 0.5}", "folds", "reader_weights", {"R8": 0.5}),
        ("images.allow_errors=true", "images", "allow_errors", True),
        ("images.voi=percentile", "images", "voi", "percentile"),
    ],
)
def test_set_overrides_are_typed(text, section, key, value):
    cfg = load_config(overrides=[text])
    assert cfg[section][key] == value and type(cfg[section][key]) is type(value)


@pytest.mark.parametrize(
    "text, words",
    [
        ("folds.n_fold=3", "Similar keys: folds.n_folds"),
        ("imgaes.size=3", "Similar keys: images"),
        ("images.size=big", "images.size expects int"),
        ("images.allow_errors=1", "images.allow_errors expects bool"),
        ("folds.exclude_readers=R8", "expects list"),
        ("images.size", "--set expects section.key=value"),
    ],
)
def test_bad_overrides_say_what_to_write(text, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.").replace("[", r"\[")):
        load_config(overrides=[text])


def test_config_file_keeps_defaults_and_rejects_unknown_keys(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("images:\n  size: 640\n")
    cfg = load_config(good, overrides=["images.workers=2"])
    assert (cfg["images"]["size"], cfg["images"]["workers"], cfg["folds"]["n_folds"]) == (640, 2, 5)
    bad = tmp_path / "bad.yaml"
    bad.write_text("folds:\n  iou_threshold: 0.5\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: 'folds.iou_threshold' is not a valid key.*folds.iou_thr"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_saved_config_reloads_to_the_same_values(tmp_path):
    cfg = load_config(overrides=["images.size=300"])
    path = save_config(cfg, tmp_path / "run" / "config_images.yaml", ["images"])
    assert yaml.safe_load(path.read_text()) == {"images": cfg["images"]}
    assert load_config(path)["images"] == cfg["images"]


def test_parse_override_reads_yaml_values():
    assert parse_override("folds.seed=7") == {"folds": {"seed": 7}}


@pytest.mark.parametrize("command", ["synth", "images", "folds"])
def test_every_subcommand_has_help_with_config_and_set(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out and "--set" in out


def test_cli_rejects_a_typo_with_exit_2_and_a_suggestion(tmp_path, capsys):
    code = main(["images", "--src", str(tmp_path), "--out", str(tmp_path / "o"), "--set", "images.sise=3"])
    assert code == 2
    assert "Similar keys: images.size" in capsys.readouterr().err


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "vinbig"
    assert script.is_file(), f"no vinbig console script beside {sys.executable}; run 'make venv'"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    assert "synth" in out.stdout and "images" in out.stdout and "folds" in out.stdout
