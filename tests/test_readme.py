"""The README and docs/ promises that can drift: the generated reference, the make targets and commands they
name, their links, and the facts they state about the code."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from detector._train import RESUME_KEYS
from vinbig.app.cli import build_parser
from vinbig.app.reference import REFERENCE, reference
from vinbig.artifacts import CLASSIFIER_PRED_COLUMNS, DETECTOR_PRED_COLUMNS
from vinbig.config import settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
GUIDE = (ROOT / "docs" / "guide.md").read_text()
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "notebooks" / "README.md"]


def test_the_reference_is_current():
    assert REFERENCE.read_text() == reference(), "docs/reference.md differs from the code: run 'make reference'"


def test_the_reference_lists_every_command_and_every_config_key_with_its_range():
    text = REFERENCE.read_text()
    for name in build_parser()._subparsers._group_actions[0].choices:
        assert f"### vinbig {name}\n" in text and f"usage: vinbig {name} " in text, name
    for s in settings():
        assert f"| `{s.key}` | `{s.text}` | {s.declared.replace('|', chr(92) + '|')} |" in text, s.name


def test_the_readme_is_short_and_links_the_reference():
    assert len(README.splitlines()) <= 300
    assert "(docs/reference.md)" in README and "(docs/faults.md)" in README


def test_readme_names_every_make_target_and_command():
    targets = re.findall(r"^([a-z][a-zA-Z_-]*):.*## ", (ROOT / "Makefile").read_text(), flags=re.M)
    missing = [t for t in targets if t not in ("help", "venv") and f"`make {t}`" not in README]
    assert not missing, f"make targets missing from the README's table: {missing}"
    commands = build_parser()._subparsers._group_actions[0].choices
    # the whole name in backticks: `vinbig predict` is not found inside `vinbig predict-detector`
    missing = [c for c in commands if f"`vinbig {c}`" not in README]
    assert not missing, f"vinbig commands the README's table does not describe: {missing}"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_of_the_docs_leads_somewhere(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md":
            anchors = {_anchor(h) for h in re.findall(r"^#+ (.*)$", file.read_text(), flags=re.M)}
            if anchor not in anchors:
                broken.append(target)
    assert not broken, f"{page.name}: links to nothing: {broken}"


def test_the_guide_states_the_prediction_columns_and_resume_keys_of_the_code():
    assert f"`{','.join(DETECTOR_PRED_COLUMNS)}`" in GUIDE
    assert f"`{','.join(CLASSIFIER_PRED_COLUMNS)}`" in GUIDE
    resume = GUIDE[GUIDE.index("`--resume` and its own arguments"):][:400]
    assert all(f"`{k}`" in resume for k in RESUME_KEYS), RESUME_KEYS


def test_the_demo_takes_the_same_minutes_in_the_readme_and_the_makefile():
    make = re.search(r"^demo:.*about (\d+) min", (ROOT / "Makefile").read_text(), flags=re.M).group(1)
    readme = re.search(r"make demo .*about (\d+) minutes", README).group(1)
    assert make == readme


def test_make_help_lists_the_targets_the_issue_names():
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for target in ("demo", "test", "folds", "train", "predict", "submission", "report", "reference"):
        assert re.search(rf"make {target}\s", out), target
