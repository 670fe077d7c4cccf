"""`vinbig train`: every run x fold of both stages not trained yet, several at once, on this machine or on Ray
(:mod:`vinbig.grid`)."""

from __future__ import annotations

import argparse
import collections
import contextlib
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence, TextIO

from vinbig.artifacts import Work, check_fold, check_writable, folds_command
from vinbig.config import save_config
from vinbig.errors import UserError
from vinbig.grid import Grid, Job, default_jobs, log_dir, progress, run_local, run_ray
from vinbig.runs import STAGES, run_names

CONFIG_NAME = "config_train.yaml"  # in WORK/logs: the resolved config every job reads
LOCK_NAME = "train.lock"  # in WORK/logs: held by the one `vinbig train` of a WORK
REDRAW_S = 1.0


def plan(cfg: dict, work: Work, stages: list[str], runs: list[str] | None, folds: list[int] | None) -> list[Job]:
    """The jobs (detector ones first) of `stages` x runs x folds: `runs` narrows each stage that has a run of that
    name (a stage none of whose runs is named keeps all of them, as make's RUNS); `folds` those of WORK/folds.csv
    (default: every one of them)."""
    by_stage = {s: run_names(cfg, s) for s in stages}
    unknown = [r for r in runs or [] if not any(r in names for names in by_stage.values())]
    if unknown:
        have = "; ".join(f"{s} runs: {', '.join(names)}" for s, names in by_stage.items())
        raise UserError(f"--run {unknown[0]} is not a run of the config ({have}); declare it under "
                        f"runs.{stages[0] if len(stages) == 1 else 'detector or runs.classifier'}")
    known = check_fold(work, folds or [])  # the folds of folds.csv, which each job trains on
    jobs = []
    for stage in stages:
        names = [r for r in by_stage[stage] if r in (runs or [])] or by_stage[stage]
        for run in names:
            jobs += [Job(stage, run, k) for k in (list(dict.fromkeys(folds)) if folds else known)]
    return jobs


class Table:
    """Every job's state on stderr: on a terminal (`live`) a table redrawn in place about once a second, with each
    state change printed above it; otherwise one line per state change. Epoch and fitness come from each job's
    progress.json, read again while the job runs and once after it ended."""

    HEAD = f"{'job':<34} {'state':<9} {'epoch':>7} {'fitness':>8}  {'time':>8}  where"

    def __init__(self, jobs: Sequence[Job], work, live: bool, stream: TextIO | None = None):
        self.jobs, self.work, self.live = list(jobs), work, live
        self.stream = stream or sys.stderr
        self._ended: dict[str, dict | None] = {}  # a job that ended: its last progress
        self._drawn, self._last = 0, 0.0

    def event(self, job: Job, text: str, lines: Sequence[str] = ()) -> None:
        """Say that `job` changed: ``label: text``, then `lines` indented."""
        self._erase()
        self.stream.write(f"{time.strftime('%H:%M:%S')} {job.label}: {text}\n")
        for line in lines:
            self.stream.write(f"    {line}\n")
        self.refresh(force=True)

    def say(self, text: str) -> None:
        self._erase()
        self.stream.write(text + "\n")
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        if not self.live or (not force and time.monotonic() - self._last < REDRAW_S):
            return
        self._erase()
        size = shutil.get_terminal_size()
        lines = self.lines(size.lines - 1)
        self.stream.write("".join(line[:size.columns - 1] + "\n" for line in lines))
        self.stream.flush()
        self._drawn, self._last = len(lines), time.monotonic()

    def close(self) -> None:
        """Draw the table a last time and leave it there: what follows is written below it."""
        self.refresh(force=True)
        self._drawn, self.live = 0, False

    def _erase(self) -> None:
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def row(self, job: Job) -> str:
        p = None
        if job.state in ("running", "retrying"):
            self._ended.pop(job.name, None)
            p = progress(self.work, job)
        elif job.state in ("done", "failed", "stopped"):
            if job.name not in self._ended:
                self._ended[job.name] = progress(self.work, job)
            p = self._ended[job.name]
        epoch = fitness = "-"
        if p and isinstance(p.get("epoch"), int) and isinstance(p.get("epochs"), int):
            epoch = f"{p['epoch']}/{p['epochs']}"
        if p and isinstance(p.get("fitness"), (int, float)) and not isinstance(p.get("fitness"), bool):
            fitness = f"{p['fitness']:.4f}"
        seconds = job.elapsed() if job.attempts else 0
        time_ = time.strftime("%H:%M:%S", time.gmtime(seconds)) if job.attempts else "-"
        return f"{job.label:<34} {job.state:<9} {epoch:>7} {fitness:>8}  {time_:>8}  {job.where}"

    def lines(self, height: int = 10 ** 6) -> list[str]:
        """The table; taller than `height`: the active and failed jobs, and a count of the others."""
        jobs = self.jobs
        if len(jobs) + 1 > height:
            jobs = [j for j in jobs if j.state in ("running", "retrying", "failed")][:max(0, height - 2)]
        lines = [self.HEAD] + [self.row(j) for j in jobs]
        if len(jobs) < len(self.jobs):
            counts = collections.Counter(j.state for j in self.jobs if j not in jobs)
            lines.append("... and " + ", ".join(f"{n} {state}" for state, n in counts.items()))
        return lines


