"""`vinbig demo`: the whole job on a fresh synthetic dataset, stage by stage, through the command line.

Each step is the `vinbig` subcommand a user would run (the same code, in this process; the trainings are the jobs
of `vinbig train`, each a process of its own, several at once: a GPU each, or the CPU cores), with the demo
config (`configs/demo.yaml`: small sizes that train on a laptop CPU in minutes; on a GPU machine the same
steps use the GPU). A rerun keeps what is done: the dataset when its train.csv exists, the converted
images and the trained folds (resumed if interrupted). At the end it prints the out-of-fold mAP table next to that
of a "No finding"-for-every-image submission, the synthetic leaderboard (each submission scored against the test
truth `vinbig synth` keeps in DATA/private/, which no stage reads) for the ensemble, each detector run alone and
the "No finding" submission, where the outputs are, and how long each stage took.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Callable

from vinbig.artifacts import Work, config_path
from vinbig.config import packaged_config
from vinbig.errors import UserError

logger = logging.getLogger("vinbig")


def demo_config_path() -> Path:
    """The demo config, `configs/demo.yaml`."""
    return packaged_config("demo.yaml")


class DemoError(RuntimeError):
    """A stage of the demo failed; the message names it and how to go on. `stage`: its name; `argv`: the vinbig
    command that failed."""

    def __init__(self, message: str, stage: str = "", argv: list[str] = ()):
        super().__init__(message)
        self.stage, self.argv = stage, list(argv)


class Demo:
    """The demo's folders, its stage runner and the time each stage took."""

    def __init__(self, out: Path, config: Path, overrides: list[str], verbosity: int,
                 progress: Callable[[str, list[list[str]], float], None] | None = None):
        self.out = Path(out)
        self.data, self.work = self.out / "data", self.out / "work"
        self.common = ["--config", str(config)] + [a for o in overrides for a in ("--set", o)]
        self.common += ["-q"] if verbosity < 0 else ["-v"] * verbosity
        self.times: dict[str, float] = {}
        self.progress = progress  # called after each stage with its name, its commands and its seconds

    def stage(self, name: str, *commands: list[str]) -> None:
        """Run `commands` (vinbig argument lists) as the stage `name`; a failure stops the demo."""
        from vinbig.app.cli import main

        t0 = time.perf_counter()
        for argv in commands:
            logger.info("demo: vinbig %s", " ".join(argv))
            code = main(argv + self.common, pipeline=True)  # its --set: every stage's keys
            if code != 0:
                raise DemoError(f"the demo stopped at stage '{name}': 'vinbig {' '.join(argv)}' exited with {code} "
                                "(see the error above). Rerun the same 'vinbig demo' command once it is fixed: the "
                                "dataset, the converted images and the trained folds are kept", name, argv)
        seconds = time.perf_counter() - t0
        self.times[name] = self.times.get(name, 0.0) + seconds
        if self.progress is not None:
            self.progress(name, list(commands), seconds)

    def train(self, stage: str, runs: list[str], folds: list[int]) -> None:
        """Train every fold of every run of `stage` with one ``vinbig train``, several at once: one per GPU, else
        up to four on the CPU cores (ultralytics trains on cores - 1 threads, so two trainings on two cores take
        little longer than one). A trained fold is skipped, an interrupted one resumed."""
        from vinbig.grid import cpu_cores, gpu_ids

        jobs = len(gpu_ids()) or min(cpu_cores(), 4)
        self.stage(f"train {stage}s", ["train", "--work", str(self.work), "--stage", stage,
                                       *[a for r in runs for a in ("--run", r)],
                                       *[a for k in folds for a in ("--fold", str(k))], "--jobs", str(jobs)])


