"""`vinbig runs`: the named runs of the config (its ``runs`` section), for people and for the Makefile; with
``--work WORK``, the experiment table of what WORK trained.

The table has one row per run folder ``WORK/{stage}/{run}/`` holding ``fold{k}/`` folders, and one row ``ensemble``:

* changed: the keys of the run's stage section that differ from configs/default.yaml, as each fold saved its
  section beside its weights (``fold{k}/config_{stage}.yaml``); keys on which folds disagree are shown per fold.
* folds: the finished folds out of folds.csv's. A fold is finished when it holds the ``.trained`` stamp (the
  Makefile and `vinbig train` write it once a training exits 0); without one, when its progress.json says
  ``finished``, else when it holds its saved config and weights (best.pt or last.pt): a training command saves that
  config only once it succeeded, and a new training removes it first.
* train time: the training seconds of every fold folder, finished or not: progress.json's ``elapsed_s``, else the
  detector's results.csv ``time`` (ultralytics' seconds since the session started, summed over resumed sessions)
  or the classifier's summary.csv ``seconds`` (one epoch each).
* OOF mAP@0.4: a detector run alone and the ensemble, fused and gated with WORK's fusion values (config_fusion.yaml,
  that `vinbig fuse` saved, else fusion.yaml, that `vinbig tune` chose, over the defaults); OOF AUC: a classifier
  run's P(abnormal) against labels.csv (abnormal: any finding), as `vinbig predict-classifier` reports it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from vinbig.artifacts import SAFE_ID, Work, config_path, has_weights
from vinbig.errors import UserError, VinbigError
from vinbig.runs import STAGES, declared, run_config, run_names

logger = logging.getLogger("vinbig")

FOLD = re.compile(r"^fold(\d+)$")
# the fusion keys that change the fused OOF predictions (the tune_* grids, report_* and workers do not)
FUSION_KEYS = ("iou_thr", "skip_box_thr", "conf_type", "weights", "run_weights", "classifier_weights", "levels",
               "calibration", "gate", "low", "high")


@dataclass
class Row:
    """One row of the experiment table; `as_json` is its object in `vinbig runs --json` (keys stable)."""

    stage: str  # detector | classifier | fusion (the ensemble)
    run: str
    changed: dict | None  # key: value of the stage section differing from the defaults; None: no fold saved one
    disagree: dict = field(default_factory=dict)  # key: {"fold0": value, ...} where the folds' configs differ
    folds: list[int] | None = None  # the finished folds
    n_folds: int | None = None
    train_seconds: float | None = None
    oof_map: float | None = None
    oof_auc: float | None = None

    def as_json(self) -> dict:
        return {"stage": self.stage, "run": self.run, "changed": self.changed, "disagree": self.disagree,
                "folds_trained": None if self.folds is None else len(self.folds), "n_folds": self.n_folds,
                "folds": self.folds, "train_seconds": self.train_seconds, "oof_map": self.oof_map,
                "oof_auc": self.oof_auc}


# --------------------------------------------------------------------------- what each fold folder holds


def check_work(work: Path) -> Work:
    """`work` as a Work if it is a work folder (folds.csv, detector/ or classifier/ in it); else a UserError."""
    if not work.is_dir():
        raise UserError(f"--work {work}: no such folder; give the folder 'vinbig folds --out' wrote "
                        "(the WORK of the Makefile)")
    w = Work(work)
    if not (w.folds.is_file() or w.detector.is_dir() or w.classifier.is_dir()):
        raise UserError(f"--work {work} is not a vinbig work folder (no folds.csv, detector/ or classifier/ in "
                        "it); give the folder 'vinbig folds --out' wrote")
    return w


def run_folders(work: Work, stage: str) -> dict[str, dict[int, Path]]:
    """The runs of `stage` in WORK, each with its fold folders by fold: ``WORK/{stage}/{run}/fold{k}/``."""
    root = work.root / stage
    hint = work.old_layout_hint(stage)
    if hint:
        logger.warning("folds of no run are left out of the table%s", hint)
    out = {}
    for d in sorted(root.iterdir()) if root.is_dir() else ():
        if not d.is_dir() or d.name == "data" or not SAFE_ID.match(d.name):
            continue
        folds = {int(m.group(1)): f for f in d.iterdir() if f.is_dir() and (m := FOLD.match(f.name))}
        if folds:
            out[d.name] = dict(sorted(folds.items()))
    return out


def progress(fold_dir: Path) -> dict:
    """The fold's progress.json (vinbig.tracking writes it); {} when it is missing or unreadable."""
    from vinbig.tracking import read_progress

    return read_progress(fold_dir) or {}


