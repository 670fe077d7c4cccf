"""`vinbig train`: the run x fold grid. Each job is the single training command in its own process and writes its
files; several run at once (a GPU each, or a share of the cores); a job that fails is shown with its log's end
while the others finish; a killed job resumes from its last.pt; a stopped or killed grid leaves no training behind
and the next `vinbig train` resumes it; Ray runs the same jobs.

The scheduler's own promises run on stand-in jobs (a small script in place of the training command: seconds);
the tests marked slow train real tiny detectors."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import vinbig.grid as grid
from vinbig.app.cli import main
from vinbig.app.train import Table
from vinbig.artifacts import Work

from tiny import TINY, set_args

RUNS = "runs.detector={a: {}, b: {seed: 1}}"

# A stand-in for a training job: records its argv and environment as WORK/fake/NAME.ATTEMPT.json, then does what
# WORK/fake.json says for this job and attempt ("ok", "fail", "kill": SIGKILL itself, "sleep": wait to be stopped,
# recording the signal that stops it).
FAKE_JOB = r'''
import json, os, signal, sys, time
from pathlib import Path

argv = sys.argv[1:]
work = Path(argv[argv.index("--work") + 1])
name = f"{argv[0][len('train-'):]}-{argv[argv.index('--run') + 1]}-fold{argv[argv.index('--fold') + 1]}"
out = work / "fake"
out.mkdir(exist_ok=True)
attempt = len(list(out.glob(f"{name}.*.json")))
record = {"argv": argv, "env": {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "VINBIG_THREADS")},
          "pid": os.getpid(), "started": time.time()}
(out / f"{name}.{attempt}.json").write_text(json.dumps(record))
plan = json.loads((work / "fake.json").read_text()).get(name, ["ok"])
what = plan[min(attempt, len(plan) - 1)]
print(f"fake {name} attempt {attempt}: {what}", flush=True)
if what == "fail":
    print("ConfigError: detector.model: weights file /nowhere/x.pt not found", flush=True)
    sys.exit(2)
if what == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
if what == "sleep":
    def stopped(signum, frame):
        (out / f"{name}.stopped").write_text(signal.Signals(signum).name)
        sys.exit(143)
    signal.signal(signal.SIGTERM, stopped)
    time.sleep(60)
sys.exit(0)
'''


@pytest.fixture
def fake_jobs(tmp_path, monkeypatch):
    """Jobs run the stand-in script (with the training command's arguments) instead of training; returns
    plan(**{job: [what per attempt]}) and records(job) -> the recorded attempts."""
    script = tmp_path / "fake_job.py"
    script.write_text(FAKE_JOB)
    real = grid.command
    monkeypatch.setattr(grid, "command", lambda work, job, config, python=None:
                        [sys.executable, str(script), *real(work, job, config)[3:]])

    def plan(work: Path, **what) -> None:
        (work / "fake.json").write_text(json.dumps({k.replace("_", "-"): v for k, v in what.items()}))

    def records(work: Path, name: str) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((work / "fake").glob(f"{name}.*.json"))]

    return plan, records


@pytest.fixture
def fake_work(tmp_path) -> Path:
    """A WORK with a folds.csv (the stand-in jobs read nothing else)."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "folds.csv").write_text("image_id,fold\na,0\nb,1\n")
    return work


def train(work: Path, *argv: str) -> int:
    return main(["train", "--work", str(work), "--stage", "detector", "-q", "--set", "folds.n_folds=2", "--set",
                 RUNS, *argv])


# --------------------------------------------------------------------------- the scheduler, on stand-in jobs


def test_each_job_gets_its_own_gpu_or_a_share_of_the_cores(fake_work, fake_jobs, monkeypatch, capsys):
    plan, records = fake_jobs
    plan(fake_work)
    monkeypatch.delenv("VINBIG_THREADS", raising=False)
    gpus = fake_work / "nvidia"
    for i in range(2):
        (gpus / f"0000:0{i}:00.0").mkdir(parents=True)
    monkeypatch.setattr(grid, "NVIDIA_GPUS", gpus)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # this session's GPUs: the jobs get those
    assert train(fake_work) == 0  # --jobs: one per GPU
    used = {name: records(fake_work, name)[0]["env"] for name in ("detector-a-fold0", "detector-a-fold1",
                                                                    "detector-b-fold0", "detector-b-fold1")}
    assert {e["CUDA_VISIBLE_DEVICES"] for e in used.values()} == {"2", "3"}
    assert all(e["VINBIG_THREADS"] is None for e in used.values())

    monkeypatch.setattr(grid, "NVIDIA_GPUS", fake_work / "none")  # a CPU machine of 4 cores, 2 jobs at once
    monkeypatch.setattr(grid, "cpu_cores", lambda: 4)
    for stamp in fake_work.glob("detector/*/fold*/.trained"):
        stamp.unlink()
    assert train(fake_work, "--jobs", "2") == 0
    assert {records(fake_work, "detector-a-fold0")[1]["env"]["VINBIG_THREADS"]} == {"2"}
    for stamp in fake_work.glob("detector/*/fold*/.trained"):
        stamp.unlink()
    assert train(fake_work, "--jobs", "1") == 0  # one at a time: the stage's own default, as the single command
    assert records(fake_work, "detector-a-fold0")[2]["env"]["VINBIG_THREADS"] is None


def test_jobs_run_at_once_and_every_one_is_the_single_command_with_the_resolved_config(fake_work, fake_jobs):
    plan, records = fake_jobs
    plan(fake_work)
    assert train(fake_work, "--jobs", "2", "--set", "detector.epochs=7") == 0
    names = ["detector-a-fold0", "detector-a-fold1", "detector-b-fold0", "detector-b-fold1"]
    config = fake_work / "logs" / "config_train.yaml"
    for name in names:
        [r] = records(fake_work, name)
        stage, run, fold = name.split("-")
        assert r["argv"] == [f"train-{stage}", "--work", str(fake_work.absolute()), "--run", run, "--fold",
                             fold[4:], "--config", str(config.absolute())]
        assert (fake_work / stage / run / fold / ".trained").is_file()
        assert f"fake {name} attempt 0: ok" in (fake_work / "logs" / f"{name}.log").read_text()
    saved = yaml.safe_load(config.read_text())
    assert saved["detector"]["epochs"] == 7 and list(saved["runs"]["detector"]) == ["a", "b"]
    starts = sorted(records(fake_work, n)[0]["started"] for n in names)
    assert starts[1] - starts[0] < 1.0  # the first two started together


def test_a_failing_job_is_shown_with_its_log_and_the_others_finish(fake_work, fake_jobs, capsys):
    plan, records = fake_jobs
    plan(fake_work, detector_b_fold0=["fail"])
    assert train(fake_work, "--jobs", "2") == 1
    err = capsys.readouterr().err
    assert "detector b fold0: failed (exit 2)" in err
    assert "weights file /nowhere/x.pt not found" in err  # the end of its log
    assert not (fake_work / "detector/b/fold0/.trained").exists()
    for done in ("a/fold0", "a/fold1", "b/fold1"):
        assert (fake_work / "detector" / done / ".trained").is_file()
    assert "exit code 1" in err.splitlines()[-1]
    # the next run trains only what is not trained yet
    plan(fake_work)
    assert train(fake_work) == 0
    assert [len(records(fake_work, n)) for n in ("detector-a-fold0", "detector-b-fold0")] == [1, 2]
    assert "detector a fold0: skipped" in capsys.readouterr().err


def test_a_job_killed_by_a_signal_is_resumed_twice_at_most(fake_work, fake_jobs, capsys):
    plan, records = fake_jobs
    last = Work(fake_work).checkpoint("detector", 0, "last", "a")
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")  # an interrupted fold: resumed
    plan(fake_work, detector_a_fold0=["kill", "ok"], detector_b_fold0=["kill"])
    assert train(fake_work, "--fold", "0") == 1
    err = capsys.readouterr().err
    a = records(fake_work, "detector-a-fold0")
    assert len(a) == 2 and a[1]["argv"][-3] == "--resume" and (fake_work / "detector/a/fold0/.trained").is_file()
    assert "detector a fold0: killed by SIGKILL" in err and "retrying from its last.pt" in err
    assert len(records(fake_work, "detector-b-fold0")) == 1 + grid.RETRIES
    assert "detector b fold0: failed (killed by SIGKILL 3 times)" in err


def start_grid(work: Path, tmp_path: Path) -> subprocess.Popen:
    """`vinbig train` of 2 runs x 2 folds, 2 at once, on the stand-in jobs, as a process of its own."""
    runner = ("import sys, vinbig.grid as g; from vinbig.app.cli import main; real = g.command\n"
              f"g.command = lambda w, j, c, p=None: [sys.executable, {str(tmp_path / 'fake_job.py')!r}, "
              "*real(w, j, c)[3:]]\nsys.exit(main(sys.argv[1:]))")
    return subprocess.Popen([sys.executable, "-c", runner, "train", "--work", str(work), "--stage", "detector",
                             "--jobs", "2", "-q", "--set", "folds.n_folds=2", "--set", RUNS],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def running_jobs(work: Path, proc: subprocess.Popen, records) -> list[int]:
    """The pids of the first two stand-in jobs, once both run and have set their SIGTERM handler."""
    deadline = time.monotonic() + 30
    while len(list((work / "fake").glob("*.json"))) < 2:
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
    time.sleep(0.5)
    return [r["pid"] for n in ("detector-a-fold0", "detector-a-fold1") for r in records(work, n)]


def test_sigterm_stops_every_job_and_leaves_none_running(fake_work, fake_jobs, tmp_path):
    """`vinbig train` stopped (a scheduler's SIGTERM, Ctrl-C) stops its jobs with SIGTERM and exits 143 at once."""
    plan, records = fake_jobs
    plan(fake_work, **{f"detector_{r}_fold{k}": ["sleep"] for r in "ab" for k in (0, 1)})
    proc = start_grid(fake_work, tmp_path)
    pids = running_jobs(fake_work, proc, records)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 143 and time.monotonic() - t0 < grid.STOP_GRACE_S
    assert "stopped by SIGTERM" in proc.stderr.read()
    assert all((fake_work / "fake" / f"{n}.stopped").read_text() == "SIGTERM"
               for n in ("detector-a-fold0", "detector-a-fold1"))
    assert not any(alive(pid) for pid in pids)
    assert not list((fake_work / "fake").glob("detector-b-*"))  # the waiting jobs never started


def test_a_grid_killed_with_sigkill_takes_its_jobs_with_it(fake_work, fake_jobs, tmp_path):
    plan, records = fake_jobs
    plan(fake_work, **{f"detector_{r}_fold{k}": ["sleep"] for r in "ab" for k in (0, 1)})
    proc = start_grid(fake_work, tmp_path)
    pids = running_jobs(fake_work, proc, records)
    os.killpg(proc.pid, signal.SIGKILL)  # its process group: the jobs run in their own
    proc.wait()
    deadline = time.monotonic() + 5
    try:
        while any(alive(pid) for pid in pids):
            assert time.monotonic() < deadline, "a job outlived the vinbig train that started it"
            time.sleep(0.1)
    finally:
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


# --------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("argv, words", [
    (["--run", "c"], ["--run c is not a run of the config", "detector runs: a, b"]),
    (["--fold", "2"], ["fold 2 is not in", "folds.csv, whose folds are [0, 1]", "--fold 0..1"]),
    (["--cpus-per-job", "2"], ["--cpus-per-job is an option of --engine ray"]),
    (["--jobs", "0"], ["--jobs", "'0' is not a whole number >= 1"]),
])
def test_a_wrong_run_fold_or_option_is_one_line(fake_work, argv, words, capsys):
    try:
        code = train(fake_work, *argv)
    except SystemExit as e:  # argparse's refusal
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert not (fake_work / "logs").exists()


