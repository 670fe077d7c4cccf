"""The run x fold grid of trainings (``vinbig train``): each (stage, run, fold) is one job, the single command
``python -m vinbig train-detector|train-classifier --work WORK --run R --fold K [--resume] --config C`` in a process
of its own, several at once on this machine (:func:`run_local`: one per GPU, or sharing the CPU cores) or as Ray
tasks over a cluster (:func:`run_ray`).

A job writes exactly the files of the single command, appends its output to ``WORK/logs/{stage}-{run}-fold{k}.log``
and, once it exits 0, gets the ``.trained`` stamp that make writes. A fold that holds a last.pt is resumed, so a
job killed by a signal (the out-of-memory killer, a lost machine) is retried from its last epoch, at most
:data:`RETRIES` times; a job that fails on its own (a bad run config) is reported with the end of its log while
the others go on. Stopping the grid (Ctrl-C, SIGTERM) stops every job and keeps what they wrote: the next
``vinbig train`` resumes them. A job dies with the process that started it (PR_SET_PDEATHSIG): none outlives it.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence

from vinbig.artifacts import Work
from vinbig.devices import THREADS_ENV, cpu_cores
from vinbig.parallel import STOP_SIGNALS
from vinbig.errors import UserError

RETRIES = 2  # a job killed by a signal starts again from its last.pt at most this many times
STOP_GRACE_S = 5.0  # after SIGTERM, a job has this long to end before SIGKILL
TAIL_LINES = 20  # the end of a failed job's log that is shown
POLL_S = 0.2
# exit codes of a `vinbig` process stopped by a signal it turned into an interrupt (128 + SIGINT, SIGTERM, SIGHUP)
STOPPED_CODES = tuple(128 + int(s) for s in STOP_SIGNALS)
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # a folder per GPU of the NVIDIA driver (a container: its own)


@dataclass
class Job:
    """One training of the grid and where it stands; `state` is one of waiting, running, retrying, done, failed,
    skipped (already trained) or stopped."""

    stage: str
    run: str
    fold: int
    state: str = "waiting"
    attempts: int = 0
    where: str = ""  # GPU, CPU threads or Ray node of the running attempt
    started: float | None = None  # time.monotonic() when the running attempt started
    seconds: float = 0.0  # wall time of the ended attempts
    offset: int = 0  # the size of the log when this attempt started: its own output comes after
    why: str = ""  # how a failed job failed

    @property
    def name(self) -> str:
        """``{stage}-{run}-fold{k}``: the job's log is ``WORK/logs/{name}.log``."""
        return f"{self.stage}-{self.run}-fold{self.fold}"

    @property
    def label(self) -> str:
        return f"{self.stage} {self.run} fold{self.fold}"

    def elapsed(self) -> float:
        return self.seconds + (time.monotonic() - self.started if self.started is not None else 0.0)


# --------------------------------------------------------------------------- a job's files


def log_dir(work: Work | str | os.PathLike) -> Path:
    """``WORK/logs``: the job logs and the config every job reads (config_train.yaml)."""
    return Work.of(work).logs


def log_path(work, job: Job) -> Path:
    return log_dir(work) / f"{job.name}.log"


def stamp(work, job: Job) -> Path:
    """The fold's ``.trained`` stamp: it is finished (make writes it too)."""
    return Work.of(work).trained(job.stage, job.fold, job.run)