def run_demo(out: Path, cfg: dict, config: Path, overrides: list[str] = (), verbosity: int = 0,
             echo: Callable[[str], None] = print,
             progress: Callable[[str, list[list[str]], float], None] | None = None) -> dict:
    """Run every stage into `out`/data and `out`/work with the config `cfg`, resolved from the file `config` and the
    ``--set`` `overrides`, which each stage is given; return the summary (see `summary`). `progress(stage, commands,
    seconds)` is called after each stage."""
    from detector import resolve_model
    from vinbig.runs import run_config, run_names

    detector_runs = run_names(cfg, "detector")
    for run in detector_runs:  # a model vinbig does not train is refused before any stage
        resolve_model(run_config(cfg, "detector", run)["model"])
    d = Demo(out, config, list(overrides), verbosity, progress)
    w = str(d.work)
    t_start = time.perf_counter()
    if (d.data / "train.csv").is_file() and (d.data / "sample_submission.csv").is_file():
        logger.info("demo: using the synthetic dataset already in %s", d.data)
    else:
        d.stage("synthetic data", ["synth", "--out", str(d.data)])
    d.stage("convert images", *[["images", "--src", str(d.data / s), "--out", str(Work(d.work).images(s))]
                                for s in ("train", "test")])
    d.stage("folds", ["folds", "--train-csv", str(d.data / "train.csv"), "--out", w])
    folds = list(range(cfg["folds"]["n_folds"]))
    d.train("detector", detector_runs, folds)
    d.train("classifier", run_names(cfg, "classifier"), folds)
    # the detector predicts each image and its mirror image (as make's default TTA=hflip); the classifier
    # follows classifier.tta
    d.stage("predict", *[["predict-detector", "--work", w, "--split", s, "--tta", "hflip"] for s in ("oof", "test")],
            *[["predict-classifier", "--work", w, "--split", s] for s in ("oof", "test")])
    d.stage("tune fusion", ["tune", "--work", w])
    d.stage("submission", ["fuse", "--work", w, "--split", "test"])
    if len(detector_runs) > 1:  # each run alone, for the leaderboard (the ensemble's submission is the one above)
        d.stage("submission", *[["fuse", "--work", w, "--split", "test", "--run", r, "--out",
                                  str(run_submission(d.work, r))] for r in detector_runs])
    d.stage("report", ["report", "--work", w])
    d.times["total"] = time.perf_counter() - t_start
    result = summary(d, detector_runs if len(detector_runs) > 1 else [])
    echo(format_summary(result))
    return result


def run_submission(work: Path, run: str) -> Path:
    """``WORK/submission_RUN.csv``: the test submission of one detector run alone."""
    return Path(work) / f"submission_{run}.csv"


def no_finding_result(truth):
    """The metric of '14 1 0 0 1 1' for every image of `truth` (a prepared truth table)."""
    import pandas as pd

    from vinbig.artifacts import BOX, NO_FINDING, NO_FINDING_BOX
    from vinbig.metric import evaluate

    preds = pd.DataFrame({"image_id": truth["image_id"].unique(), "class_id": NO_FINDING, "score": 1.0,
                          **dict(zip(BOX, NO_FINDING_BOX))})
    return evaluate(truth, preds)


def summary(d: Demo, runs: list[str] = ()) -> dict:
    """The fused OOF result, that of "No finding" for every OOF image, the leaderboard rows (``{"submission":
    "ensemble" | "run NAME" | "no finding", "oof": OOF mAP, "lb": test mAP}``, for the ensemble, each run of `runs`
    alone and "No finding"), the output paths and stage times. The fusion values are those the
    submission was made with, as 'vinbig fuse' saved them (WORK/config_fusion.yaml: the config, the tuned values,
    --set)."""
    from fusion import oof_inputs, score_oof
    from vinbig.config import saved_section
    from vinbig.submission import read_truth, score_files
    from vinbig.synth import PRIVATE_TRUTH

    work = Work(d.work)
    f = saved_section(config_path(work.root, "fusion"), "fusion")
    inputs = oof_inputs(work, f)  # read once for the ensemble and each run alone
    result, _, truth = score_oof(work, f, inputs=inputs)
    baseline = no_finding_result(truth)
    private = d.data / PRIVATE_TRUTH
    board = []
    if private.is_file():  # scored here only, as Kaggle scores a submission; no stage reads it
        board.append(board_row("ensemble", result.mean_ap, score_files(private, work.submission).mean_ap))
        for r in runs:
            board.append(board_row(f"run {r}", score_oof(work, f, runs=[r], inputs=inputs).result.mean_ap,
                                   score_files(private, run_submission(d.work, r)).mean_ap))
        board.append(board_row("no finding", baseline.mean_ap, no_finding_result(read_truth(private)).mean_ap))
    return {"result": result, "baseline": baseline, "submission": work.submission, "report": work.report,
            "work": work.root, "data": d.data, "times": dict(d.times), "leaderboard": board, "private": private}