def test_without_folds_csv_it_says_to_run_vinbig_folds(tmp_path, capsys):
    assert main(["train", "--work", str(tmp_path / "work"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "folds.csv not found" in err and "vinbig folds --train-csv" in err


def test_a_second_grid_on_the_same_work_stops_at_once_and_runs_nothing(fake_work, fake_jobs, capsys):
    import fcntl

    plan, records = fake_jobs
    plan(fake_work)
    (fake_work / "logs").mkdir()
    with open(fake_work / "logs" / "train.lock", "a") as held:  # the first `vinbig train`, still running
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert train(fake_work) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "another 'vinbig train' is training" in err, err
        assert not records(fake_work, "detector-a-fold0") and not (fake_work / "logs" / "config_train.yaml").exists()
    assert train(fake_work) == 0  # once it has ended
    assert records(fake_work, "detector-a-fold0")


def test_the_table_shows_epoch_and_fitness_once_progress_json_is_there(fake_work, monkeypatch):
    jobs = [grid.Job("detector", "a", 0), grid.Job("detector", "a", 1), grid.Job("classifier", "default", 0)]
    jobs[0].state, jobs[0].attempts, jobs[0].started = "running", 1, time.monotonic() - 65
    jobs[1].state, jobs[1].attempts, jobs[1].started = "running", 1, time.monotonic()
    fold = Work(fake_work).fold_dir("detector", 0, "a")
    fold.mkdir(parents=True)
    (fold / "progress.json").write_text(json.dumps({"stage": "detector", "run": "a", "fold": 0, "epoch": 2,
                                                    "epochs": 3, "fitness": 0.12345, "metrics": {}}))
    table = Table(jobs, fake_work, live=False)
    head, first, second, third = table.lines()
    assert first.split()[3:7] == ["running", "2/3", "0.1235", "00:01:05"]
    assert second.split()[3:6] == ["running", "-", "-"]  # no progress.json yet
    assert third.split()[3:7] == ["waiting", "-", "-", "-"]
    short = table.lines(height=3)  # a terminal too small: the running jobs and a count of the others
    assert len(short) == 3 and short[1] == first and short[-1] == "... and 1 running, 1 waiting"


# --------------------------------------------------------------------------- real trainings


def _files(fold: Path) -> set[str]:
    return {p.relative_to(fold).as_posix() for p in fold.rglob("*") if p.is_file()} - {"progress.json"}


@pytest.mark.slow
def test_two_runs_by_two_folds_two_at_once_write_what_the_single_command_writes(work_copy, synth_work, tmp_path,
                                                                                capsys):
    from conftest import own_work

    work = work_copy.work
    # the shared WORK's folds.csv has 3 folds (every one by default): two of them
    assert main(["train", "--work", str(work), "--stage", "detector", "--fold", "0", "--fold", "1", "--jobs", "2",
                 "-q", *set_args(TINY), "--set", RUNS]) == 0
    single = own_work(synth_work, tmp_path / "single")  # one fold by the single command, for comparison
    assert main(["train-detector", "--work", str(single), "--run", "a", "--fold", "0", "-q", *set_args(TINY),
                 "--set", RUNS], pipeline=True) == 0
    expected = _files(single / "detector/a/fold0")
    assert {"weights/best.pt", "weights/last.pt", "config_detector.yaml", "args.yaml"} <= expected
    for run in ("a", "b"):
        for k in (0, 1):
            fold = work / "detector" / run / f"fold{k}"
            assert _files(fold) == expected | {".trained"}, fold
            assert (work / "logs" / f"detector-{run}-fold{k}.log").stat().st_size > 0
    assert ((work / "detector/a/fold0/config_detector.yaml").read_text()
            == (single / "detector/a/fold0/config_detector.yaml").read_text())
    assert yaml.safe_load((work / "detector/b/fold1/config_detector.yaml").read_text())["detector"]["seed"] == 1
    assert sorted(p.name for p in (work / "logs").glob("*.log")) == [
        "detector-a-fold0.log", "detector-a-fold1.log", "detector-b-fold0.log", "detector-b-fold1.log"]
    assert "4 done; exit code 0" in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_whose_model_is_missing_fails_alone(work_copy, capsys):
    work = work_copy.work
    runs = "runs.detector={a: {}, bad: {model: /nowhere/yolo.pt}}"
    code = main(["train", "--work", str(work), "--stage", "detector", "--fold", "0", "--jobs", "2", "-q",
                 *set_args(TINY), "--set", runs])
    err = capsys.readouterr().err
    assert code == 1
    assert "detector bad fold0: failed (exit 2)" in err and "weights file /nowhere/yolo.pt not found" in err
    assert (work / "detector/a/fold0/.trained").is_file() and (work / "detector/a/fold0/weights/best.pt").is_file()


def _pids(*words: str) -> list[int]:
    """The processes whose command line holds each of `words` as an argument."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if all(w in argv for w in words):
                found.append(int(d.name))
    return found


def _wait_for(what, timeout: float = 120, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while not (value := what()):
        assert time.monotonic() < deadline, "timed out"
        assert proc is None or proc.poll() is None, f"vinbig train ended: {proc.returncode}"
        time.sleep(0.05)
    return value


@pytest.mark.slow
def test_a_killed_job_resumes_and_a_killed_grid_leaves_no_training_and_resumes(work_copy, tmp_path):
    work = work_copy.work
    argv = [sys.executable, "-m", "vinbig", "train", "--work", str(work), "--stage", "detector", "-q",
            *set_args(TINY), "--set", "detector.epochs=5"]

    def start(fold: int, log: str) -> subprocess.Popen:
        with open(tmp_path / log, "w") as err:
            return subprocess.Popen(argv + ["--fold", str(fold)], stderr=err, start_new_session=True)

    def after_first_epoch(fold: int, proc) -> int:
        last = Work(work).checkpoint("detector", fold, "last")
        _wait_for(last.is_file, proc=proc)
        time.sleep(0.3)  # not while last.pt is written
        [pid] = _pids("train-detector", str(work.absolute()), "--fold", str(fold))
        return pid

    # a job killed (the out-of-memory killer): run again from its last.pt, and finished
    proc = start(0, "grid0.err")
    os.kill(after_first_epoch(0, proc), signal.SIGKILL)
    assert proc.wait(timeout=300) == 0, (tmp_path / "grid0.err").read_text()
    log = (work / "logs" / "detector-default-fold0.log").read_text()
    assert "attempt 2" in log and log.split("attempt 2")[1].splitlines()[0].endswith(
        f"--fold 0 --resume --config {work.absolute()}/logs/config_train.yaml")
    assert last_epoch(work / "detector/default/fold0") == 5
    assert "killed by SIGKILL" in (tmp_path / "grid0.err").read_text()

    # the whole `vinbig train` killed: its job dies with it; the next run resumes the fold and skips the trained one
    proc = start(1, "grid1.err")
    job = after_first_epoch(1, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _wait_for(lambda: not alive(job), timeout=10)
    assert not (work / "detector/default/fold1/.trained").exists()
    with open(tmp_path / "grid2.err", "w") as err:
        assert subprocess.run(argv, stderr=err, timeout=300).returncode == 0
    out = (tmp_path / "grid2.err").read_text()
    assert "detector default fold0: skipped" in out and "detector default fold1: done" in out
    log = (work / "logs" / "detector-default-fold1.log").read_text()
    assert log.count("==== vinbig train:") == 2 and log.rsplit("==== vinbig train:", 1)[1].splitlines()[0].endswith(
        "--resume --config " + str(work.absolute() / "logs" / "config_train.yaml"))
    assert last_epoch(work / "detector/default/fold1") == 5


def last_epoch(fold: Path) -> int:
    import pandas as pd

    df = pd.read_csv(fold / "results.csv")
    return int(df[[c for c in df.columns if c.strip() == "epoch"][0]].iloc[-1])


@pytest.mark.slow
def test_ray_trains_the_grid_on_cpus_and_without_a_gpu_or_cpus_per_job_refuses_at_once(work_copy, capsys,
                                                                                       monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(grid, "cpu_cores", lambda: 2)  # the local Ray's size
    work = work_copy.work
    t0 = time.monotonic()
    assert main(["train", "--work", str(work), "--engine", "ray", "-q", *set_args(TINY), "--set", RUNS]) == 2
    err = capsys.readouterr().err.strip()
    assert time.monotonic() - t0 < 60 and len(err.splitlines()) == 1
    assert "the local Ray has no GPU (1 node, 2 CPUs, 0 GPUs)" in err and "--cpus-per-job N" in err
    assert not list(work.glob("detector/*/fold*"))

    assert main(["train", "--work", str(work), "--engine", "ray", "--cpus-per-job", "1", "--stage", "detector",
                 "--fold", "0", "--fold", "1", "-q", *set_args(TINY), "--set", RUNS]) == 0
    err = capsys.readouterr().err
    for run in ("a", "b"):
        for k in (0, 1):
            fold = work / "detector" / run / f"fold{k}"
            assert (fold / ".trained").is_file() and (fold / "weights/best.pt").is_file()
            assert (fold / "config_detector.yaml").is_file()
    assert ", 1 CPU; log " in err and "4 done; exit code 0" in err
