"""Training one fold: ``vinbig train-classifier --work WORK --fold K [--resume]``.

Trains on the images of folds != K and validates on fold K. timm builds the model, the optimizer
(``create_optimizer_v2``), the schedule (``create_scheduler_v2``, stepped per update) and the weight
EMA (``ModelEmaV3``); torchvision's v2 transforms augment. Mixed precision and ``cudnn.benchmark`` (the input
size is fixed) run on CUDA only; the latter is restored when the fold is done.

Under ``torchrun`` (RANK, WORLD_SIZE and LOCAL_RANK set) every process trains on its share of each
epoch inside DistributedDataParallel (NCCL on GPU, gloo on CPU) and scores its share of the validation
images; rank 0 gathers the scores, computes the AUC and alone writes files. ``classifier.batch`` is per
process, and ``classifier.workers`` too, at most the CPUs divided by the processes. One process uses one GPU:
the training notebook launches ``torchrun --standalone --nproc_per_node N`` on a machine with N GPUs.

Outputs in ``WORK/classifier/fold{k}/``: summary.csv (one row per epoch), best.pt (by validation AUC,
EMA weights when EMA is on) and last.pt (everything needed to resume); see ``_model`` for their keys; and
progress.json, with the tracker of ``tracking.backend`` (vinbig.tracking): train/loss, val/loss, val/auc and lr per
epoch. ``VINBIG_THREADS`` (a positive integer; ``vinbig train`` sets it for jobs that share a machine's CPU) is the
number of torch CPU threads the training takes, given back when it is done.
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from vinbig.artifacts import DEFAULT_RUN, Work, check_fold, config_path, read_csv, train_command, write_csv
from vinbig.devices import cpu_cores, visible_gpus
from vinbig.errors import ConfigError, UserError
from vinbig.log import progress
from vinbig.tracking import Tracker, Tracking

from classifier._data import (BALANCE, EpochSampler, PngDataset, abnormal_targets, png_paths, shard, train_transform,
                              worker_init)
from classifier._model import (Prepare, create_model, cudnn_benchmark, load_checkpoint, load_weights, resolve_device,
                               save_checkpoint)
from classifier._predict import auc, bce, infer

logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_auc", "lr", "seconds")
SCHEDULES = ("cosine", "tanh", "poly")  # timm schedules that decay over the run when stepped per update


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun launch (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Dist":
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def main(self) -> bool:
        return self.rank == 0


cpu_count = cpu_cores  # the CPUs this process may run on (the tests set it)


def loader_workers(workers: int, world: int) -> int:
    """``classifier.workers`` data-loader processes, at most this machine's CPUs divided by the `world` training
    processes (torchrun) and at least one when any are asked for: more would only compete for the same cores."""
    if workers <= 0:
        return 0
    return max(1, min(workers, cpu_count() // max(world, 1)))


def _check(cfg: dict) -> None:
    if cfg["balance"] not in BALANCE:
        raise ConfigError(f"classifier.balance {cfg['balance']!r} is not one of {list(BALANCE)}")
    if cfg["sched"] not in SCHEDULES:
        raise ConfigError(f"classifier.sched {cfg['sched']!r} is not one of {list(SCHEDULES)}")
    for key in ("epochs", "batch", "imgsz"):
        if cfg[key] < 1:
            raise ConfigError(f"classifier.{key} is {cfg[key]}; it must be at least 1")


def check_fresh(work: Work, fold: int, resume: bool, overwrite: bool, run: str = DEFAULT_RUN) -> None:
    """Refuse to start over a fold's run unless asked: trained weights are not thrown away by a rerun, nor a best.pt
    or summary.csv without the last.pt to resume from (copied from another machine, or a last.pt deleted)."""
    if resume or overwrite:
        return
    if work.checkpoint("classifier", fold, "last", run).is_file():
        raise UserError(f"{work.fold_dir('classifier', fold, run)} already holds a run (last.pt); use --resume to continue "
                        "it or --overwrite to start over")
    earlier = [p.name for p in (work.checkpoint("classifier", fold, "best", run), work.classifier_summary(fold, run))
               if p.exists() or p.is_symlink()]
    if earlier:
        raise UserError(f"{work.fold_dir('classifier', fold, run)} holds {' and '.join(earlier)} of an earlier run and "
                        "no last.pt to resume from; a fresh start would remove them: --overwrite to start over, or "
                        "move them away")


@dataclass(frozen=True)
class ClassifierRun:
    """A fold's run folder (best.pt, last.pt, summary.csv) and its best validation AUC (NaN off rank 0)."""

    out_dir: Path
    epochs: int
    best_auc: float
    best_epoch: int  # 0-based


