"""The stage contract: every file that passes between stages, its columns and the command that makes it.

This is the one place where artifact paths and column lists are defined. Stages read each other's
outputs only through the readers here, which name the file and the fix when one is missing or off.

Layout of a work folder ``WORK``::

    images/train/<image_id>.png, meta.csv, errors.csv, source.txt
                                                         vinbig images --src DATA/train --out WORK/images/train
    images/test/...                                      vinbig images --src DATA/test --out WORK/images/test
    labels.csv, folds.csv, readers.csv                   vinbig folds --train-csv DATA/train.csv --out WORK
    detector/{run}/data/fold{k}/, detector/{run}/fold{k}/weights/
                                                         vinbig train-detector --work WORK [--run RUN] --fold K
    classifier/{run}/fold{k}/                            vinbig train-classifier --work WORK [--run RUN] --fold K
    preds/detector_{oof,test}.parquet                    vinbig predict-detector --work WORK --split oof|test
    preds/classifier_{oof,test}.csv                      vinbig predict-classifier --work WORK --split oof|test
    fusion.yaml                                          vinbig tune --work WORK
    submission.csv                                       vinbig fuse --work WORK --split test
    report/                                              vinbig report --work WORK
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from vinbig.errors import ArtifactError
from vinbig.tables import read_table

if TYPE_CHECKING:
    import pandas as pd  # imported where it is used: `vinbig --help` and light commands start without it

# The competition's class order: YOLO `names`, submission class ids and labels.csv all use it.
CLASS_NAMES: tuple[str, ...] = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "No finding",
)
NO_FINDING = 14
N_CLASSES = len(CLASS_NAMES)
BOX = ("x_min", "y_min", "x_max", "y_max")
# "No finding" as a box: the submission's `14 conf 0 0 1 1`; a class-14 truth row with an empty box means it
NO_FINDING_BOX = (0.0, 0.0, 1.0, 1.0)

# Kaggle inputs
TRAIN_COLUMNS = ("image_id", "class_name", "class_id", "rad_id", *BOX)
SUBMISSION_COLUMNS = ("image_id", "PredictionString")
NO_FINDING_PREDICTION = "14 1 0 0 1 1"
# what the metric reads: truth boxes (labels.csv qualifies) and predicted boxes (a parsed submission)
TRUTH_COLUMNS = ("image_id", "class_id", *BOX)
PRED_COLUMNS = ("image_id", "class_id", "score", *BOX)

# Stage outputs
META_COLUMNS = (
    "image_id",
    "width",  # original DICOM columns
    "height",  # original DICOM rows
    "png_width",
    "png_height",  # original x = png x * width / png_width, likewise for y (see vinbig.boxes)
    "photometric",  # MONOCHROME1 or MONOCHROME2 (MONOCHROME1 is inverted in the PNG)
    "bits_stored",
    "voi",  # voi_lut | window | percentile | constant: how intensities were mapped to 0-255
    "window_low",
    "window_high",  # the window in modality units (after rescale slope/intercept)
    "transfer_syntax",
)
ERROR_COLUMNS = ("file", "image_id", "reason")
LABEL_COLUMNS = ("image_id", "class_id", *BOX, "score", "n_readers")
# WORK/readers.csv: every reader's own boxes of the images of folds.csv (train.csv as validated, no excluded readers)
READER_COLUMNS = ("image_id", "rad_id", "class_id", *BOX)
FOLD_COLUMNS = ("image_id", "fold")
# WORK/preds/detector_{split}.parquet: one row per box, boxes in original DICOM pixels clipped to the
# image; `run` names the detector run (vinbig.runs), `tta` the prediction set within a fold ("none", "hflip").
DETECTOR_PRED_COLUMNS = ("image_id", "run", "fold", "tta", "class_id", "score", *BOX)
# WORK/preds/classifier_{split}.csv: P(abnormal) of each classifier run; for the test split, fold -1 is a run's
# mean over folds.
CLASSIFIER_PRED_COLUMNS = ("image_id", "run", "fold", "p_abnormal")
SPLITS = ("oof", "test")
# folds.outside_boxes: what a box beyond its image (meta.csv) becomes, in folds and in the detector's dataset, by
# the one rule of vinbig.boxes.place_boxes
OUTSIDE_BOXES = ("error", "clip", "drop")


def check_outside_boxes(value: str) -> str:
    """`value` of folds.outside_boxes, if it is one of OUTSIDE_BOXES; else a ConfigError."""
    if value not in OUTSIDE_BOXES:
        from vinbig.errors import ConfigError

        raise ConfigError(f"folds.outside_boxes is {value!r}; use one of {', '.join(OUTSIDE_BOXES)}")
    return value


# WORK/fusion.yaml: the fusion keys 'vinbig tune' chooses
TUNED_KEYS = ("iou_thr", "skip_box_thr", "conf_type", "levels", "calibration", "low", "high", "run_weights",
              "classifier_weights", "calibration_knots")
# the run of a stage when the config's runs section names none (vinbig.runs)
DEFAULT_RUN = "default"

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
DICOM_SUFFIXES = (".dicom", ".dcm")


@dataclass(frozen=True)
class Work:
    """Paths inside a work folder."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    @classmethod
    def of(cls, work: "Work | str | os.PathLike") -> "Work":
        """`work` as a Work: every stage function takes a Work or the folder's path."""
        return work if isinstance(work, Work) else cls(work)

    def images(self, split: str) -> Path:
        return self.root / "images" / split

    def png(self, split: str, image_id: str) -> Path:
        """The converted image ``WORK/images/{split}/{image_id}.png``."""
        return png_path(self.images(split), image_id)

    @property
    def labels(self) -> Path:
        return self.root / "labels.csv"

    @property
    def folds(self) -> Path:
        return self.root / "folds.csv"

    @property
    def readers(self) -> Path:
        """``WORK/readers.csv``: each reader's own boxes (READER_COLUMNS), for runs that train on them."""
        return self.root / "readers.csv"

    @property
    def detector(self) -> Path:
        return self.root / "detector"

    @property
    def classifier(self) -> Path:
        return self.root / "classifier"

    @property
    def preds(self) -> Path:
        return self.root / "preds"

    def run_dir(self, stage: str, run: str = DEFAULT_RUN) -> Path:
        """``WORK/{stage}/{run}``: the folds of one named run (vinbig.runs) of the detector or the classifier."""
        return self.root / stage / run

    def fold_dir(self, stage: str, fold: int, run: str = DEFAULT_RUN) -> Path:
        """``WORK/{stage}/{run}/fold{k}``: one fold's training run."""
        return self.run_dir(stage, run) / f"fold{fold}"

    def trained(self, stage: str, fold: int, run: str = DEFAULT_RUN) -> Path:
        """``WORK/{stage}/{run}/fold{k}/.trained``: the stamp of a finished fold (make and ``vinbig train`` write it
        once its training command exited 0)."""
        return self.fold_dir(stage, fold, run) / ".trained"

    @property
    def logs(self) -> Path:
        """``WORK/logs``: each ``vinbig train`` job's log and the config the jobs read."""
        return self.root / "logs"

    def checkpoint(self, stage: str, fold: int, which: str = "best", run: str = DEFAULT_RUN) -> Path:
        """A fold's ``best`` or ``last`` weights: ``detector/{run}/fold{k}/weights/{which}.pt`` (ultralytics' run
        layout) or ``classifier/{run}/fold{k}/{which}.pt``."""
        d = self.fold_dir(stage, fold, run)
        return (d / "weights" if stage == "detector" else d) / f"{which}.pt"

    def classifier_summary(self, fold: int, run: str = DEFAULT_RUN) -> Path:
        """``classifier/{run}/fold{k}/summary.csv``: one row per training epoch."""
        return self.fold_dir("classifier", fold, run) / "summary.csv"

    def detector_data(self, fold: int, run: str = DEFAULT_RUN) -> Path:
        """``WORK/detector/{run}/data/fold{k}``: the ultralytics dataset (links and labels) of one fold of a run."""
        return self.run_dir("detector", run) / "data" / f"fold{fold}"

    def data_yaml(self, fold: int, run: str = DEFAULT_RUN) -> Path:
        """The ultralytics ``data.yaml`` of fold `fold`'s dataset of run `run`."""
        return self.detector_data(fold, run) / "data.yaml"

    def old_layout_hint(self, stage: str) -> str:
        """For a WORK trained by a vinbig before named runs (``WORK/{stage}/fold{k}``): how to move its folds;
        empty when it has none."""
        d = self.root / stage
        old = sorted(p.name for p in d.glob("fold[0-9]*") if p.is_dir()) if d.is_dir() else []
        if not old:
            return ""
        return (f" ({d} holds {', '.join(old)} of a vinbig before named runs: move them into {self.run_dir(stage)}/ "
                f"to use them as the run '{DEFAULT_RUN}')")

    def detector_preds(self, split: str) -> Path:
        return self.preds / f"detector_{split}.parquet"

    def classifier_preds(self, split: str) -> Path:
        return self.preds / f"classifier_{split}.csv"

    @property
    def fusion_config(self) -> Path:
        """Fusion parameters and gate thresholds chosen by ``vinbig tune``; ``vinbig fuse`` reads them."""
        return self.root / "fusion.yaml"

    @property
    def submission(self) -> Path:
        return self.root / "submission.csv"

    @property
    def report(self) -> Path:
        return self.root / "report"


