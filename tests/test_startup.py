"""`vinbig --help` and the light commands (validate, score, folds) start without the deep-learning stack.

Each command runs in a fresh interpreter, as a user starts it; the test lists the heavy packages it imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

# imported by a command only when it uses them: models, pictures, image decoding, numba's compiler
HEAVY = ("torch", "torchvision", "ultralytics", "timm", "matplotlib", "cv2", "numba", "pydicom")

RUN = textwrap.dedent('''
    import json, sys

    from vinbig.app.cli import main

    try:
        rc = main(sys.argv[2:])
    except SystemExit as e:  # --help
        rc = e.code
    print(json.dumps({"rc": rc, "loaded": sorted(m for m in json.loads(sys.argv[1]) if m in sys.modules)}))
''')


def loaded(args: list[str], heavy=HEAVY) -> list[str]:
    """The modules of `heavy` that `vinbig ARGS` imported; the command must succeed."""
    done = subprocess.run([sys.executable, "-c", RUN, json.dumps(list(heavy)), *args], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0, done.stderr
    return result["loaded"]


@pytest.mark.parametrize("args", [["--help"], ["train-detector", "--help"], ["predict-classifier", "--help"]])
def test_help_imports_nothing_heavy(args):
    assert loaded(args) == []


def test_help_imports_no_pandas():
    assert loaded(["--help"], ("pandas", "numpy", "pyarrow")) == []


def test_validate_and_score_import_nothing_heavy(synth_work):
    sample = synth_work.data / "sample_submission.csv"
    assert loaded(["validate", str(sample), "--sample", str(sample), "-q"]) == []
    assert loaded(["score", "--truth", str(synth_work.work / "labels.csv"), "--submission", str(sample), "-q"]) == []


def test_folds_imports_no_deep_learning_or_image_package(synth_work, tmp_path):
    # numba comes with ensemble-boxes (folds/_consolidate.py), whose WBF the command uses
    heavy = [m for m in HEAVY if m != "numba"]
    assert loaded(["folds", "--train-csv", str(synth_work.data / "train.csv"), "--out", str(tmp_path / "work"),
                   "--n-folds", "3", "-q"], heavy) == []
    assert (tmp_path / "work" / "folds.csv").is_file()