@contextmanager
def env_threads():
    """torch's CPU threads set to ``VINBIG_THREADS`` while the block runs, when it holds a positive integer; as
    they were afterwards (a training in ``vinbig demo`` leaves the next step the threads it found)."""
    from vinbig.devices import job_threads

    threads, wanted = torch.get_num_threads(), job_threads()
    if wanted:
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_fold(work: Work | str | os.PathLike, fold: int, cfg: dict, resume: bool = False,
               overwrite: bool = False, run: str = DEFAULT_RUN, tracking: Tracking | None = None) -> ClassifierRun:
    """Train fold `fold` of the run `run` (WORK/classifier/RUN/foldK) with `cfg` (the run's ``classifier``
    section); under torchrun, one process of many.

    A fold that already holds a run is refused unless `resume` (continue it) or `overwrite` (start over).
    Rank 0 logs each epoch to the fold's progress.json and the backend of `tracking` (vinbig.tracking; none by
    default), whose package is checked before anything is done.

    The result is the same on every process except the AUC, which only rank 0 knows (the others get NaN).
    """
    _check(cfg)
    env = Dist.from_env()
    tracker = Tracker(work, "classifier", run, fold, tracking, cfg, resume) if env.main else None
    if tracker is not None:
        tracker.check()
    device = resolve_device(cfg["device"], env.local_rank)
    if env.world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        work = Work.of(work)
        check_fresh(work, fold, resume, overwrite, run)
        with cudnn_benchmark(device), env_threads():
            return _train(work, fold, cfg, resume, env, device, run, tracker)
    finally:
        if env.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(work: Work, fold: int, cfg: dict, resume: bool, env: Dist, device: torch.device,
           run: str = DEFAULT_RUN, tracker: Tracker | None = None) -> ClassifierRun:
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3
    from torch.nn.parallel import DistributedDataParallel

    table = abnormal_targets(work)
    check_fold(work, fold, table)
    out_dir = work.fold_dir("classifier", fold, run)
    train_df, val_df = table[table["fold"] != fold], table[table["fold"] == fold]
    n_pos = int(train_df["abnormal"].sum())
    n_neg = len(train_df) - n_pos
    if not n_pos or not n_neg:
        raise UserError(f"the training images of fold {fold} are all {'normal' if not n_pos else 'abnormal'}; "
                        f"the classifier needs both: check {work.labels}")
    image_dir = work.images("train")
    train_ds = PngDataset(png_paths(image_dir, train_df["image_id"]), train_df["abnormal"],
                          cfg["imgsz"], train_transform(cfg))
    val_ds = PngDataset(png_paths(image_dir, val_df["image_id"]), val_df["abnormal"], cfg["imgsz"])
    sampler = EpochSampler(train_df["abnormal"].to_numpy(), env.world, env.rank, cfg["seed"],
                           balanced=cfg["balance"] == "sampler")
    workers = loader_workers(cfg["workers"], env.world)
    if workers < cfg["workers"] and env.main:
        logger.info("classifier.workers %d: %d data-loader processes per training process (%d CPUs, %d process(es))",
                    cfg["workers"], workers, cpu_count(), env.world)
    loader_kw = dict(num_workers=workers, pin_memory=device.type == "cuda", worker_init_fn=worker_init,
                     persistent_workers=workers > 0)
    train_loader = DataLoader(train_ds, batch_size=cfg["batch"], sampler=sampler,
                              drop_last=len(sampler) > cfg["batch"], **loader_kw)
    val_loader = DataLoader(Subset(val_ds, shard(len(val_ds), env.world, env.rank)),
                            batch_size=cfg["predict_batch"], **loader_kw)

    torch.manual_seed(cfg["seed"])  # the same initial weights on every rank, so that the EMAs agree too
    model = create_model(cfg["backbone"], cfg["drop_rate"], cfg["drop_path_rate"])
    if cfg["weights"] and not resume:
        load_weights(model, cfg["weights"], cfg["backbone"])
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    ema = ModelEmaV3(model, decay=cfg["ema_decay"], use_warmup=True) if cfg["ema"] else None
    try:
        optimizer = create_optimizer_v2(model, opt=cfg["opt"], lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    except ValueError as e:
        raise ConfigError(f"classifier.opt: {e}; timm.optim.list_optimizers() gives the names") from None
    scheduler, _ = create_scheduler_v2(optimizer, sched=cfg["sched"], num_epochs=cfg["epochs"],
                                       warmup_epochs=cfg["warmup_epochs"], warmup_lr=cfg["lr"] * 0.01,
                                       min_lr=cfg["min_lr"], step_on_epochs=False,
                                       updates_per_epoch=len(train_loader))
    amp = bool(cfg["amp"]) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    pos_weight = torch.tensor(n_neg / n_pos, device=device) if cfg["balance"] == "pos_weight" else None
    criterion = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    torch.manual_seed(cfg["seed"] * 1000 + env.rank)  # augmentation and dropout differ between ranks
    state = _State(work, fold, run)
    if resume:
        state.resume(train_command(work, "classifier", fold, run), cfg["backbone"], model, ema,
                     optimizer, scaler)
        if env.main and state.start < cfg["epochs"]:
            logger.info("resuming fold %d from %s at epoch %d of %d", fold, state.last, state.start + 1, cfg["epochs"])
    elif env.main:
        state.clear(fold)
    if env.main:
        if state.start >= cfg["epochs"]:
            logger.info("fold %d already has all %d epochs in %s; raise classifier.epochs to train on",
                        fold, cfg["epochs"], out_dir)
        logger.info("fold %d: %d train images (%d abnormal), %d validation images; %s on %s x %d process(es), "
                    "%d px, batch %d, AMP %s, balance %s", fold, len(train_df), n_pos, len(val_df), cfg["backbone"],
                    device, env.world, cfg["imgsz"], cfg["batch"], "on" if amp else "off", cfg["balance"])
        gpus = visible_gpus() if device.type == "cuda" else 0
        if env.world == 1 and gpus > 1:
            logger.info("torch sees %d GPUs and this run uses one; to train on all of them: torchrun --standalone "
                        "--nproc_per_node %d -m vinbig train-classifier ... (the training notebook does)", gpus, gpus)

    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if env.world > 1 else model
    prepare = Prepare(model, device)
    updates = state.start * len(train_loader)
    scheduler.step_update(num_updates=updates)
    if tracker is not None:
        tracker.start(state.start, cfg["epochs"])
    with tracker.session() if tracker is not None else nullcontext():
        for epoch in range(state.start, cfg["epochs"]):
            t0 = time.perf_counter()
            sampler.set_epoch(epoch)
            net.train()
            total = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, images
            for x, y, _ in progress(train_loader, desc=f"fold {fold} epoch {epoch + 1}/{cfg['epochs']}", leave=False):
                x, y = prepare(x), y.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    loss = criterion(net(x).float().squeeze(1), y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                updates += 1
                scheduler.step_update(num_updates=updates)
                if ema is not None:
                    ema.update(model, step=updates)
                total[0] += loss.detach() * len(y)
                total[1] += len(y)
            scheduler.step(epoch + 1)
            scored = ema.module if ema is not None else model
            idx, p = infer(scored, val_loader, prepare, amp, desc=f"fold {fold} validation")
            if env.world > 1:  # every process's loss sums and validation scores
                dist.all_reduce(total)
                parts = [None] * env.world
                dist.all_gather_object(parts, (idx, p))
                idx, p = np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts])
            if env.main:
                y_val = val_ds.targets[idx]
                row = {"epoch": epoch, "train_loss": float(total[0] / total[1].clamp(min=1)), "val_loss": bce(y_val, p),
                       "val_auc": auc(y_val, p), "lr": float(optimizer.param_groups[0]["lr"]),
                       "seconds": round(time.perf_counter() - t0, 2)}
                improved = state.record(row, cfg, scored, model, ema, optimizer, scheduler, scaler)
                logger.info("fold %d epoch %d/%d: train_loss %.4f val_loss %.4f val_auc %.4f%s lr %.3g (%.0f s)", fold,
                            epoch + 1, cfg["epochs"], row["train_loss"], row["val_loss"], row["val_auc"],
                            " (best)" if improved else "", row["lr"], row["seconds"])
                if tracker is not None:
                    logged = {"train/loss": row["train_loss"], "val/loss": row["val_loss"], "val/auc": row["val_auc"],
                              "lr": row["lr"]}
                    tracker.epoch(epoch + 1, cfg["epochs"], logged, row["val_auc"])
            if env.world > 1:
                dist.barrier()
    if tracker is not None:
        tracker.end(True)
    return ClassifierRun(out_dir, cfg["epochs"], state.best_auc if env.main else math.nan, state.best_epoch)