def board_row(submission: str, oof: float, lb: float) -> dict:
    """A row of the synthetic leaderboard: the submission ("ensemble", "run NAME", "no finding"), its OOF mAP and its
    test mAP against the private truth."""
    return {"submission": submission, "oof": float(oof), "lb": float(lb)}


def board_label(submission: str) -> str:
    """How the demo's leaderboard names a submission."""
    if submission == "no finding":
        return "'No finding' for every image"
    return f"{submission} alone" if submission.startswith("run ") else submission


def format_summary(s: dict) -> str:
    from vinbig.artifacts import CLASS_NAMES

    result, baseline = s["result"], s["baseline"]
    lines = ["", "Out-of-fold mAP@0.4 (fused detectors, tuned WBF, 'No finding' gate) against a submission of",
             "'14 1 0 0 1 1' (No finding) for every image:", "",
             f"{'id':>2}  {'class':<20} {'truth':>6} {'vinbig AP':>10} {'No finding AP':>14}"]
    for c, name in enumerate(CLASS_NAMES):
        if not result.present[c]:
            lines.append(f"{c:>2}  {name:<20} {0:>6} {'absent':>10} {'absent':>14}")
            continue
        lines.append(f"{c:>2}  {name:<20} {result.n_truth[c]:>6} {result.ap[c]:>10.4f} {baseline.ap[c]:>14.4f}")
    n = int(result.present.sum())
    lines += [f"    {'mAP over ' + str(n) + ' classes':<27} {result.mean_ap:>10.4f} {baseline.mean_ap:>14.4f}", ""]
    if s.get("leaderboard"):
        lines += [f"Synthetic leaderboard: test mAP@0.4 against {s['private']} (the truth no stage reads), beside "
                  "the OOF mAP:", "", f"{'submission':<32} {'OOF mAP':>8} {'test mAP':>9}"]
        lines += [f"{board_label(r['submission']):<32} {r['oof']:>8.4f} {r['lb']:>9.4f}" for r in s["leaderboard"]]
        lines += [""]
    lines += [
              f"submission: {s['submission']} (valid for {s['data'] / 'sample_submission.csv'})",
              f"report:     {s['report']} (index.html: open it in a browser; per_class_ap.png, pr_curves.png, "
              "metrics.csv, overlays/)",
              f"work:       {s['work']}", "", "time per stage:"]
    for name, seconds in s["times"].items():
        lines.append(f"  {name:<18} {seconds:7.1f} s")
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace, cfg: dict) -> int:
    try:
        run_demo(args.out, cfg, args.config, args.overrides, -1 if args.quiet else args.verbose)
    except DemoError as e:
        raise UserError(str(e)) from None
    return 0


def register(add) -> None:
    p = add("demo", cmd_demo, "the whole job on a fresh synthetic dataset: data to submission and report",
            "Generate a synthetic dataset in OUT/data, then in OUT/work: convert the images, make the folds, "
            "train the five folds of every detector run and 'No finding' classifier run of the config, predict "
            "out-of-fold and test, tune the fusion and the run weights, write and validate submission.csv (and one "
            "per detector run alone), and write the report. Prints the OOF mAP next to that of a 'No finding'-only "
            "submission, the synthetic leaderboard (each submission scored against DATA/private/test_labels.csv) "
            "and the time of each stage. --config defaults to configs/demo.yaml "
            "(small sizes for a CPU; a GPU is used when there is one); --set changes single keys. A rerun keeps "
            "the dataset, the converted images and the trained folds, and makes the rest again.",
            reads=["all"], config=demo_config_path())  # every key: each stage is given --config and --set
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for data/ and work/")