# --------------------------------------------------------------------------- how each file is made


def exported(pt: str | os.PathLike) -> tuple[Path, Path]:
    """The files that stand for the checkpoint `pt` (a fold's best.pt) in an export (`vinbig export`): its tensors
    (safetensors) and its architecture (yaml: the detector's model yaml, names and imgsz; the classifier's backbone
    and imgsz), beside where the .pt was."""
    pt = Path(pt)
    return pt.with_suffix(".safetensors"), pt.with_suffix(".yaml")


def has_weights(pt: str | os.PathLike) -> bool:
    """Whether the fold of checkpoint `pt` has weights: the .pt itself or its exported form."""
    return Path(pt).is_file() or all(p.is_file() for p in exported(pt))


def images_command(image_dir: str | os.PathLike) -> str:
    """The command that converts the DICOMs of an image folder (``.../images/train`` is made from DATA/train)."""
    d = Path(image_dir)
    return f"vinbig images --src DATA/{d.name} --out {d}"


def folds_command(work: Work) -> str:
    return f"vinbig folds --train-csv DATA/train.csv --out {work.root}"


def train_command(work: Work, stage: str, fold: int, run: str = DEFAULT_RUN) -> str:
    """``vinbig train-detector`` or ``train-classifier`` of one fold (of one run)."""
    named = f" --run {run}" if run != DEFAULT_RUN else ""
    return f"vinbig train-{stage} --work {work.root}{named} --fold {fold}"