class _State:
    """A fold's run folder: where training starts, the best AUC so far, summary.csv, best.pt and last.pt."""

    def __init__(self, work: Work, fold: int, run: str = DEFAULT_RUN):
        self.dir = work.fold_dir("classifier", fold, run)
        self.last = work.checkpoint("classifier", fold, "last", run)
        self.best = work.checkpoint("classifier", fold, "best", run)
        self.summary = work.classifier_summary(fold, run)
        self.start, self.best_auc, self.best_epoch = 0, -math.inf, -1
        self.rows: list[dict] = []

    def clear(self, fold: int) -> None:
        """A fresh start: remove an earlier run's files, so that its summary rows do not mix with the new ones. Only
        vinbig's fixed names in the fold's folder, and only after check_fresh (--overwrite, or none of them but the
        config there); a link is removed, never followed."""
        if self.last.is_file():
            logger.warning("starting fold %d afresh (--overwrite): the run in %s is replaced", fold, self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        # the earlier run's config goes too: until this run ends, none stands beside weights it did not make
        for path in (self.summary, self.best, self.last, config_path(self.dir, "classifier")):
            path.unlink(missing_ok=True)

    def resume(self, made_by: str, backbone: str, model, ema, optimizer, scaler) -> None:
        """Load last.pt into the model, EMA, optimizer and scaler; continue at its epoch + 1."""
        ckpt = load_checkpoint(self.last, made_by)
        if ckpt["backbone"] != backbone:
            raise UserError(f"{self.last} holds a '{ckpt['backbone']}', the config asks for '{backbone}'; resume "
                            f"with --backbone {ckpt['backbone']} (or --config {self.dir / 'config_classifier.yaml'})")
        model.load_state_dict(ckpt["model"])
        if ema is not None:  # a last.pt written without EMA starts the EMA from its weights, not from scratch
            ema.module.load_state_dict(ckpt.get("model_ema") or ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"] and scaler.is_enabled():  # empty when last.pt was written without AMP
            scaler.load_state_dict(ckpt["scaler"])
        # ckpt["scheduler"] is not loaded: the schedule is a function of the update count and the current
        # config, so that raising classifier.epochs stretches it over the longer run
        self.start, self.best_auc = int(ckpt["epoch"]) + 1, float(ckpt["best_auc"])
        if self.summary.is_file():
            summary = read_csv(self.summary, SUMMARY_COLUMNS, made_by)
            summary = summary[summary["epoch"] < self.start]  # drop rows written after last.pt was saved
            self.rows = summary.to_dict("records")
            if summary["val_auc"].notna().any():
                self.best_epoch = int(summary.loc[summary["val_auc"].idxmax(), "epoch"])

    def record(self, row: dict, cfg: dict, scored, model, ema, optimizer, scheduler, scaler) -> bool:
        """Append `row` to summary.csv, save best.pt if the AUC improved and last.pt; True if it improved."""
        self.rows.append(row)
        write_csv(pd.DataFrame(self.rows), self.summary, SUMMARY_COLUMNS)
        improved = not self.best.is_file() or row["val_auc"] > self.best_auc
        meta = {"backbone": cfg["backbone"], "imgsz": int(cfg["imgsz"])}
        if improved:
            self.best_epoch = row["epoch"]
            if not math.isnan(row["val_auc"]):
                self.best_auc = row["val_auc"]
            save_checkpoint({"model": scored.state_dict(), "epoch": row["epoch"], "auc": row["val_auc"], **meta},
                            self.best)
        ema_state = ema.module.state_dict() if ema is not None else None
        save_checkpoint({"model": model.state_dict(), "model_ema": ema_state,
                         "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "scaler": scaler.state_dict(), "epoch": row["epoch"], "best_auc": float(self.best_auc),
                         **meta}, self.last)
        return improved