def cmd_train(args: argparse.Namespace, cfg: dict) -> int:
    work = Work(args.work)
    if not work.folds.is_file():
        raise UserError(f"folds.csv not found at {work.folds}; run '{folds_command(work)}' first")
    if args.engine == "local" and (args.address or args.cpus_per_job):
        raise UserError(f"{'--address' if args.address else '--cpus-per-job'} is an option of --engine ray; "
                        "with --engine local, --jobs says how many jobs run at once")
    jobs = plan(cfg, work, [args.stage] if args.stage else list(STAGES), args.runs, args.folds)
    with one_grid(work):
        # every job (every node) reads this one file: the values resolved here, from --config and --set
        config = save_config(cfg, check_writable(log_dir(work) / CONFIG_NAME)).absolute()
        live = sys.stderr.isatty() and not args.quiet
        grid = Grid(work.root.absolute(), jobs, config, Table(jobs, work, live))
        if args.engine == "ray":
            return run_ray(grid, args.address, args.cpus_per_job, args.jobs)
        return run_local(grid, args.jobs or default_jobs())


@contextlib.contextmanager
def one_grid(work: Work):
    """Hold ``WORK/logs/train.lock`` while the grid runs: a second ``vinbig train`` on the same WORK stops at once
    (the two would train the same folds into the same files). The lock ends with the process, however it ends."""
    import fcntl

    path = check_writable(log_dir(work) / LOCK_NAME)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"another 'vinbig train' is training {work.root} now (it holds {path}): wait for it to "
                            "end, or stop it (Ctrl-C; a rerun resumes its folds)") from None
        yield


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def register(add) -> None:
    """Add `vinbig train` with ``add(name, func, help, description, reads=...)``."""
    p = add("train", cmd_train, "train every run x fold not trained yet, several at once (this machine or Ray)",
            "The grid of trainings: each fold of each detector and classifier run of the config (detector jobs "
            "first) that has no .trained stamp, each as its own 'python -m vinbig train-detector|train-classifier "
            "--work WORK --run R --fold K [--resume] --config WORK/logs/config_train.yaml' (the config resolved "
            "here, from --config and --set), so it writes the files of the single command; a fold with a last.pt "
            "is resumed. A job's output goes to WORK/logs/STAGE-RUN-foldK.log; on exit 0 the fold gets its "
            ".trained stamp. A table on stderr shows each job's state, epoch, fitness and time. A job that fails "
            "is shown with the end of its log while the others go on (exit code 1); one killed by a signal (out "
            "of memory) is resumed from its last.pt, twice at most. Ctrl-C stops every job and keeps what they "
            "wrote: the same command resumes them. --engine local: --jobs at once on this machine, each on its "
            "own GPU (CUDA_VISIBLE_DEVICES), else sharing the CPU cores. --engine ray (pip install "
            "'vinbig[ray]'): each job a Ray task on a GPU, or on --cpus-per-job CPUs; WORK must be the same "
            "shared folder (same path) on every node, with vinbig installed on each.",
            reads=["all"])  # every key: the jobs read the config it resolves
    p.add_argument("--work", required=True, type=Path, metavar="WORK",
                   help="work folder (vinbig images and folds done); with --engine ray, a folder every node "
                        "shares at the same path")
    p.add_argument("--stage", choices=STAGES, help="only this stage's runs (default: both, detector jobs first)")
    p.add_argument("--run", action="append", dest="runs", metavar="NAME",
                   help="only this run (repeatable); a stage none of whose runs is named trains all of them "
                        "(default: every run of the config)")
    p.add_argument("--fold", action="append", dest="folds", type=int, metavar="K",
                   help="only this fold (repeatable; default: every fold of WORK/folds.csv)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: processes on this machine; ray: tasks of a Ray cluster")
    p.add_argument("--jobs", type=_positive, metavar="N",
                   help="jobs at once (default: local, one per visible GPU, else 1; ray: as many as the cluster "
                        "holds)")
    p.add_argument("--address", metavar="ADDR",
                   help="--engine ray: the cluster to join, e.g. ray://head:10001 or head:6379 (default: "
                        "$RAY_ADDRESS, else a new local Ray of this machine)")
    p.add_argument("--cpus-per-job", type=_positive, metavar="N",
                   help="--engine ray: train on N CPUs per job (N torch threads) instead of a GPU each")