def predict_command(work: Work, stage: str, split: str) -> str:
    return f"vinbig predict-{stage} --work {work.root} --split {split}"


def png_path(image_dir: str | os.PathLike, image_id: str) -> Path:
    """``<image_dir>/<image_id>.png``: an image converted by ``vinbig images``."""
    return Path(image_dir) / f"{image_id}.png"


def meta_path(image_dir: str | os.PathLike) -> Path:
    return Path(image_dir) / "meta.csv"


def errors_path(image_dir: str | os.PathLike) -> Path:
    return Path(image_dir) / "errors.csv"


def source_path(image_dir: str | os.PathLike) -> Path:
    """``source.txt`` beside the PNGs: the absolute DICOM folder `vinbig images` converted (DATA/train or DATA/test)."""
    return Path(image_dir) / "source.txt"


def config_path(out_dir: str | os.PathLike, stage: str) -> Path:
    """Where a stage saves its resolved config: ``<out>/config_<stage>.yaml``."""
    return Path(out_dir) / f"config_{stage}.yaml"


# --------------------------------------------------------------------------- writing


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A reader never sees a half-written file, and a crash leaves at most a ``.partial`` file,
    which the next run overwrites.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_fix(e: OSError) -> str:
    """What to do about a failed write: free space on a full disk, else look at the folder."""
    if e.errno == errno.ENOSPC or "No space left" in str(e):
        return "free space on its disk"
    return "check its folder's permissions and free disk space"


