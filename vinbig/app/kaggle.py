"""Kaggle: `vinbig export` writes what offline test inference needs out of a work folder, as a dataset to upload,
and `copy_work` copies such a dataset (or an earlier session's work folder) back into a writable work folder.

An export keeps WORK's layout, so that copied into an empty WORK it predicts the test images. It holds no pickle:
each fold's best.pt becomes its weights as safetensors and its architecture as a plain yaml file, beside where
best.pt was (detector._weights, classifier._model), and every loader of a fold takes them when there is no best.pt::

    folds.csv                               which folds there are
    fusion.yaml                             the WBF values, run weights and gate thresholds 'vinbig tune' chose
    detector/{run}/fold{k}/weights/best.safetensors, best.yaml
                                            every fold of folds.csv of every detector run of the config: the tensors;
                                            the ultralytics model yaml, the class names and the image size
    classifier/{run}/fold{k}/best.safetensors, best.yaml
                                            every fold of every classifier run, if classifiers were trained: the
                                            tensors; the timm backbone and the image size
    .vinbig-manifest.json                   what vinbig wrote there (vinbig.manifest): a later export into the folder
                                            removes only those files, and a folder that is not an export is refused
    config.yaml                             the resolved config (training sizes, the runs) with detector.device and
                                            classifier.device null (the inference session's GPU if it has one,
                                            else its CPU); written last: without it the export is incomplete

The notebooks in notebooks/ use both on Kaggle.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import os
import shutil
from pathlib import Path

from vinbig import log
from vinbig.artifacts import (DEFAULT_RUN, Work, atomic_path, config_path, exported, fold_ids, has_weights,
                              read_folds, train_command)
from vinbig.config import save_config
from vinbig.errors import UserError
from vinbig.manifest import MANIFEST, Manifest
from vinbig.options import work_argument
from vinbig.runs import STAGES, run_config, run_names

logger = logging.getLogger(__name__)

EXPORT_CONFIG = "config.yaml"
# paths of a work folder that copy_work leaves out: the detector's datasets are relative links into images/,
# rewritten by 'vinbig train-detector' when missing; an export's manifest (the copy is a work folder, not an export)
NOT_COPIED = ("detector/*/data", MANIFEST)
EXPORT_COMMAND = "vinbig export --work WORK --out {out}"


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def work_folds(work) -> list[int]:
    """The folds of ``WORK/folds.csv``; an error names the file and the command that makes it."""
    work = Work.of(work)
    if not work.folds.is_file():
        raise UserError(f"{work.folds} not found: {work.root} is not a work folder with folds; give the --work of "
                        f"'vinbig folds' and 'vinbig train-detector', or run 'vinbig folds --train-csv "
                        f"DATA/train.csv --out {work.root}' and train every fold first")
    return fold_ids(read_folds(work))


def model_paths(work, stage: str, runs: list[str], folds: list[int] | None = None) -> dict[tuple[str, int], Path]:
    """``{(run, fold): path}`` of the best.pt every fold of folds.csv (or `folds`, read from it before) of every run
    of `runs` has or needs, for "detector" or "classifier"."""
    work = Work.of(work)
    folds = work_folds(work) if folds is None else folds
    return {(run, k): work.checkpoint(stage, k, "best", run) for run in runs for k in folds}


def missing_models(work, stage: str, runs: list[str]) -> list[tuple[str, int]]:
    """``(run, fold)`` of folds.csv without a trained `stage` model (best.pt, or its exported form)."""
    return [key for key, path in model_paths(work, stage, runs).items() if not has_weights(path)]


def export_files(work, cfg: dict, classifier: bool = True, folds: list[int] | None = None) -> list[str]:
    """The files of `work` an export is made of (relative paths: folds.csv, fusion.yaml, each fold's best.pt, or its
    exported form where the work folder holds that), after checking every fold of every run of `cfg` is trained."""
    work = Work.of(work)
    root = work.root
    folds = work_folds(work) if folds is None else folds
    detectors = model_paths(work, "detector", run_names(cfg, "detector"), folds)
    for (run, k), path in detectors.items():
        if not has_weights(path):
            of_run = f" of run {run}" if run != DEFAULT_RUN else ""
            raise UserError(f"{path} not found: fold {k} of {work.folds} has no trained detector{of_run}, and "
                            f"every fold's model predicts the test images; run "
                            f"'{train_command(work, 'detector', k, run)}'{work.old_layout_hint('detector')}")
    files = [work.folds]
    if work.fusion_config.is_file():
        files.append(work.fusion_config)
    else:
        logger.warning("no %s: inference fuses with the config's values; run 'vinbig tune --work %s' on the "
                       "out-of-fold predictions first to export tuned ones", work.fusion_config, root)
    files += [p for path in detectors.values() for p in _sources(path)]
    classifiers = model_paths(work, "classifier", run_names(cfg, "classifier"), folds)
    trained = [f"{run}/fold{k}" for (run, k), p in classifiers.items() if has_weights(p)]
    if not trained:
        logger.info("no classifier in %s: the export holds the detectors alone (the 'No finding' gate stays off)",
                    work.classifier)
    elif not classifier:
        logger.info("--no-classifier: the classifiers of %s are left out (the 'No finding' gate stays off)",
                    work.classifier)
    else:
        for (run, k), path in classifiers.items():
            if not has_weights(path):
                raise UserError(f"{path} not found, while {', '.join(trained)} have a classifier; run "
                                f"'{train_command(work, 'classifier', k, run)}', or give --no-classifier to export "
                                "the detectors alone (the 'No finding' gate then stays off)")
        files += [p for path in classifiers.values() for p in _sources(path)]
    return [p.relative_to(root).as_posix() for p in files]


def _sources(best: Path) -> list[Path]:
    """best.pt, or (a work folder made from an export) the safetensors and yaml files that stand for it."""
    return [best] if best.is_file() else list(exported(best))


def _warn_if_sizes_differ(work: Work, cfg: dict, folds: list[int]) -> None:
    """Warn where the config differs from the sizes the work folder's images and detectors were made with."""
    import yaml

    saved = [(config_path(work.images("train"), "images"), "images", "size")]
    saved = [(path, section, key, cfg[section][key]) for path, section, key in saved]
    for run in run_names(cfg, "detector"):
        imgsz = run_config(cfg, "detector", run)["imgsz"]
        saved += [(config_path(work.fold_dir("detector", k, run), "detector"), "detector", "imgsz", imgsz)
                  for k in folds]
    for path, section, key, value in saved:
        if not path.is_file():
            continue
        used = (yaml.safe_load(path.read_text()) or {}).get(section, {}).get(key)
        if used is not None and used != value:
            logger.warning("%s says %s.%s=%s but the exported config has %s: inference would use another size "
                           "than training; give 'vinbig export' the --config and --set of training", path, section,
                           key, used, value)


