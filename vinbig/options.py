"""Command-line options made from the config's declaration, so that a setting is written once.

Each command declares the keys of ``configs/default.yaml`` (``key: default  # (type) meaning``) that it reads, and
gets an option for each of them, with the key's meaning as its help: ``detector.conf`` is ``--conf`` of
``predict-detector`` and of no training command. A command's resolved config is: the defaults, ``--config``, files a
command adds (``WORK/fusion.yaml``), ``--set``, then the options given. A command returns an :class:`Outcome` that
says where that config is saved, beside the outputs it made.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from vinbig.config import Setting, default_config_path, load_config, parse_override, setting, settings


@dataclass(frozen=True)
class Outcome:
    """What a command did: its exit code and where its resolved config belongs (None: not saved).

    The config is saved only when the command returns, beside the outputs it made: a command that fails
    leaves the config of the earlier outputs in place.
    """

    code: int = 0
    config: Path | None = None


def _scalar(kind: str, text: str) -> Any:
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "str":
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a YAML value: {e}") from None


def parse_value(setting: Setting, text: str) -> Any:
    """An option's text as the setting's type: ``R8,R9`` or ``[R8, R9]`` for a list, YAML for the rest."""
    bracketed = text.lstrip().startswith(("[", "{"))
    try:
        if setting.is_list and not bracketed:
            item = setting.type[5:-1] if setting.type.endswith("]") else ""
            return [_scalar(item, t.strip()) for t in text.split(",") if t.strip()]
        if "list" in setting.type and "," in text and not bracketed:  # e.g. the device: 0,1
            return [_scalar("", t.strip()) for t in text.split(",") if t.strip()]
        return _scalar(setting.type, text)
    except ValueError:
        article = "an" if setting.type[:1] in "aeiou" else "a"
        raise argparse.ArgumentTypeError(f"{text!r} is not {article} {setting.type}") from None


def setting_names(keys: Iterable[str]) -> tuple[str, ...]:
    """The ``section.key`` names `keys` stand for, in the order of configs/default.yaml: ``section.key`` itself,
    ``section`` each key of it, ``all`` every key. A name that default.yaml does not declare is a bug of the command
    that declares it (ValueError)."""
    keys = list(keys)
    every = [s.name for s in settings()]
    wanted = set()
    for name in keys:
        found = every if name == "all" else [n for n in every if n == name or n.startswith(f"{name}.")]
        if not found:
            raise ValueError(f"{name!r} is no key or section of {default_config_path()}")
        wanted.update(found)
    return tuple(n for n in every if n in wanted)


def add_settings(parser: argparse.ArgumentParser, keys: Iterable[str], aliases: Mapping[str, str] = {}) -> None:
    """An option for each config key of `keys` (names ``section.key``: ``--key-name``, dest ``section.key``; bools
    get ``--no-key``), grouped by section.

    `aliases` maps an extra flag to a key, e.g. ``{"--batch": "predict_batch"}``; the key whose own flag an
    alias takes is then set with ``--set`` only.
    """
    taken = set(aliases)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name in setting_names(keys):
        s = setting(*name.split("."))
        flags = [f for f, key in aliases.items() if key == s.key]
        if s.flag not in taken:
            flags.insert(0, s.flag)
        if not flags:
            continue
        if s.section not in groups:
            groups[s.section] = parser.add_argument_group(
                f"{s.section} settings", f"the keys of the config's {s.section} section that this command reads "
                "(docs/reference.md, Configuration): an option given here overrides --config and --set")
        help = f"{s.meaning} ({s.declared}; default {s.text})".replace("%", "%%")
        if s.type == "bool":
            groups[s.section].add_argument(*flags, dest=s.name, action=argparse.BooleanOptionalAction,
                                           default=argparse.SUPPRESS, help=help)
        else:
            parse: Callable[[str], Any] = lambda text, s=s: parse_value(s, text)
            groups[s.section].add_argument(*flags, dest=s.name, type=parse, metavar=s.key.upper(),
                                           default=argparse.SUPPRESS, help=help)


def given(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The config keys given as options: ``{section: {key: value}}``."""
    out: dict[str, dict[str, Any]] = {}
    for dest, value in vars(args).items():
        section, dot, key = dest.partition(".")
        if dot:
            out.setdefault(section, {})[key] = value
    return out


def explicit(args: argparse.Namespace) -> frozenset[str]:
    """The keys (``section.key``) given on the command line, with ``--set`` or an option: those that win over every
    file, also over a file a command reads later (the config a run's training saved, :func:`vinbig.config.with_saved`)."""
    named = {f"{section}.{key}" for text in args.overrides for section, keys in parse_override(text).items()
             for key in keys}
    return frozenset(named | {f"{section}.{key}" for section, keys in given(args).items() for key in keys})


def resolve(args: argparse.Namespace, extra: Iterable[Path] = ()) -> dict:
    """Defaults (``configs/default.yaml``), ``--config`` (a command may default it to another file: ``vinbig demo``
    to ``configs/demo.yaml``), the files `extra`, ``--set``, then the options given on the command line; each value
    checked against its declared type and range, before the command does anything."""
    return load_config(args.config, args.overrides, extra, given(args))


# --------------------------------------------------------------------------- arguments several commands share


def work_argument(parser: argparse.ArgumentParser, help: str = "work folder") -> None:
    parser.add_argument("--work", required=True, type=Path, metavar="WORK", help=help)


def train_arguments(parser: argparse.ArgumentParser, stage: str) -> None:
    """``--work --fold K [--resume | --overwrite]`` of ``train-detector`` and ``train-classifier``."""
    work_argument(parser, "work folder (vinbig images and folds done)")
    parser.add_argument("--fold", required=True, type=int, metavar="K", help="validation fold; trains on the others")
    parser.add_argument("--resume", action="store_true",
                        help=f"continue the interrupted run in WORK/{stage}/RUN/foldK from its last.pt (a finished run "
                             "is left as it is)")
    parser.add_argument("--overwrite", action="store_true",
                        help=f"start over even if WORK/{stage}/RUN/foldK holds a run")


def predict_arguments(parser: argparse.ArgumentParser) -> None:
    """``--work --split oof|test`` of ``predict-detector`` and ``predict-classifier``."""
    work_argument(parser, "work folder with trained folds")
    parser.add_argument("--split", required=True, choices=("oof", "test"),
                        help="oof: each fold's model on its validation images; test: every fold's on every test image")