@contextlib.contextmanager
def writing(path: str | os.PathLike, fix: str | Callable[[OSError], str]) -> Iterator[None]:
    """A block that writes `path`: an OSError in it (a full disk, a lost permission) becomes one ArtifactError,
    ``cannot write PATH: cause; FIX`` (`fix` may depend on the error). Pair it with atomic_path, so that nothing is
    left half-written."""
    try:
        yield
    except OSError as e:
        cause = e.strerror or (os.strerror(e.errno) if e.errno else str(e).strip().splitlines()[0])
        raise ArtifactError(f"cannot write {path}: {cause}; {fix(e) if callable(fix) else fix}") from None


def check_writable(path: str | os.PathLike, folder: bool = False) -> Path:
    """Check, before long work starts, that the file `path` (or the folder, with `folder`) can be written: its
    folder is made if missing and a probe file is written there and removed. Raises ArtifactError naming the path
    and the cause."""
    path = Path(path)
    where = path if folder else path.parent
    try:
        if path.is_dir() and not folder:
            raise IsADirectoryError(21, "it is a folder", str(path))
        if where.exists() and not where.is_dir():
            raise NotADirectoryError(20, "a file stands where the folder should be", str(where))
        where.mkdir(parents=True, exist_ok=True)
        probe = where / f".{path.name}.{os.getpid()}.probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ArtifactError(f"cannot write {path}: {e.strerror or e} ({e.filename or where}); choose another "
                            "output path or fix its permissions") from None
    return path