def write_stamp(work, job: Job) -> None:
    path = stamp(work, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def progress(work, job: Job) -> dict | None:
    """The fold's ``progress.json`` (epoch, epochs, fitness ... as the training writes it), or None while there is
    none or it cannot be read."""
    from vinbig.tracking import read_progress

    return read_progress(Work.of(work).fold_dir(job.stage, job.fold, job.run))


def command(work, job: Job, config: Path) -> list[str]:
    """The job's command line: the single training command, with --resume when the fold holds a last.pt."""
    work = Work.of(work)
    argv = [sys.executable, "-m", "vinbig", f"train-{job.stage}", "--work", str(work.root), "--run",
            job.run, "--fold", str(job.fold)]
    if work.checkpoint(job.stage, job.fold, "last", job.run).is_file():
        argv.append("--resume")
    return argv + ["--config", str(config)]


def job_env(gpu: str | None = None, threads: int | None = None) -> dict:
    """The environment of a job: `gpu` as CUDA_VISIBLE_DEVICES ("" hides every GPU), `threads` as VINBIG_THREADS
    (None leaves both as they are), output unbuffered so that the log follows the training."""
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if threads is not None:
        env[THREADS_ENV] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGKILL when the thread that started it ends (Linux prctl
    PR_SET_PDEATHSIG), so that no training outlives a killed `vinbig train`; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def start(work, job: Job, config: Path, env: dict) -> subprocess.Popen:
    """Start one attempt of `job` (its own process group, its output appended to its log)."""
    argv = command(work, job, config)
    path = log_path(work, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as log:
        job.offset = log.tell()
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"==== vinbig train: {job.label}, attempt {job.attempts + 1}, {when} on {socket.gethostname()}: "
                  f"{' '.join(argv)}\n".encode())
        log.flush()
        # the log's descriptor is the child's own: closing it here does not close the child's
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, preexec_fn=_die_with_parent())
    job.attempts += 1
    job.state, job.started = "running", time.monotonic()
    return proc