def finished(work: Work, stage: str, run: str, k: int, fold_dir: Path, state: dict) -> bool:
    """Whether fold `k` finished training (see the module doc)."""
    if work.trained(stage, k, run).is_file():
        return True
    if isinstance(state.get("finished"), bool):
        return state["finished"]
    return config_path(fold_dir, stage).is_file() and any(
        has_weights(work.checkpoint(stage, k, which, run)) for which in ("best", "last"))


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def fold_seconds(stage: str, fold_dir: Path, state: dict) -> float | None:
    """The training seconds of one fold: progress.json's elapsed_s, else its epoch table's; None: unknown."""
    seconds = _number(state.get("elapsed_s"))
    if seconds is not None:
        return seconds
    import numpy as np
    import pandas as pd

    from vinbig.tables import read_table

    path, column = (fold_dir / "results.csv", "time") if stage == "detector" else (fold_dir / "summary.csv", "seconds")
    if not path.is_file():
        return None
    try:
        table = read_table(path, "train the fold again to write it", strip_names=True)
    except VinbigError as e:
        logger.warning("training time of %s unknown: %s", fold_dir, e)
        return None
    if column not in table or table.empty:
        return None
    t = pd.to_numeric(table[column], errors="coerce").dropna().to_numpy(np.float64)
    if stage == "detector":  # seconds since its session started: each session's last row, summed
        t = t[np.append(t[1:] < t[:-1], True)] if len(t) else t
    return float(t.sum()) if len(t) else None


def saved_sections(stage: str, folds: dict[int, Path]) -> dict[int, dict]:
    """The `stage` section each fold saved beside its weights (folds without a readable one left out)."""
    from vinbig.config import saved_section

    out = {}
    for k, d in folds.items():
        path = config_path(d, stage)
        if path.is_file():
            try:
                out[k] = saved_section(path, stage)
            except VinbigError as e:
                logger.warning("the config of %s cannot be read: %s", d, e)
    return out


def changed_keys(section: str, saved: dict[int, dict], keys: tuple[str, ...] | None = None) -> tuple[dict, dict]:
    """The keys of `section` that differ from configs/default.yaml in any of the `saved` sections (by fold; the
    lowest fold's value), in file order, and those on which the folds disagree (``{key: {"foldK": value}}``).
    `keys`: only these."""
    from vinbig.config import settings

    defaults = {s.key: s.default for s in settings(section)}
    names = [*defaults, *sorted({k for s in saved.values() for k in s} - set(defaults))]
    changed, disagree = {}, {}
    for key in names if keys is None else [k for k in names if k in keys]:
        values = {k: s.get(key, defaults.get(key)) for k, s in sorted(saved.items())}
        if all(v == defaults.get(key) for v in values.values()):
            continue
        first = next(iter(values.values()))
        changed[key] = first
        if any(v != first for v in values.values()):
            disagree[key] = {f"fold{k}": v for k, v in values.items()}
    return changed, disagree


def n_folds_of(work: Work) -> int | None:
    """The folds of WORK/folds.csv; None without a readable one."""
    if not work.folds.is_file():
        return None
    from vinbig.artifacts import fold_ids, read_folds

    try:
        return len(fold_ids(read_folds(work)))
    except VinbigError as e:
        logger.warning("%s; the table counts folds from the saved configs", e)
        return None


def run_row(work: Work, stage: str, run: str, folds: dict[int, Path], n_folds: int | None) -> Row:
    """The row of run `run` of `stage` from its fold folders `folds` (by fold), without its OOF score."""
    states = {k: progress(d) for k, d in folds.items()}
    saved = saved_sections(stage, folds)
    changed, disagree = changed_keys(stage, saved) if saved else (None, {})
    if n_folds is None:  # no folds.csv: the folds.n_folds a training saved
        from vinbig.config import saved_section

        n = [saved_section(config_path(d, stage), "folds").get("n_folds") for k, d in folds.items() if k in saved]
        n_folds = next((int(x) for x in n if isinstance(x, int)), None)
    done = [k for k, d in folds.items() if finished(work, stage, run, k, d, states[k])]
    seconds = [s for k, d in folds.items() if (s := fold_seconds(stage, d, states[k])) is not None]
    return Row(stage, run, changed, disagree, done, n_folds, round(sum(seconds), 2) if seconds else None)