def check_output(out: str | os.PathLike, made_by: str) -> Path:
    """Before long work: the file `out` can be written (:func:`check_writable`); a file standing where one of its
    folders should be is named with `made_by`, the command to run again once it is moved."""
    out = Path(out)
    for folder in (out.parent, *out.parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ArtifactError(f"cannot write {out}: {folder} is a file, where a folder should be; move or "
                                    f"rename it, then run '{made_by}' again")
            break
    return check_writable(out)


def write_csv(df: pd.DataFrame, path: str | os.PathLike, columns: Sequence[str]) -> Path:
    """Write `df` with exactly `columns`, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        df.loc[:, list(columns)].to_csv(tmp, index=False)
    return path


# --------------------------------------------------------------------------- reading


def read_csv(path: str | os.PathLike, columns: Sequence[str], made_by: str, **kwargs) -> pd.DataFrame:
    """Read a stage's CSV that must hold `columns` through the one table reader (vinbig.tables); an error names
    the file and the command `made_by` that writes it."""
    return read_table(path, f"run '{made_by}' again", missing=f"run '{made_by}'", columns=columns, **kwargs)


def read_meta(image_dir: str | os.PathLike) -> pd.DataFrame:
    return read_csv(meta_path(image_dir), META_COLUMNS, images_command(image_dir), dtype={"image_id": str})


def read_labels(work: Work) -> pd.DataFrame:
    return read_csv(work.labels, LABEL_COLUMNS, folds_command(work), dtype={"image_id": str})


def read_readers(work: Work) -> pd.DataFrame:
    """WORK/readers.csv: each reader's own boxes; image_id and rad_id as str."""
    return read_csv(work.readers, READER_COLUMNS, folds_command(work), dtype={"image_id": str, "rad_id": str})


def read_folds(work: Work) -> pd.DataFrame:
    import pandas as pd

    df = read_csv(work.folds, FOLD_COLUMNS, folds_command(work), no_rows=f"run '{folds_command(work)}' again",
                  dtype={"image_id": str})
    if not pd.api.types.is_integer_dtype(df["fold"]):
        bad = sorted(set(df.loc[pd.to_numeric(df["fold"], errors="coerce").isna(), "fold"].astype(str)))[:5]
        raise ArtifactError(f"{work.folds}: the fold column holds values that are not whole numbers ({bad}); run "
                            f"'{folds_command(work)}' again")
    return df


def fold_ids(table: pd.DataFrame) -> list[int]:
    """The folds of a table with a ``fold`` column (folds.csv), sorted."""
    return sorted(int(k) for k in table["fold"].unique())


def check_fold(work: Work, folds: int | Sequence[int], table: pd.DataFrame | None = None) -> list[int]:
    """The folds of folds.csv (or of `table`), after checking that each of `folds` is one of them."""
    known = fold_ids(read_folds(work) if table is None else table)
    if not known:
        raise ArtifactError(f"{work.folds} holds no images; run '{folds_command(work)}' again")
    unknown = sorted(set([folds] if isinstance(folds, int) else folds) - set(known))
    if unknown:
        which = "fold {} is" if len(unknown) == 1 else "folds {} are"
        raise ArtifactError(f"{which.format(', '.join(map(str, unknown)))} not in {work.folds}, whose folds are "
                            f"{known}; give --fold {known[0]}..{known[-1]}")
    return known


def read_detector_preds(work: Work, split: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The detector's predictions for `split` (all columns, or `columns`), image_id as str."""
    path = work.detector_preds(split)
    made_by = predict_command(work, "detector", split)
    if not path.is_file():
        raise ArtifactError(f"{path.name} not found at {path}; run '{made_by}'")
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise ArtifactError(f"{path} is not a readable parquet file ({e}); run '{made_by}' again") from None
    missing = [c for c in DETECTOR_PRED_COLUMNS if c not in names]
    if missing:
        raise ArtifactError(f"{path} lacks the columns {missing} (it has {names}); run '{made_by}' again")
    import pandas as pd

    df = pd.read_parquet(path, columns=list(columns or DETECTOR_PRED_COLUMNS))
    for c in ("image_id", "run"):
        if c in df:
            df[c] = df[c].astype(str)
    return df


def read_classifier_preds(work: Work, split: str) -> pd.DataFrame:
    """WORK/preds/classifier_{split}.csv; a p_abnormal that is not a probability (NaN, empty, text, outside 0..1) or a
    fold that is not a whole number is refused, naming the lines, their images and the command that writes it."""
    import numpy as np
    import pandas as pd

    path, made_by = work.classifier_preds(split), predict_command(work, "classifier", split)
    df = read_csv(path, CLASSIFIER_PRED_COLUMNS, made_by, dtype={"image_id": str, "run": str})
    p = pd.to_numeric(df["p_abnormal"], errors="coerce").to_numpy(np.float64)
    fold = pd.to_numeric(df["fold"], errors="coerce").to_numpy(np.float64)
    bad = ~(np.isfinite(p) & (p >= 0) & (p <= 1)) | ~(np.isfinite(fold) & (fold == np.round(fold)))
    if bad.any():
        rows = np.flatnonzero(bad)
        shown = "; ".join(f"line {i + 2} (image {df['image_id'].iat[i]}, run {df['run'].iat[i]}, fold "
                          f"{df['fold'].iat[i]}): p_abnormal {df['p_abnormal'].iat[i]}" for i in rows[:3])
        more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
        raise ArtifactError(f"{path}: {len(rows)} row(s) hold no probability in 0..1 or no whole fold: {shown}{more}; "
                            f"run '{made_by}' again")
    return df.assign(p_abnormal=p, fold=fold.astype(np.int64))
