"""docs/reference.md: every command and every config key, written from the command line's parser and
configs/default.yaml, so that the reference cannot drift from the code (``make reference``; a test checks it).

    python -m vinbig.app.reference [PATH] [--check]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from vinbig.config import default_config_path, settings

ROOT = Path(__file__).resolve().parent.parent.parent
REFERENCE = ROOT / "docs" / "reference.md"
WIDTH = 110  # the width of the --help text in the reference, whatever the terminal it is written from

SECTIONS = {"synth": "the synthetic dataset (`vinbig synth`)",
            "images": "DICOM to PNG (`vinbig images`)",
            "folds": "reader consolidation and folds (`vinbig folds`)",
            "detector": "YOLO training and prediction (`train-detector`, `predict-detector`)",
            "classifier": "the \"No finding\" classifier (`train-classifier`, `predict-classifier`)",
            "fusion": "fusion, the gate, tuning and the report (`fuse`, `tune`, `report`)",
            "runs": "named detector and classifier runs, fused as one ensemble (`--run`, `vinbig runs`)",
            "tracking": "experiment tracking: where trainings log their epochs, and tune and report their OOF mAP "
                        "(`train-detector`, `train-classifier`, `tune`, `report`; [tracking.md](tracking.md))"}

HEAD = """# vinbig reference

Every command with its options, and every config key with its default, type, valid range and meaning.
Written by `make reference` from the command line's parser and `configs/default.yaml`; do not edit it by hand
(`tests/test_readme.py` fails when it is not current). How the stages work: [guide.md](guide.md).
"""

CONFIG_HEAD = """## Configuration

One YAML file, `configs/default.yaml`, declares every key once: `key: default  # (type, range) meaning`. A file
given with `--config FILE` holds only the keys it changes; `--set section.key=value` (repeatable, the value read
as YAML) changes single keys last. A misspelt key, a value of the wrong type or out of its range is refused
before any work, naming where it came from, the key, the value and the rule (exit 2). `vinbig demo` starts from
`configs/demo.yaml`. A range `LO..HI` includes both ends, `LO..<HI` leaves out HI, `>X` is strictly above X,
`a|b` lists the values allowed; it applies to each item of a list.
"""


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return dict(parser._subparsers._group_actions[0].choices)


@contextlib.contextmanager
def _width(columns: int):
    """argparse wraps help text at $COLUMNS: fix it while the reference is written."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(columns)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = before


def config_tables() -> str:
    """The configuration tables, one per section, made from the declarations of configs/default.yaml."""
    out, section = [], None
    for setting in settings():
        if setting.section != section:
            section = setting.section
            out += ["", f"### `{section}`: {SECTIONS[section]}", "", "| key | default | type, range | meaning |",
                    "|---|---|---|---|"]
        cells = (f"`{setting.key}`", f"`{setting.text}`", setting.declared, setting.meaning)
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out).lstrip("\n")


def reference() -> str:
    """The whole of docs/reference.md."""
    from vinbig.app.cli import build_parser

    with _width(WIDTH):
        parser = build_parser()
        commands = _commands(parser)
        parts = [HEAD, "## Commands", "", parser.format_usage().strip().replace("usage: ", "`") + "`", "",
                 parser.description, "", "| command | what it does |", "|---|---|"]
        helps = {a.dest: a.help for a in parser._subparsers._group_actions[0]._choices_actions}
        parts += [f"| [`vinbig {name}`](#vinbig-{name}) | {helps.get(name, '')} |" for name in commands]
        for name, sub in commands.items():
            parts += ["", f"### vinbig {name}", "", "```text", sub.format_help().rstrip(), "```"]
    parts += ["", CONFIG_HEAD, config_tables(), ""]
    text = "\n".join(parts)
    return text.replace(str(default_config_path()), "configs/default.yaml")


def write(path: Path = REFERENCE) -> bool:
    """Write the reference to `path`; True if it changed."""
    new = reference()
    old = path.read_text() if path.is_file() else None
    if new != old:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(new)
    return new != old


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vinbig.app.reference", description=__doc__.splitlines()[0])
    p.add_argument("path", nargs="?", type=Path, default=REFERENCE, help="where to write it")
    p.add_argument("--check", action="store_true", help="exit 1 if the file is not current, writing nothing")
    args = p.parse_args(argv)
    if args.check:
        current = args.path.is_file() and args.path.read_text() == reference()
        print(f"{args.path} is {'current' if current else 'out of date: run make reference'}")
        return 0 if current else 1
    print(f"{args.path} {'rewritten' if write(args.path) else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