def stop(procs: Iterable[subprocess.Popen], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM to each process group, SIGKILL to those still running after `grace` seconds; waits for all."""
    procs = [p for p in procs if p.poll() is None]
    for p in procs:
        _signal(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    try:
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
    finally:  # also after a second Ctrl-C
        for p in procs:
            if p.poll() is None:
                _signal(p, signal.SIGKILL)
            p.wait()


def _signal(p: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signum)  # the job and what it started (data loaders, DDP workers)


def tail(work, job: Job, n: int = TAIL_LINES) -> list[str]:
    """The last `n` lines of the job's last attempt (a progress bar's last state only)."""
    try:
        with open(log_path(work, job), "rb") as f:
            f.seek(job.offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    lines = [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]  # a progress bar: its last state
    return [line for line in lines if line][-n:]


def killed_by_signal(code: int) -> bool:
    """Whether exit code `code` means the job was killed (negative: by that signal) or stopped by a signal that
    `vinbig` turned into an interrupt, rather than that it failed on its own."""
    return code < 0 or code in STOPPED_CODES


def how(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit {code}"


# --------------------------------------------------------------------------- where the jobs run


def gpu_ids() -> list[str]:
    """The GPUs this process may give its jobs, as CUDA_VISIBLE_DEVICES entries, without importing torch: those
    CUDA_VISIBLE_DEVICES names (up to an invalid entry, as CUDA reads it), else one per GPU of the NVIDIA driver
    (/proc/driver/nvidia/gpus); none without that driver."""
    try:
        n = len(list(NVIDIA_GPUS.iterdir()))
    except OSError:
        return []
    if not n:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(i) for i in range(n)]
    ids = []
    for item in visible.split(","):
        item = item.strip()
        if not item or item.startswith("-"):
            break
        ids.append(item)
    return ids


def default_jobs() -> int:
    """Jobs at once by default: one per visible GPU, else 1."""
    return max(1, len(gpu_ids()))


@dataclass(frozen=True)
class Slot:
    """Where one job runs at a time on this machine: a GPU, or a share of the CPU cores (None: the stage's own
    default, as the single command)."""

    gpu: str | None = None
    threads: int | None = None

    @property
    def where(self) -> str:
        if self.gpu is not None:
            return f"GPU {self.gpu}"
        return f"cpu, {self.threads} thread{'s' * (self.threads != 1)}" if self.threads else "cpu"


def slots(jobs: int, gpus: Sequence[str], cores: int) -> list[Slot]:
    """`jobs` slots: GPU i % len(gpus) each; without GPUs, max(1, cores // jobs) torch threads each when more than
    one job runs at once (one job keeps the stage's default)."""
    if gpus:
        return [Slot(gpu=gpus[i % len(gpus)]) for i in range(jobs)]
    return [Slot(threads=max(1, cores // jobs) if jobs > 1 else None) for _ in range(jobs)]


# --------------------------------------------------------------------------- the grid


class Report(Protocol):
    """What a grid tells its user (vinbig.app.train.Table: a live table on a terminal, else a line per change)."""

    def event(self, job: Job, text: str, lines: Sequence[str] = ()) -> None: ...  # job changed: text, lines below

    def say(self, text: str) -> None: ...

    def refresh(self, force: bool = False) -> None: ...  # called about every POLL_S seconds while jobs run

    def close(self) -> None: ...  # the jobs have ended


class Grid:
    """The jobs of one `vinbig train`, the config file they all read, and what happened to each."""

    def __init__(self, work, jobs: Sequence[Job], config: Path, table: Report):
        self.work, self.jobs, self.config, self.table = Work.of(work), list(jobs), Path(config), table

    def todo(self) -> list[Job]:
        """The jobs to run: those not trained yet (the others are marked skipped)."""
        out = []
        for job in self.jobs:
            if stamp(self.work, job).is_file():
                job.state = "skipped"
            else:
                out.append(job)
        return out

    def began(self, job: Job, where: str) -> None:
        job.where = where
        again = f"attempt {job.attempts}, " if job.attempts > 1 else ""
        self.table.event(job, f"running ({again}{where}; log {log_path(self.work, job)})")

    def ended(self, job: Job, code: int) -> bool:
        """Record the end of `job`'s attempt; True when it is to run again (killed by a signal, retries left)."""
        job.seconds, job.started = job.elapsed(), None
        took = f"{job.seconds:.0f} s"
        if code == 0:
            write_stamp(self.work, job)
            job.state = "done"
            self.table.event(job, f"done in {took}")
            return False
        if killed_by_signal(code) and job.attempts <= RETRIES:
            job.state = "retrying"
            self.table.event(job, f"{how(code)} after {took}: retrying from its last.pt (retry {job.attempts} of "
                                  f"{RETRIES})")
            return True
        self.failed(job, how(code) + (f" {job.attempts} times" if killed_by_signal(code) and job.attempts > 1
                                      else ""))
        return False

    def failed(self, job: Job, why: str, lines: Sequence[str] | None = None) -> None:
        """`job` failed (`why`: how); shown with `lines`, by default the end of its log."""
        job.state, job.why = "failed", why
        self.table.event(job, f"failed ({why}) after {job.seconds:.0f} s; the end of {log_path(self.work, job)}:"
                         if lines is None else f"failed ({why})", tail(self.work, job) if lines is None else lines)

    def stopped(self, jobs: Iterable[Job]) -> None:
        for job in jobs:
            job.seconds, job.started, job.state = job.elapsed(), None, "stopped"

    def summary(self) -> int:
        """Print a line per job and the exit code: 1 when a job failed, else 0."""
        self.table.close()
        failed = [j for j in self.jobs if j.state == "failed"]
        code = 1 if failed else 0
        lines = []
        for j in self.jobs:
            took = f" in {j.seconds:.0f} s" + (f" ({j.attempts} attempts)" if j.attempts > 1 else "")
            what = {"done": f"done{took}", "skipped": "skipped: trained before (its .trained stamp)",
                    "failed": f"failed ({j.why}){took}; log {log_path(self.work, j)}"}.get(j.state, j.state)
            lines.append(f"  {j.label}: {what}")
        counts = collections.Counter(j.state for j in self.jobs)
        lines.append(f"vinbig train: {', '.join(f'{n} {s}' for s, n in counts.items())}; exit code {code}")
        self.table.say("\n".join(lines))
        return code


def run_local(grid: Grid, jobs: int) -> int:
    """Run the grid's jobs on this machine, `jobs` at once (each on its own GPU, else sharing the CPU cores);
    the exit code (:meth:`Grid.summary`). Ctrl-C or SIGTERM stops every job (KeyboardInterrupt goes on up)."""
    pending = collections.deque(grid.todo())
    at_once = max(1, min(jobs, len(pending) or 1))
    free = slots(at_once, gpu_ids(), cpu_cores())
    running: dict[int, tuple[Job, subprocess.Popen, Slot]] = {}
    grid.table.refresh(force=True)
    try:
        while pending or running:
            while pending and free:
                job, slot = pending.popleft(), free.pop(0)
                proc = start(grid.work, job, grid.config, job_env(slot.gpu, slot.threads))
                running[proc.pid] = (job, proc, slot)
                grid.began(job, slot.where)
            time.sleep(POLL_S)
            for pid, (job, proc, slot) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[pid]
                free.append(slot)
                if grid.ended(job, code):
                    pending.appendleft(job)
            grid.table.refresh()
    except BaseException:
        stop(proc for _, proc, _ in running.values())
        grid.stopped(job for job, _, _ in running.values())
        grid.table.close()
        raise
    return grid.summary()


# --------------------------------------------------------------------------- Ray


def ray_job(work: str, job: Job, config: str, token: str, cpus: int | None) -> tuple[int, str]:
    """The Ray task of one job, on whichever node Ray chose: the same subprocess as the local engine, with the GPU
    Ray gave the task (none with `cpus`: `cpus` torch threads); marks its start for the driver's table, writes the
    stamp on exit 0; returns (exit code, node). A cancelled task stops its job as the local engine does."""
    import ray

    host = socket.gethostname()
    gpus = [str(g) for g in ray.get_gpu_ids()]
    where = (f"{host}, GPU {','.join(gpus)}" if gpus else f"{host}, {cpus} CPU{'s' * (cpus != 1)}" if cpus
             else host)
    env = job_env("" if cpus else ",".join(gpus), cpus)
    mark = log_dir(work) / f".{job.name}.started"
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.write_text(f"{token}\n{where}\n")
    proc = start(work, job, Path(config), env)
    try:
        code = proc.wait()
    except BaseException:  # ray.cancel: KeyboardInterrupt in this task
        stop([proc])
        raise
    if code == 0:
        write_stamp(work, job)
    return code, where


def _started(work, job: Job, token: str) -> str | None:
    """Where the Ray task `token` of `job` runs, once it has started."""
    try:
        mine, where = (log_dir(work) / f".{job.name}.started").read_text().splitlines()[:2]
    except (OSError, ValueError):
        return None
    return where if mine == token else None


def connect_ray(address: str | None, cpus_per_job: int | None):
    """Ray, connected: to `address` (else $RAY_ADDRESS), else a new local Ray of this machine's cores; its usage
    statistics off, no dashboard, task output not sent to this process. Refuses at once, in one line, a cluster
    whose nodes cannot hold one job (a GPU each, or `cpus_per_job` CPUs)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # before ray is imported: nothing is reported anywhere
    try:
        import ray
    except ImportError:
        raise UserError("--engine ray needs Ray, which is not installed: pip install 'vinbig[ray]' (or --engine "
                        "local)") from None
    address = address or os.environ.get("RAY_ADDRESS") or None
    options = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:  # Ray's start-up notes only with -v
        logging.getLogger("ray").setLevel(logging.ERROR)
    if address:
        _reachable(address)
    try:
        if address:
            ray.init(address=address, **options)
        else:  # a new local Ray even where a cluster runs on this machine; only then may its CPUs be given
            ray.init(address="local", num_cpus=cpu_cores(), **options)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(f"--engine ray: cannot start or reach Ray{f' at {address}' if address else ''} "
                        f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}); start the "
                        "cluster (ray start --head) or check --address / RAY_ADDRESS") from None
    where = f"the Ray cluster at {address}" if address else "the local Ray"
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    most_gpus = max((r.get("GPU", 0) for r in nodes), default=0)
    most_cpus = max((r.get("CPU", 0) for r in nodes), default=0)
    has = (f"{len(nodes)} node{'s' * (len(nodes) != 1)}, {sum(r.get('CPU', 0) for r in nodes):g} CPUs, "
           f"{sum(r.get('GPU', 0) for r in nodes):g} GPUs")
    if cpus_per_job is None and most_gpus < 1:
        ray.shutdown()
        raise UserError(f"{where} has no GPU ({has}) and each job asks for one; give --cpus-per-job N to train "
                        "on N CPUs per job, or add nodes with GPUs")
    if cpus_per_job is not None and most_cpus < cpus_per_job:
        ray.shutdown()
        raise UserError(f"--cpus-per-job {cpus_per_job}: no node of {where} has that many CPUs ({has}, at most "
                        f"{most_cpus:g} on one node); give --cpus-per-job {max(1, int(most_cpus))} or less")
    return ray


def _reachable(address: str, timeout: float = 10.0) -> None:
    """Refuse at once a cluster address (``host:port``, ``ray://host:port``) where nothing answers: Ray itself
    would try for minutes. ``auto`` and other forms are left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise UserError(f"--engine ray: nothing answers at {address} ({e.strerror or type(e).__name__}); start the "
                        "cluster there (ray start --head) or give its address with --address or RAY_ADDRESS") from None


def run_ray(grid: Grid, address: str | None = None, cpus_per_job: int | None = None,
            jobs: int | None = None) -> int:
    """Run the grid's jobs as Ray tasks (one GPU each, or `cpus_per_job` CPUs each), at most `jobs` in flight
    (None: all, Ray queues them); WORK must be the same folder on every node. A task whose worker or node dies is
    retried by Ray (max_retries=2); a job killed by a signal is run again from its last.pt. The exit code."""
    pending = collections.deque(grid.todo())
    if not pending:
        return grid.summary()
    ray = connect_ray(address, cpus_per_job)
    try:
        need = {"num_cpus": cpus_per_job, "num_gpus": 0} if cpus_per_job else {"num_gpus": 1}
        task = ray.remote(ray_job).options(max_retries=2, retry_exceptions=False, **need)
        inflight: dict = {}
        grid.table.refresh(force=True)
        try:
            while pending or inflight:
                while pending and (jobs is None or len(inflight) < jobs):
                    job = pending.popleft()
                    token = uuid.uuid4().hex
                    ref = task.remote(str(grid.work.root), job, str(grid.config), token, cpus_per_job)
                    job.where, job.offset = "queued in Ray", 0
                    inflight[ref] = (job, token)
                done, _ = ray.wait(list(inflight), num_returns=1, timeout=POLL_S * 5)
                for ref in done:
                    job, token = inflight.pop(ref)
                    _mark_running(grid, job, token)
                    try:
                        code, where = ray.get(ref)
                    except ray.exceptions.RayError as e:  # its worker or node died 1 + max_retries times, or a raise
                        grid.stopped([job])
                        text = str(e).strip().splitlines()
                        grid.failed(job, f"Ray: {type(e).__name__}", text[-TAIL_LINES:])
                        continue
                    job.where = where
                    job.attempts = max(job.attempts, 1)
                    job.offset = _attempt_offset(grid.work, job)
                    if code == 0 and not _appears(grid.work.checkpoint(job.stage, job.fold, "best", job.run)):
                        grid.stopped([job])
                        grid.failed(job, f"its weights are not in {grid.work.root} as this machine sees it", [
                            f"the job exited 0 on {where}: WORK must be one folder that every node shares, at the "
                            "same path (a network file system), with the same files"])
                        continue
                    if grid.ended(job, code):
                        pending.appendleft(job)
                for job, token in inflight.values():
                    _mark_running(grid, job, token)
                grid.table.refresh()
        except BaseException:
            _cancel(ray, list(inflight))
            grid.stopped(job for job, _ in inflight.values())
            grid.table.close()
            raise
    finally:
        ray.shutdown()
    return grid.summary()


def _mark_running(grid: Grid, job: Job, token: str) -> None:
    """A job whose task has started (its mark names the token) shows as running, from now on this machine's clock."""
    if job.state in ("running",):
        return
    where = _started(grid.work, job, token)
    if where is not None:
        job.attempts += 1
        job.state, job.started = "running", time.monotonic()
        grid.began(job, where)


def _appears(path: Path, wait: float = 10.0) -> bool:
    """Whether `path` is there, or appears within `wait` seconds (a network file system's attribute cache)."""
    deadline = time.monotonic() + wait
    while not path.is_file():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def _attempt_offset(work, job: Job) -> int:
    """Where the last attempt's output starts in the job's log (after its last header line)."""
    try:
        data = log_path(work, job).read_bytes()
    except OSError:
        return 0
    i = data.rfind(b"==== vinbig train: ")
    return max(0, i)


def _cancel(ray, refs: list) -> None:
    """Stop the tasks of `refs`: an interrupt first (each task stops its job with SIGTERM), then the workers."""
    for ref in refs:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=False)
    deadline = time.monotonic() + STOP_GRACE_S + 2
    with contextlib.suppress(Exception):
        ray.wait(refs, num_returns=len(refs), timeout=max(0.0, deadline - time.monotonic()))
    for ref in refs:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)
