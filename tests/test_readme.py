"""The README's promises that can drift: its config tables, its make targets and the commands it names."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from vinbig.app.cli import build_parser
from vinbig.config import settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

SECTIONS = {"synth": "the synthetic dataset (`vinbig synth`)",
            "images": "DICOM to PNG (`vinbig images`)",
            "folds": "reader consolidation and folds (`vinbig folds`)",
            "detector": "YOLOv8 training and prediction (`train-detector`, `predict-detector`)",
            "classifier": "the \"No finding\" classifier (`train-classifier`, `predict-classifier`)",
            "fusion": "fusion, the gate, tuning and the report (`fuse`, `tune`, `report`)",
            "runs": "named detector and classifier runs, fused as one ensemble (`--run`, `vinbig runs`)"}


def config_tables() -> str:
    """The README's configuration tables, made from the declarations of configs/default.yaml."""
    out, section = [], None
    for setting in settings():
        if setting.section != section:
            if section:
                out.append("\n</details>\n")
            section = setting.section
            out += [f"<details><summary><code>{section}</code>: {SECTIONS[section]}</summary>\n",
                    "| key | default | type | meaning |", "|---|---|---|---|"]
        key, value, kind, meaning = (t.replace("|", "\\|") for t in (setting.key, setting.text, setting.type,
                                                                     setting.meaning))
        out.append(f"| `{key}` | `{value}` | {kind} | {meaning} |")
    out.append("\n</details>")
    return "\n".join(out)


def test_readme_lists_every_config_key_with_its_default():
    tables = config_tables()
    assert tables in README, ("the README's configuration tables differ from configs/default.yaml; run "
                              "'make readme' to rewrite them")


def test_readme_names_every_make_target_and_command():
    targets = re.findall(r"^([a-z][a-zA-Z_-]*):.*## ", (ROOT / "Makefile").read_text(), flags=re.M)
    missing = [t for t in targets if t not in ("help", "venv") and f"`make {t}`" not in README]
    assert not missing, f"make targets missing from the README's table: {missing}"
    commands = build_parser()._subparsers._group_actions[0].choices
    missing = [c for c in commands if f"vinbig {c}" not in README]
    assert not missing, f"vinbig commands the README does not describe: {missing}"


def test_make_help_lists_the_targets_the_issue_names():
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for target in ("demo", "test", "folds", "train", "predict", "submission", "report"):
        assert re.search(rf"make {target}\s", out), target


def write_config_tables(readme: Path = ROOT / "README.md") -> bool:
    """Rewrite the README's configuration tables from configs/default.yaml (`make readme`); True if it changed."""
    text = readme.read_text()
    start = text.index("<details><summary><code>synth</code>")
    end = text.index("</details>", text.rindex("<details><summary><code>", 0, text.index("## Commands"))) + len("</details>")
    new = text[:start] + config_tables() + text[end:]
    if new != text:
        readme.write_text(new)
    return new != text


if __name__ == "__main__":
    print("README.md configuration tables", "rewritten" if write_config_tables() else "already up to date")
