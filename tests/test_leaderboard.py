"""bench/leaderboard.py: the synthetic leaderboard over dataset seeds, as a user runs it at a tiny size; its summary
recomputed from its rows; a seed that fails named in one line."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from vinbig.submission import score_files

from faults import guarded_env

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "leaderboard.py"
sys.path.append(str(ROOT / "bench"))
from leaderboard import summarize  # noqa: E402 (bench/, beside tests/)

# two detector runs (b: its own seed offset 1), one classifier, every stage at its smallest
TINY = {
    "synth": {"abnormal_fraction": 0.5, "workers": 1},
    "images": {"size": 96, "workers": 1},
    "detector": {"model": "yolov8n.yaml", "imgsz": 64, "epochs": 1, "batch": 8, "device": "cpu", "workers": 0,
                 "plots": False, "conf": 0.000001},
    "classifier": {"backbone": "test_efficientnet", "imgsz": 32, "epochs": 1, "batch": 8, "workers": 0,
                   "device": "cpu", "predict_batch": 16},
    "fusion": {"tune_iou_thr": [0.4], "tune_skip_box_thr": [0.0], "tune_conf_type": ["avg"], "tune_low": [0.0],
               "tune_high": [0.9], "tune_run_weights": [0.5, 1.0], "workers": 1, "report_images": 0},
    "runs": {"detector": {"a": {}, "b": {"seed": 1}}},
}
SEEDS = (3, 4)
SUBMISSIONS = ["ensemble", "run a", "run b", "no finding", "ensemble, equal weights", "run a, reseeded"]


def run_bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``python bench/leaderboard.py ARGS`` from the repository root, the network blocked."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    env, _ = guarded_env(tmp_path)
    return subprocess.run([sys.executable, str(SCRIPT), "--config", str(config), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def row(seed, submission, oof, lb):
    return {"seed": seed, "submission": submission, "oof": oof, "lb": lb}


def test_summary_of_hand_made_rows():
    """Per seed the member picked by OOF is not always the best on the LB; the figures worked out by hand."""
    rows = [row(1, "ensemble", 0.30, 0.40), row(1, "run a", 0.25, 0.30), row(1, "run b", 0.20, 0.36),
            row(1, "ensemble, equal weights", 0.29, 0.42), row(1, "run a, reseeded", 0.24, 0.34),
            row(1, "no finding", 0.05, 0.06),
            row(2, "ensemble", 0.20, 0.20), row(2, "run a", 0.10, 0.25), row(2, "run b", 0.15, 0.10),
            row(2, "ensemble, equal weights", 0.18, 0.16), row(2, "run a, reseeded", 0.12, 0.22),
            row(2, "no finding", 0.04, 0.05)]
    s = summarize(rows)
    assert list(s["submissions"]) == ["ensemble", "run a", "run b", "ensemble, equal weights", "run a, reseeded",
                                      "no finding"]
    assert s["submissions"]["run a"]["lb"] == pytest.approx({"mean": 0.275, "sd": math.sqrt(2) * 0.025})
    assert s["submissions"]["ensemble"]["n"] == 2
    picked = s["paired"]["ensemble - picked member"]  # seed 1: a (OOF 0.25), 0.40 - 0.30; seed 2: b, 0.20 - 0.10
    assert [p["member"] for p in picked["seeds"]] == ["run a", "run b"]
    assert (picked["n"], picked["ahead"]) == (2, 2)
    assert picked["mean"] == pytest.approx(0.10) and picked["se"] == pytest.approx(0.0)
    oracle = s["paired"]["ensemble - oracle member"]  # seed 1: a (0.30)? no, b (0.36): +0.04; seed 2: a: -0.05
    assert [p["member"] for p in oracle["seeds"]] == ["run b", "run a"]
    assert [p["diff"] for p in oracle["seeds"]] == pytest.approx([0.04, -0.05])
    assert oracle["ahead"] == 1 and oracle["mean"] == pytest.approx(-0.005)
    assert oracle["se"] == pytest.approx(math.sqrt(2 * 0.045 ** 2) / math.sqrt(2))
    equal = s["paired"]["tuned - equal weights"]  # -0.02, +0.04
    assert equal["mean"] == pytest.approx(0.01) and equal["ahead"] == 1
    noise = s["noise"]  # LB differences +0.04 and -0.03: sqrt((0.0016 + 0.0009) / 2 / 2)
    assert noise["runs"] == ["run a"] and noise["n"] == 2
    assert noise["lb_sd"] == pytest.approx(math.sqrt(0.0025 / 4))
    assert noise["lb_mean_diff"] == pytest.approx(0.005)


def test_summary_without_members_or_reseed_leaves_those_lines_out():
    s = summarize([row(1, "ensemble", 0.1, 0.2), row(1, "no finding", 0.0, 0.1)])
    assert s["paired"] == {} and s["noise"] is None
    assert s["submissions"]["ensemble"] == {"n": 1, "oof": {"mean": 0.1, "sd": None}, "lb": {"mean": 0.2, "sd": None}}


def _mean_sd(x: pd.Series) -> dict:
    return {"mean": x.mean(), "sd": x.std(ddof=1)}


@pytest.mark.slow
def test_tiny_leaderboard_writes_rows_and_a_summary_recomputed_from_them(tmp_path):
    out = tmp_path / "out"
    proc = run_bench(tmp_path, "--seeds", *map(str, SEEDS), "--n-train", "16", "--n-test", "6", "--folds", "2",
                     "--size", "96", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for seed in SEEDS:  # progress: one line per stage and seed
        for stage in ("synthetic data", "train detectors (run a, b; fold 0, 1)", "tune fusion", "equal weights",
                      "train detectors (run a_reseed; fold 0, 1)"):
            assert f"seed {seed}: {stage}" in proc.stdout, (seed, stage)

    result = json.loads((out / "results.json").read_text())
    rows = pd.DataFrame(result["rows"])
    assert all(list(r) == ["seed", "submission", "oof", "lb"] for r in result["rows"])
    assert sorted(rows.seed.unique()) == list(SEEDS)
    for seed in SEEDS:
        assert sorted(rows[rows.seed == seed].submission) == sorted(SUBMISSIONS)
    assert rows.oof.between(0, 1).all() and rows.lb.between(0, 1).all()

    # every LB figure is the metric of that seed's submission file against its private truth
    files = {"ensemble": "submission.csv", "run a": "submission_a.csv", "run b": "submission_b.csv",
             "ensemble, equal weights": "submission_equal.csv", "run a, reseeded": "submission_a_reseed.csv"}
    for seed in SEEDS:
        truth = out / f"seed{seed}" / "data" / "private" / "test_labels.csv"
        by = rows[rows.seed == seed].set_index("submission")
        for submission, name in files.items():
            assert by.loc[submission, "lb"] == pytest.approx(
                score_files(truth, out / f"seed{seed}" / "work" / name).mean_ap, abs=1e-9), (seed, submission)
        # training seeds: the dataset's seed, + run b's own 1, + 1000 for the reseeded copy of run a
        for run, trained in (("a", seed), ("b", seed + 1), ("a_reseed", seed + 1000)):
            args = yaml.safe_load((out / f"seed{seed}" / "work" / "detector" / run / "fold0" / "args.yaml").read_text())
            assert args["seed"] == trained, run
        tuned = yaml.safe_load((out / f"seed{seed}" / "work" / "fusion.yaml").read_text())["fusion"]
        assert set(tuned["run_weights"]) == {"a", "b"}  # the reseeded run was never part of the ensemble

    # the summary, recomputed from the rows
    s = result["summary"]
    assert list(s["submissions"]) == list(dict.fromkeys(rows.submission))
    for submission, got in rows.groupby("submission", sort=False):
        assert s["submissions"][submission]["n"] == len(got)
        for what in ("oof", "lb"):
            assert s["submissions"][submission][what] == pytest.approx(_mean_sd(got[what])), (submission, what)
    lb = rows.pivot(index="seed", columns="submission", values="lb")
    oof = rows.pivot(index="seed", columns="submission", values="oof")
    members = ["run a", "run b"]
    picked = oof[members].idxmax(axis=1)  # the first on a tie, as a user reading the table top down
    oracle = lb[members].idxmax(axis=1)
    diffs = {
        "ensemble - picked member": lb["ensemble"] - pd.Series({k: lb.loc[k, m] for k, m in picked.items()}),
        "ensemble - oracle member": lb["ensemble"] - lb[members].max(axis=1),
        "tuned - equal weights": lb["ensemble"] - lb["ensemble, equal weights"],
    }
    assert set(s["paired"]) == set(diffs)
    for key, d in diffs.items():
        p = s["paired"][key]
        assert (p["n"], p["ahead"]) == (len(SEEDS), int((d > 0).sum())), key
        assert p["mean"] == pytest.approx(d.mean()) and p["se"] == pytest.approx(d.std(ddof=1) / math.sqrt(len(d)))
        assert [q["seed"] for q in p["seeds"]] == list(SEEDS)
        assert [q["diff"] for q in p["seeds"]] == pytest.approx(list(d[list(SEEDS)]))
    assert [q["member"] for q in s["paired"]["ensemble - picked member"]["seeds"]] == list(picked[list(SEEDS)])
    assert [q["member"] for q in s["paired"]["ensemble - oracle member"]["seeds"]] == list(oracle[list(SEEDS)])
    noise = lb["run a, reseeded"] - lb["run a"]
    assert s["noise"]["n"] == len(SEEDS) and s["noise"]["runs"] == ["run a"]
    assert s["noise"]["lb_sd"] == pytest.approx(math.sqrt((noise ** 2).mean() / 2))

    md = (out / "results.md").read_text()
    for submission in SUBMISSIONS:
        assert f"| {submission} |" in md, submission
    assert "Noise floor" in md and "ahead" in md and "bench/leaderboard.py" in md and "machine:" in md


def test_a_seed_that_fails_is_named_with_its_stage_in_one_line(tmp_path):
    """Four images cannot make five folds: exit 1, the seed and the stage named, no traceback, nothing written."""
    out = tmp_path / "out"
    proc = run_bench(tmp_path, "--seeds", "5", "--n-train", "4", "--n-test", "1", "--folds", "5", "--size", "64",
                     "--out", str(out))
    assert proc.returncode == 1
    assert "seed 5 stopped at stage 'folds'" in proc.stderr and "vinbig folds --train-csv" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "results.json").exists()