def any_device(cfg: dict) -> dict:
    """`cfg` with the device of every section that has one null: an inference session takes its own GPU if it has
    one, else its CPU, whatever training ran on (a CPU session given training's ``0`` would fail)."""
    out = dict(cfg)
    trained_on = {s: cfg[s]["device"] for s in STAGES if s in cfg and cfg[s].get("device") is not None}
    for section in STAGES:
        if section in out:
            out[section] = {**out[section], "device": None}
    was = f" instead of {', '.join(f'{s}.device {v}' for s, v in trained_on.items())}" if trained_on else ""
    logger.info("%s has detector.device and classifier.device null%s: inference runs on the GPU of its session if it "
                "has one, else on the CPU (give --set detector.device=... at inference to choose)", EXPORT_CONFIG, was)
    return out


def export(work, out, cfg: dict, classifier: bool = True) -> dict:
    """Write the files inference needs from `work` into `out` (each fold's best.pt as safetensors and yaml, nothing
    pickled) and the config `cfg` as out/config.yaml, its devices null (:func:`any_device`).

    `out` must be missing, empty or an earlier export (its manifest, vinbig.manifest): another folder, a work
    folder or an export made before exports had manifests, is refused before anything is written. Every file is
    written to a temporary name and renamed; config.yaml is removed first and written last, so that an interrupted
    export never looks complete. The files an earlier export into `out` wrote that this one does not hold are
    removed (inference would otherwise use them); nothing else there is touched. Returns ``{"files": [...],
    "bytes": n, "out": path}``.
    """
    work, out = Work.of(work), Path(out)
    if not work.root.is_dir():
        raise UserError(f"--work {work.root} is not a folder; give the work folder the folds were trained in")
    if out.resolve() == work.root.resolve():
        raise UserError(f"--out {out} is the work folder itself; give another folder (the dataset to upload)")
    folds = work_folds(work)
    sources = export_files(work, cfg, classifier, folds)
    _warn_if_sizes_differ(work, cfg, folds)
    manifest = _claim(out)
    written = {rel: _exported_names(rel) for rel in sources}
    outputs = [name for names in written.values() for name in names]
    manifest.add([*outputs, EXPORT_CONFIG])  # before writing: an interrupted export still lists what it may have left
    (out / EXPORT_CONFIG).unlink(missing_ok=True)
    for path in manifest.remove_stale([*outputs, EXPORT_CONFIG]):
        logger.warning("removed %s: written by an earlier export, not part of this one", path)
    total = 0
    for rel, names in written.items():
        try:
            _write(work.root / rel, out, rel, names, work)
        except OSError as e:
            raise UserError(f"cannot write {out / names[0]}: {e.strerror or e}; free space on its disk or choose "
                            "another --out, then export again (the export is incomplete: config.yaml is written "
                            "last)") from None
        size = sum((out / n).stat().st_size for n in names)
        total += size
        logger.info("exported %s (%s)", ", ".join(names), _size(size))
    save_config(any_device(cfg), out / EXPORT_CONFIG)
    total += (out / EXPORT_CONFIG).stat().st_size
    outputs.append(EXPORT_CONFIG)
    logger.info("exported %d files, %s, to %s; upload it as a dataset and give it to the inference notebook as "
                "MODELS", len(outputs), _size(total), out)
    return {"files": outputs, "bytes": total, "out": out}