# --------------------------------------------------------------------------- out-of-fold scores


def fusion_values(work: Work) -> tuple[dict, str]:
    """The fusion section WORK's submission is made with, and where it comes from: config_fusion.yaml (saved by
    `vinbig fuse`), else fusion.yaml (chosen by `vinbig tune`) over configs/default.yaml, else the defaults."""
    from vinbig.config import default_config_path, settings, with_saved

    base = {"fusion": {s.key: s.default for s in settings("fusion")}}
    for path in (config_path(work.root, "fusion"), work.fusion_config):
        if path.is_file():
            return with_saved(base, path, "fusion")["fusion"], str(path)
    return base["fusion"], str(default_config_path())


@contextlib.contextmanager
def quiet(name: str) -> Iterator[None]:
    """The logger `name` at warnings only, unless -v asked for debug output: fusion logs each fusion it runs."""
    log = logging.getLogger(name)
    before = log.level
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(before)


def detector_scores(work: Work, runs: list[str]) -> tuple[dict[str, float | None], float | None, dict]:
    """The OOF mAP@0.4 of each of `runs` alone whose rows WORK/preds/detector_oof.parquet holds, that of the
    ensemble (None without the file), and the fusion values used."""
    if not work.detector_preds("oof").is_file():
        return {}, None, {}
    from fusion import oof_inputs, score_oof

    f, source = fusion_values(work)
    logger.info("OOF mAP@0.4 with the fusion values of %s", source)
    with quiet("fusion"):
        inputs = oof_inputs(work, f)  # read once for the ensemble and each run alone
        alone = {r: _number(score_oof(work, f, runs=[r], inputs=inputs).result.mean_ap)
                 for r in runs if r in set(inputs.src.runs)}
        ensemble = _number(score_oof(work, f, inputs=inputs).result.mean_ap)
    return alone, ensemble, f


def classifier_scores(work: Work) -> dict[str, float | None]:
    """Each classifier run's OOF AUC of P(abnormal) from WORK/preds/classifier_oof.csv ({} without it)."""
    if not work.classifier_preds("oof").is_file():
        return {}
    from sklearn.metrics import roc_auc_score

    from vinbig.artifacts import NO_FINDING, read_classifier_preds, read_labels

    preds, labels = read_classifier_preds(work, "oof"), read_labels(work)
    abnormal = (labels["class_id"] != NO_FINDING).groupby(labels["image_id"]).any()
    out = {}
    for run, g in preds[preds["fold"] >= 0].groupby("run"):
        y = g["image_id"].map(abnormal)
        known = y.notna()
        y = y[known].astype(int)
        out[str(run)] = float(roc_auc_score(y, g.loc[known, "p_abnormal"])) if y.nunique() == 2 else None
    return out


# --------------------------------------------------------------------------- the table


@contextlib.contextmanager
def _left_out(what: str) -> Iterator[None]:
    """Damaged predictions: a warning naming the file and the fix, and the table without `what`."""
    try:
        yield
    except VinbigError as e:
        logger.warning("%s left out of the table: %s", what, e)


def table(work: Work, stages: list[str]) -> list[Row]:
    """The rows of WORK's experiment table (see the module doc)."""
    found = {stage: run_folders(work, stage) for stage in stages}
    n_folds = n_folds_of(work) if any(found.values()) else None
    rows = [run_row(work, stage, run, folds, n_folds) for stage in stages for run, folds in found[stage].items()]
    if "detector" in stages:
        with _left_out("OOF mAP"):
            alone, ensemble, f = detector_scores(work, list(found["detector"]))
            for row in rows:
                if row.stage == "detector":
                    row.oof_map = alone.get(row.run)
            if ensemble is not None:
                changed, _ = changed_keys("fusion", {0: f}, FUSION_KEYS)
                rows.append(Row("fusion", "ensemble", changed, oof_map=ensemble))
    if "classifier" in stages:
        with _left_out("OOF AUC"):
            auc = classifier_scores(work)
            for row in rows:
                if row.stage == "classifier":
                    row.oof_auc = auc.get(row.run)
    return rows


