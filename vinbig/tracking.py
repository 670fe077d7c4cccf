"""A training's epoch log: ``progress.json`` in every fold's folder, and the experiment tracker of the config.

Every training (detector and classifier, fold K of run R) writes ``WORK/{stage}/{run}/fold{k}/progress.json`` at
its start and after each epoch, atomically (a file beside it, then renamed): ``stage``, ``run``, ``fold``,
``epoch`` (epochs completed), ``epochs``, ``fitness`` (the stage's validation figure of the last epoch: ultralytics'
fitness, the classifier's validation AUC; null before the first), ``metrics`` (the last epoch's losses and metrics),
``elapsed_s`` (training seconds over every session of the fold: a resumed fold adds to the earlier figure) and
``finished`` (true once the training ended normally). ``vinbig runs`` and the live table of a grid read it.

The config's ``tracking.backend`` adds one tracker, off by default (``none``):

- ``tensorboard``: event files in the fold's folder, a scalar per metric and epoch (``tensorboard --logdir WORK``);
- ``mlflow``: a parent run per vinbig run (tags ``vinbig.stage``, ``vinbig.run``, ``vinbig.work``), a nested child
  run per fold (tag ``vinbig.fold``) with the run's config section as params and a metric per epoch (step: the
  epoch); ``vinbig tune`` and ``vinbig report`` log the OOF mAP on the run ``fusion``. The store is
  ``tracking.uri``, else ``sqlite:///WORK/mlflow.db``; MLflow's telemetry is turned off;
- ``wandb``: a W&B run per fold (project ``tracking.experiment``, group the vinbig run), offline unless
  ``WANDB_MODE`` says otherwise (``wandb sync`` uploads it later).

Nothing leaves the machine unless ``tracking.uri`` names a remote server or ``WANDB_MODE`` is online. A tracker that
cannot start is an error before the training (one line: the missing package and its ``pip install``, the store that
failed); one that fails later is a warning, and the training goes on without it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from vinbig.artifacts import Work, atomic_path
from vinbig.errors import ConfigError, cause

logger = logging.getLogger(__name__)

BACKENDS = ("none", "tensorboard", "mlflow", "wandb")
PROGRESS = "progress.json"
# the package each backend imports, and the extra of vinbig that installs it
_PACKAGES = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"),
             "wandb": ("wandb", "wandb")}
_MLFLOW_PARAM_CHARS = 500  # the shortest value length MLflow servers take
_MLFLOW_NAME = re.compile(r"[^\w./\- :]")  # what MLflow refuses in a metric name: ultralytics' "mAP50(B)"


@dataclass(frozen=True)
class Tracking:
    """The config's ``tracking`` section: the backend, MLflow's store (None: WORK/mlflow.db) and the experiment."""

    backend: str = "none"
    uri: str | None = None
    experiment: str = "vinbig"

    @classmethod
    def of(cls, cfg: Mapping) -> "Tracking":
        """The ``tracking`` section of a resolved config (each of its keys read)."""
        t = cfg["tracking"]
        return cls(t["backend"], t["uri"], t["experiment"])

    def check(self) -> None:
        """Import the backend's package now: a missing one is one ConfigError naming its ``pip install``."""
        if self.backend not in BACKENDS:
            raise ConfigError(f"tracking.backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.backend != "none":
            _import(self.backend)

    def store(self, work: Work) -> str:
        """MLflow's tracking URI: tracking.uri, else the local store ``sqlite:///<absolute WORK>/mlflow.db``."""
        return self.uri or f"sqlite:///{Path(work.root).resolve() / 'mlflow.db'}"


def _import(backend: str):
    module, extra = _PACKAGES[backend]
    if backend == "mlflow":
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # MLflow would send usage events to its servers
    try:
        imported = __import__(module, fromlist=["_"])
    except ImportError:
        raise ConfigError(f"tracking.backend {backend}: the {extra} package is not installed; "
                          f"pip install 'vinbig[{extra}]', or set tracking.backend none") from None
    if backend == "mlflow":
        with contextlib.suppress(Exception):  # imported before the variable was set: its client goes now
            from mlflow.telemetry.client import set_telemetry_client

            set_telemetry_client()
        level = max(logging.getLogger().getEffectiveLevel(), logging.INFO)  # -q: its store's set-up lines too
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(level)
    return imported


def read_progress(fold_dir: str | os.PathLike) -> dict | None:
    """A fold's progress.json as a dict; None when it is missing or unreadable."""
    try:
        data = json.loads((Path(fold_dir) / PROGRESS).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _number(value) -> float | None:
    """A metric as a plain float (ultralytics gives numpy scalars and tensors); None when it is not a number."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class Tracker:
    """The epoch log of one fold's training: progress.json and the configured backend.

    ``start`` (in the training process, before the first epoch) opens the backend, ``epoch`` logs each epoch,
    ``end`` closes. Picklable: ultralytics hands the callbacks to its DDP workers, where the backend is opened again
    (the MLflow runs stay the same ones)."""

    def __init__(self, work: Work | str | os.PathLike, stage: str, run: str, fold: int,
                 tracking: Tracking | None = None, params: Mapping[str, Any] | None = None, resume: bool = False):
        self.work = Work.of(work)
        self.stage, self.run, self.fold = stage, run, int(fold)
        self.tracking = tracking or Tracking()
        self.params = {f"{stage}.{k}": v for k, v in (params or {}).items()}
        self.resume = resume
        self.dir = self.work.fold_dir(stage, fold, run)
        self.done, self.epochs = 0, 0
        self.fitness: float | None = None
        self.metrics: dict[str, float] = {}
        self.earlier_s: float | None = None  # the seconds of the fold's earlier sessions; None: not started
        self.t0 = 0.0
        self.parent_id: str | None = None  # MLflow runs
        self.run_id: str | None = None
        self._live: dict[str, Any] = {}  # this process's open handles: writer, client, wandb run
        self._warned: set[str] = set()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_live"] = {}
        return state

    @property
    def name(self) -> str:
        return f"{self.stage}-{self.run}-fold{self.fold}"

    # ------------------------------------------------------------------ the training's events

    def check(self) -> None:
        """Before any work: the backend's package is there (:meth:`Tracking.check`)."""
        self.tracking.check()

    def start(self, done: int, epochs: int, backend: bool = True) -> None:
        """The training starts (or goes on) after `done` of `epochs` epochs: write progress.json and open the
        backend (`backend` False: only what outlives this process, the MLflow runs; a DDP launcher, whose workers
        train). A backend that cannot start is a ConfigError, before any epoch."""
        if self.earlier_s is None:  # the first start of this session: its clock starts now
            earlier = read_progress(self.dir) if self.resume else None
            self.earlier_s = _number((earlier or {}).get("elapsed_s")) or 0.0
            self.t0 = time.time()
        self.done, self.epochs = int(done), int(epochs)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write(False)
        b = self.tracking.backend
        try:
            if b == "mlflow":
                self._mlflow_runs()
                if backend:
                    self._client()
            elif b == "tensorboard" and backend:
                self._writer()
            elif b == "wandb" and backend:
                self._wandb()
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(f"tracking.backend {b}: {cause(e)}; {self._fix()}") from None

    def epoch(self, done: int, epochs: int, metrics: Mapping[str, Any], fitness: Any = None) -> None:
        """Epoch `done` (1-based: epochs completed) of `epochs` ended with `metrics` and the validation `fitness`."""
        self.done, self.epochs = int(done), int(epochs)
        self.metrics = {k: v for k, v in ((str(k), _number(v)) for k, v in metrics.items()) if v is not None}
        self.fitness = _number(fitness)
        self._write(False)
        b = self.tracking.backend
        if b == "none" or b in self._warned:
            return
        try:
            if b == "tensorboard":
                writer = self._writer()
                for key, value in self.metrics.items():
                    writer.add_scalar(key, value, self.done)
                writer.flush()
            elif b == "mlflow":
                from mlflow.entities import Metric

                stamp = int(time.time() * 1000)
                self._client().log_batch(self.run_id, metrics=[Metric(_mlflow_key(k), v, stamp, self.done)
                                                               for k, v in self.metrics.items()])
            elif b == "wandb":
                self._wandb().log(dict(self.metrics), step=self.done)
        except Exception as e:
            self._warn(b, e)

    def end(self, finished: bool, status: str = "FAILED") -> None:
        """The training stopped: normally (`finished`: progress.json says so), or by an error or an interrupt
        (progress.json stays as the last epoch left it; the MLflow runs get `status`, FAILED or KILLED)."""
        if self.earlier_s is None:
            return
        if finished:
            self._write(True)
        b = self.tracking.backend
        try:
            if b == "tensorboard" and "writer" in self._live:
                self._live.pop("writer").close()
            elif b == "mlflow" and self.run_id and b not in self._warned:
                client = self._client()
                client.set_terminated(self.run_id, "FINISHED" if finished else status)
                with _locked(self.work):  # the parent ends with its last running fold (the grid runs several)
                    experiment = client.get_run(self.run_id).info.experiment_id
                    running = client.search_runs([experiment], max_results=1, filter_string=(
                        f"tags.mlflow.parentRunId = '{self.parent_id}' and attributes.status = 'RUNNING'"))
                    if not running:
                        client.set_terminated(self.parent_id, "FINISHED" if finished else status)
            elif b == "wandb" and "wandb" in self._live:
                self._live.pop("wandb").finish(exit_code=0 if finished else 1)
        except Exception as e:
            self._warn(b, e)

    @contextlib.contextmanager
    def session(self) -> Iterator["Tracker"]:
        """A block that trains: the tracker is ended as not finished when it raises (an error, Ctrl-C)."""
        try:
            yield self
        except BaseException as e:
            with contextlib.suppress(Exception):
                self.end(False, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            raise

    # ------------------------------------------------------------------ progress.json

    def progress(self, finished: bool = False) -> dict:
        """progress.json as this process knows it now."""
        elapsed = (self.earlier_s or 0.0) + (time.time() - self.t0 if self.earlier_s is not None else 0.0)
        return {"stage": self.stage, "run": self.run, "fold": self.fold, "epoch": self.done, "epochs": self.epochs,
                "fitness": self.fitness, "metrics": dict(self.metrics), "elapsed_s": round(elapsed, 3),
                "finished": bool(finished)}

    def _write(self, finished: bool) -> None:
        try:
            with atomic_path(self.dir / PROGRESS) as tmp:
                tmp.write_text(json.dumps(self.progress(finished), indent=1))
        except OSError as e:
            if PROGRESS not in self._warned:
                self._warned.add(PROGRESS)
                logger.warning("cannot write %s (%s); the training goes on without it", self.dir / PROGRESS,
                               e.strerror or e)

    # ------------------------------------------------------------------ the backends

    def _warn(self, backend: str, e: BaseException) -> None:
        if backend not in self._warned:
            self._warned.add(backend)
            logger.warning("tracking.backend %s failed for %s (%s); the training goes on without it", backend,
                           self.name, cause(e))

    def _fix(self) -> str:
        if self.tracking.backend == "mlflow":
            return (f"check tracking.uri ({self.tracking.store(self.work)}) and tracking.experiment "
                    f"({self.tracking.experiment!r}), or set tracking.backend none")
        return "or set tracking.backend none"

    def _writer(self):
        if "writer" not in self._live:
            SummaryWriter = _import("tensorboard").SummaryWriter
            # events of an earlier session after the epoch this one starts from (a fresh start: all) are hidden
            self._live["writer"] = SummaryWriter(log_dir=str(self.dir), purge_step=self.done + 1 if self.resume
                                                 else 0)
        return self._live["writer"]

    def _wandb(self):
        if "wandb" not in self._live:
            wandb = _import("wandb")
            self._live["wandb"] = wandb.init(
                mode=os.environ.get("WANDB_MODE", "offline"), dir=str(self.dir), project=self.tracking.experiment,
                group=self.run, job_type=self.stage, name=self.name, config=dict(self.params),
                id=self.wandb_id(), resume="allow")
        return self._live["wandb"]

    def wandb_id(self) -> str:
        """This fold's W&B run id, the same in every session of the fold (a resumed or retried job continues its run):
        the stage, run and fold, and a digest of the work folder's path."""
        import hashlib

        digest = hashlib.sha1(str(self.work.root.resolve()).encode()).hexdigest()[:8]
        return re.sub(r"[^A-Za-z0-9_-]", "-", f"{self.name}-{digest}")[:64]

    def _client(self):
        if "client" not in self._live:
            self._live["client"] = _import("mlflow").MlflowClient(tracking_uri=self.tracking.store(self.work))
        return self._live["client"]

    def _mlflow_runs(self) -> None:
        """The parent run of this vinbig run (found by its tags, else created) and this fold's child run: the
        latest of the fold on resume, else a new one."""
        if self.run_id:
            return
        with _locked(self.work):  # the first client creates the store's tables: one process at a time
            client = self._client()
            experiment = experiment_id(client, self.tracking, self.work)
            tags = {"vinbig.stage": self.stage, "vinbig.run": self.run, "vinbig.work": str(self.work.root.resolve())}
            parent = find_run(client, experiment, tags)
            if parent is None:
                parent = client.create_run(experiment, tags=tags, run_name=f"{self.stage}-{self.run}")
                _log_params(client, parent.info.run_id, self.params)
            child_tags = {**tags, "vinbig.fold": str(self.fold), "mlflow.parentRunId": parent.info.run_id}
            child = find_run(client, experiment, child_tags) if self.resume else None
            if child is None:
                child = client.create_run(experiment, tags=child_tags, run_name=self.name)
            else:
                client.update_run(child.info.run_id, status="RUNNING")
            client.update_run(parent.info.run_id, status="RUNNING")
            _log_params(client, child.info.run_id, self.params)
        self.parent_id, self.run_id = parent.info.run_id, child.info.run_id


# --------------------------------------------------------------------------- MLflow


def experiment_id(client, tracking: Tracking, work: Work) -> str:
    """The id of the experiment tracking.experiment, created when absent (its artifacts: WORK/mlartifacts for the
    local store)."""
    found = client.get_experiment_by_name(tracking.experiment)
    if found is not None:
        return found.experiment_id
    where = None if tracking.uri else (Path(work.root).resolve() / "mlartifacts").as_uri()
    return client.create_experiment(tracking.experiment, artifact_location=where)


def find_run(client, experiment: str, tags: Mapping[str, str]):
    """The latest run of `experiment` that carries every tag of `tags`; None when there is none."""
    stage = tags["vinbig.stage"]
    runs = client.search_runs([experiment], f"tags.`vinbig.stage` = '{stage}'", max_results=1000,
                              order_by=["attributes.start_time DESC"])
    for run in runs:  # the work folder's path may hold quotes: compared here, not in the filter
        if all(run.data.tags.get(k) == v for k, v in tags.items()) and \
                ("vinbig.fold" in tags or "mlflow.parentRunId" not in run.data.tags):
            return run
    return None


def _log_params(client, run_id: str, params: Mapping[str, Any]) -> None:
    """`params` not yet logged on the run (a run's params cannot change: a resumed fold keeps its first ones)."""
    from mlflow.entities import Param

    have = client.get_run(run_id).data.params
    new = [Param(k, str(v)[:_MLFLOW_PARAM_CHARS]) for k, v in params.items() if k not in have]
    for i in range(0, len(new), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=new[i:i + 100])


def _mlflow_key(name: str) -> str:
    return _MLFLOW_NAME.sub("", name)


@contextlib.contextmanager
def _locked(work: Work) -> Iterator[None]:
    """Processes that find or create the same MLflow runs (the folds of a run trained at once) one at a time."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    path = Path(work.root) / ".mlflow.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def log_oof_map(work: Work | str | os.PathLike, tracking: Tracking, command: str, oof_map: float,
                runs: Mapping[str, float] | None = None) -> None:
    """With tracking.backend mlflow: log the OOF mAP `oof_map` a fusion `command` (tune, report) computed, and each
    detector run's alone (`runs`), as metrics ``oof_map`` and ``oof_map/RUN`` of the run ``fusion`` (tag
    vinbig.stage fusion) of this work folder. The other backends log no fusion figure. A failure is a warning:
    the command's own output is written already."""
    if tracking.backend != "mlflow":
        return
    work = Work.of(work)
    try:
        with _locked(work):  # the first client creates the store's tables: one process at a time
            client = _import("mlflow").MlflowClient(tracking_uri=tracking.store(work))
            experiment = experiment_id(client, tracking, work)
            tags = {"vinbig.stage": "fusion", "vinbig.work": str(work.root.resolve())}
            run = find_run(client, experiment, tags) or client.create_run(experiment, tags=tags, run_name="fusion")
        from mlflow.entities import Metric

        run_id = run.info.run_id
        step = len(client.get_metric_history(run_id, "oof_map"))
        stamp = int(time.time() * 1000)
        figures = {"oof_map": oof_map, **{f"oof_map/{_mlflow_key(r)}": v for r, v in (runs or {}).items()}}
        client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, step) for k, v in figures.items()])
        client.set_tag(run_id, "vinbig.command", command)
        client.set_terminated(run_id, "FINISHED")
    except ConfigError:
        raise
    except Exception as e:
        logger.warning("tracking.backend mlflow: the OOF mAP of vinbig %s was not logged (%s)", command, cause(e))