def _claim(out: Path) -> Manifest:
    """`out` as export output (vinbig.manifest); an export made before manifests is refused with its own fix."""
    if out.is_dir() and Manifest.read(out) is None and (out / EXPORT_CONFIG).is_file():
        raise UserError(f"--out {out} is an export made before vinbig recorded what it writes (no {MANIFEST}), "
                        f"and its pickled best.pt files are no longer exported; vinbig does not clean up a folder "
                        f"it cannot tell its own files in: give a new or empty folder, e.g. "
                        f"'{EXPORT_COMMAND.format(out=out.parent / (out.name + '-v2'))}'")
    return Manifest.claim(out, "export", "--out of 'vinbig export'")


def _exported_names(rel: str) -> list[str]:
    """What the work folder's file `rel` becomes in an export: a best.pt its safetensors and yaml, others itself."""
    p = Path(rel)
    if p.name == "best.pt":
        return [q.as_posix() for q in exported(p)]
    return [rel]


def _write(src: Path, out: Path, rel: str, names: list[str], work: Work) -> None:
    """Write the export's files `names` of the work folder's file `src`: a best.pt converted by its stage's face
    (loaded restricted: a checkpoint with a foreign global is refused), anything else copied."""
    for name in names:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
    if len(names) == 1:
        with atomic_path(out / names[0]) as tmp:
            shutil.copyfile(src, tmp)
        return
    stage, run, fold = rel.split("/")[:3]
    again = f"train the fold again: '{train_command(work, stage, int(fold[4:]), run)} --overwrite'"
    if stage == "detector":
        from detector import export_weights

        export_weights(src, out / rel, again)
    else:
        from classifier import export_checkpoint

        export_checkpoint(src, out / rel, train_command(work, stage, int(fold[4:]), run))


def copy_work(src, dst) -> dict:
    """Copy the work folder `src` (an attached dataset: an export, an earlier session's WORK) into `dst`.

    Files already in `dst` with the same size and modification time are skipped; the others are copied to a
    temporary name and renamed, without the source's permissions (a read-only input stays writable here).
    ``detector/RUN/data`` (links rebuilt by 'vinbig train-detector') and an export's manifest are left out.
    Returns ``{"copied": n, "bytes": n}``.
    """

    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder: attach the dataset (Add Input) and give its path under "
                                "/kaggle/input")
    todo = []
    for folder, dirs, names in os.walk(src):
        rel = Path(folder).relative_to(src)
        dirs[:] = sorted(d for d in dirs if not any(fnmatch.fnmatch((rel / d).as_posix(), n) for n in NOT_COPIED))
        todo += [rel / n for n in sorted(names) if not n.endswith(".partial")
                 and not any(fnmatch.fnmatch((rel / n).as_posix(), p) for p in NOT_COPIED)]
    copied = skipped = total = 0
    for rel in log.progress(todo, desc=f"copy {src.name}", unit="file"):
        s, d = src / rel, dst / rel
        st = s.stat()
        if d.is_file() and d.stat().st_size == st.st_size and d.stat().st_mtime_ns == st.st_mtime_ns:
            skipped += 1
            continue
        d.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(d) as tmp:
            shutil.copyfile(s, tmp)
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        copied += 1
        total += st.st_size
    logger.info("copied %d files (%s) from %s to %s%s", copied, _size(total), src, dst,
                f"; {skipped} were there already" if skipped else "")
    return {"copied": copied, "bytes": total}


# --------------------------------------------------------------------------- command line


def cmd_export(args: argparse.Namespace, cfg: dict) -> int:
    export(args.work, args.out, cfg, classifier=not args.no_classifier)
    return 0


def register(add) -> None:
    """Add `vinbig export` with ``add(name, func, help, description, reads=...)``."""
    p = add("export", cmd_export, "copy the trained models and tuned values into a folder to upload as a dataset",
            "Write what offline test inference needs from WORK into DIR, keeping WORK's layout: folds.csv, "
            "fusion.yaml (the values 'vinbig tune' chose), every fold's detector/RUN/foldK/weights/best.pt of every "
            "detector run of the config and, if classifiers were trained, classifier/RUN/foldK/best.pt, each as "
            "best.safetensors (the weights) and best.yaml (the architecture): no pickle, so loading an export "
            "never runs code. DIR must be new, empty or an earlier export (its .vinbig-manifest.json lists what "
            "vinbig wrote; only those files are removed when this export does not hold them). "
            "Writes DIR/config.yaml, the resolved config (defaults, --config, "
            "--set): give the --config and --set of training, so that inference converts and predicts at the "
            "training sizes; its detector.device and classifier.device are null, so that inference takes the GPU "
            "of its own session if any, else the CPU. config.yaml is written last; a folder without it is an "
            "incomplete export. Upload DIR as a Kaggle dataset and give it to notebooks/kaggle_inference.ipynb as "
            "MODELS.", reads=["all"])  # every key: config.yaml is the config of inference
    work_argument(p, "work folder with every fold trained")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder to write (created if missing)")
    p.add_argument("--no-classifier", action="store_true", dest="no_classifier",
                   help="leave the classifiers out (the 'No finding' gate then stays off at inference)")