def _compact(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_compact(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_compact(v)}" for k, v in value.items()) + "}"
    return str(value)


def changed_text(row: Row) -> str:
    if row.changed is None:
        return "- (no fold saved its config yet)"
    parts = []
    for key, value in row.changed.items():
        if key in row.disagree:
            parts.append(f"{key}=" + "|".join(f"{fold}:{_compact(v)}" for fold, v in row.disagree[key].items()))
        else:
            parts.append(f"{key}={_compact(value)}")
    return " ".join(parts) or "(the defaults)"


def duration(seconds: float | None) -> str:
    """``"-"``, ``"42s"``, ``"3m05s"`` or ``"2h07m"``."""
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    return f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_table(rows: list[Row]) -> str:
    """The rows as an aligned text table with a header."""
    header = ("stage", "run", "folds", "train time", "OOF mAP@0.4", "OOF AUC", "changed")
    cells = [header] + [(r.stage, r.run, "-" if r.folds is None else f"{len(r.folds)}/{r.n_folds or '?'}",
                         duration(r.train_seconds), "-" if r.oof_map is None else f"{r.oof_map:.4f}",
                         "-" if r.oof_auc is None else f"{r.oof_auc:.4f}", changed_text(r)) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header) - 1)]
    right = (False, False, True, True, True, True)
    return "\n".join("  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(line, widths, right))
                     + "  " + line[-1] for line in cells)


def cmd_runs(args: argparse.Namespace, cfg: dict) -> int:
    if args.work is not None:
        return _experiments(args)
    if args.json:
        raise UserError("vinbig runs --json prints the experiment table of a work folder; give --work WORK")
    stages = [args.stage] if args.stage else list(STAGES)
    for stage in stages:
        names = run_names(cfg, stage)
        if args.stage:
            print(" ".join(names))
            continue
        print(f"{stage} runs:")
        for name in names:
            changed = declared(cfg, stage).get(name) or {}
            keys = run_config(cfg, stage, name)
            what = ", ".join(f"{k}={keys[k]}" for k in changed) or f"the {stage} section as it is"
            print(f"  {name}: {what}")
    return 0


def _experiments(args: argparse.Namespace) -> int:
    work = check_work(args.work)
    rows = table(work, [args.stage] if args.stage else list(STAGES))
    if args.json:
        print(json.dumps([r.as_json() for r in rows], indent=1))
    elif not rows:
        print(f"nothing trained in {work.root} yet: train a fold with 'vinbig train-detector --work {work.root} "
              "--fold 0' (or 'make train')")
    else:
        print(format_table(rows))
        print("\nfolds: finished of folds.csv's; OOF mAP@0.4: each detector run alone and the ensemble, fused and "
              "gated with the fusion values of WORK; OOF AUC: P(abnormal) of a classifier run against labels.csv")
    return 0


def register(add) -> None:
    """Add `vinbig runs` with ``add(name, func, help, description, reads=...)``."""
    p = add("runs", cmd_runs, "list the named runs of the config, or with --work the experiment table of a work folder",
            "Each run of the config's runs section and the keys it changes of its stage's section; a config "
            "without runs has one run of each stage, 'default'. With --stage, only that stage's names on one line "
            "(what the Makefile reads). With --work WORK: the experiment table of what WORK trained, one row per "
            "run folder WORK/{detector,classifier}/RUN/ and one for the ensemble: the keys each run changed of "
            "configs/default.yaml (as its folds saved them), its finished folds (a .trained stamp, else progress.json "
            "or a saved config with weights) of folds.csv's, its training time, and its out-of-fold score: a "
            "detector run's OOF mAP@0.4 alone, fused with WORK's fusion values (config_fusion.yaml, else "
            "fusion.yaml, else the defaults), a classifier run's OOF AUC of P(abnormal); '-' where unknown.",
            reads=["runs"])
    p.add_argument("--stage", choices=STAGES, help="only this stage's run names, space-separated (with --work: only "
                                                   "this stage's rows)")
    p.add_argument("--work", type=Path, metavar="WORK", default=None,
                   help="print the experiment table of this work folder instead of the config's runs")
    p.add_argument("--json", action="store_true",
                   help="with --work: the table as JSON on stdout (a list of objects: stage, run, changed, disagree, "
                        "folds_trained, n_folds, folds, train_seconds, oof_map, oof_auc)")
