"""The synthetic leaderboard's truth, DATA/private/test_labels.csv, is never opened by the pipeline.

`vinbig synth` writes the test images' truth there; like Kaggle's hidden test labels, only `vinbig score` may read
it. The test hides the file (a folder stands in its place, so that even a reader running as root, or one in C, fails)
and watches every open, listing and scan of DATA/private/ with a Python audit hook while the stages run through
their public commands; then it puts the file back and scores the submission against it.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from vinbig.app.cli import main

from tiny import SYNTH, TINY, set_args

ROOT = Path(__file__).resolve().parent.parent
AUDITED = {"open", "os.listdir", "os.scandir", "glob.glob", "glob.glob/2", "shutil.copyfile", "shutil.copytree",
           "os.rename", "os.remove", "os.rmdir", "os.link", "os.symlink"}

_watched: list[str] = []  # folders (absolute, with a trailing separator) whose use raises while a test watches
touched: list[tuple[str, str]] = []  # (event, path) of each use of a watched folder


def _audit(event: str, args: tuple) -> None:
    """Record and refuse any open, listing or copy of a path under a watched folder (a no-op when none is)."""
    if not _watched or event not in AUDITED:
        return
    for arg in args:
        if isinstance(arg, (str, bytes, os.PathLike)):
            path = os.path.abspath(os.fsdecode(arg))
            if any((path + os.sep).startswith(folder) for folder in _watched):
                touched.append((event, path))
                raise PermissionError(13, "the private truth is off limits to the pipeline", path)


sys.addaudithook(_audit)  # hooks cannot be removed: it stays, inert, for the rest of the session


class watching:
    """``with watching(folder):`` any use of `folder` raises PermissionError and lands in `touched`."""

    def __init__(self, folder: Path):
        self.folder = os.path.abspath(folder) + os.sep

    def __enter__(self):
        _watched.append(self.folder)

    def __exit__(self, *exc):
        _watched.remove(self.folder)


def run(*args: str) -> int:
    return main([*args, "-q"])


def test_the_watch_catches_a_read_of_the_truth(tmp_path):
    """The guard of the next test: pandas, open and a folder scan of the private folder are all caught, even where
    the caller swallows the error (pathlib's rglob skips a folder it may not scan)."""
    private = tmp_path / "private"
    private.mkdir()
    (private / "test_labels.csv").write_text("image_id,class_id\na,14\n")
    touched.clear()
    with watching(private):
        with pytest.raises(PermissionError):
            pd.read_csv(private / "test_labels.csv")
        with pytest.raises(PermissionError):
            open(private / "test_labels.csv")
        assert list(tmp_path.rglob("*.csv")) == []
    events = [event for event, _ in touched]
    assert events[:2] == ["open", "open"] and set(events[2:]) == {"os.scandir"}
    touched.clear()
    assert len(pd.read_csv(private / "test_labels.csv")) == 1  # unwatched, it reads as usual


@pytest.mark.slow
def test_the_pipeline_never_opens_the_private_truth_and_score_reads_it(tmp_path, capsys):
    data, work = tmp_path / "data", tmp_path / "work"
    settings = set_args(SYNTH + TINY)
    assert run("synth", "--out", str(data), *settings) == 0
    truth = data / "private" / "test_labels.csv"
    assert tuple(pd.read_csv(truth).columns)[:2] == ("image_id", "class_id")

    hidden = tmp_path / "hidden.csv"  # outside DATA: the file is moved away and a folder stands in its place
    shutil.move(truth, hidden)
    truth.mkdir()
    touched.clear()
    with watching(data / "private"):
        codes = [run("images", "--src", str(data / split), "--out", str(work / "images" / split), *settings)
                 for split in ("train", "test")]
        codes.append(run("folds", "--train-csv", str(data / "train.csv"), "--out", str(work), *settings))
        codes.append(run("train-detector", "--work", str(work), "--fold", "0", *settings))
        codes.append(run("predict-detector", "--work", str(work), "--split", "test", "--folds", "0", *settings))
        codes.append(run("fuse", "--work", str(work), "--split", "test", "--data", str(data), *settings))
    assert touched == [], f"a stage used the private truth: {touched}"
    assert codes == [0] * 6, codes
    submission = work / "submission.csv"
    assert submission.is_file()

    truth.rmdir()
    shutil.move(hidden, truth)
    capsys.readouterr()
    assert run("score", "--truth", str(truth), "--submission", str(submission)) == 0
    out = capsys.readouterr().out
    assert re.search(r"^mAP@0\.4 over \d+ classes present: \d\.\d{4}$", out, flags=re.M), out


def test_no_stage_make_target_or_notebook_names_the_private_folder():
    """Only the generator (vinbig/synth.py, vinbig/app/synth.py) and the scorers name the private truth's place."""
    sources = [ROOT / "Makefile", *sorted((ROOT / "notebooks").glob("*.ipynb"))]
    sources += [p for package in ("folds", "detector", "classifier", "fusion")
                for p in sorted((ROOT / package).rglob("*.py"))]
    names = re.compile(r"test_labels|PRIVATE_TRUTH|[\"'/]private\b")
    named = [str(p.relative_to(ROOT)) for p in sources if names.search(p.read_text())]
    assert named == []
