"""Check the competition's train.csv before anything is built on it.

The file is read by the one table reader (vinbig.tables), so a missing, empty, binary, UTF-16 or ragged
train.csv is one line as for every other CSV. Every fault is collected in one vectorized pass, so one run shows
the user all of them: each is reported with its CSV line (the header is line 1), its column and how to fix it.
At most ``MAX_REPORTED`` faults are listed, followed by "and N more".

An exact duplicate of an earlier row is reported with both line numbers and counted once (a repeated
box would weigh twice in the readers' fusion). Once the image sizes are known (meta.csv of
``vinbig images``), :func:`check_box_extents` finds the boxes that reach beyond their image, by the rule of
vinbig.boxes.place_boxes that the detector's datasets follow too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from vinbig.artifacts import BOX, CLASS_NAMES, NO_FINDING, NO_FINDING_BOX, SAFE_ID, TRAIN_COLUMNS, check_outside_boxes
from vinbig.boxes import EDGE_SLACK, place_boxes
from vinbig.errors import TrainCsvError
from vinbig.log import some
from vinbig.tables import read_table

logger = logging.getLogger(__name__)

MAX_REPORTED = 20


class _Faults:
    """Collects (line, text) per check; keeps the first MAX_REPORTED texts of each check and counts the rest."""

    def __init__(self) -> None:
        self.items: list[tuple[int, str]] = []
        self.total = 0

    def add(self, rows: np.ndarray, describe) -> None:
        """`rows`: positional row indices (sorted) of a check's faults; describe(i) -> text for row i."""
        self.total += len(rows)
        for i in rows[:MAX_REPORTED]:
            self.items.append((int(i) + 2, describe(int(i))))

    def message(self, path: Path) -> str:
        shown = sorted(self.items, key=lambda t: t[0])[:MAX_REPORTED]
        lines = [f"{path} has {self.total} fault(s); fix them and run again:"]
        lines += [f"  line {line}, {text}" for line, text in shown]
        if self.total > len(shown):
            lines.append(f"  and {self.total - len(shown)} more")
        return "\n".join(lines)


class _Cells:
    """Row i of a string Series, for fault messages (only a few are ever looked up)."""

    def __init__(self, series: pd.Series) -> None:
        self.series = series

    def __getitem__(self, i: int) -> str:
        return str(self.series.iat[i])


TRAIN_FIX = f"give the competition's train.csv, whose header is {','.join(TRAIN_COLUMNS)}"


def _read(path: Path) -> pd.DataFrame:
    """train.csv through the one table reader (vinbig.tables), everything as text: the checks below tell an empty
    cell from a non-number, line by line."""
    return read_table(path, TRAIN_FIX, what="train.csv", missing="give the competition's train.csv with --train-csv",
                      columns=TRAIN_COLUMNS, no_rows=TRAIN_FIX, strip_names=True, error=TrainCsvError, dtype=str,
                      keep_default_na=False, na_filter=False)


def validate_train_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check train.csv; raise TrainCsvError listing every fault, else return the clean table.

    The table has exactly TRAIN_COLUMNS: image_id, class_name and rad_id as str, class_id as int,
    the box columns as float. "No finding" rows (class 14) get an empty (NaN) box, also where the
    file wrote the competition's placeholder box ``0 0 1 1``.
    """
    path = Path(path)
    raw = _read(path)

    col = {c: raw[c].astype(str).str.strip() for c in TRAIN_COLUMNS}  # pandas string Series
    text = {c: _Cells(col[c]) for c in TRAIN_COLUMNS}  # text[c][i]: the cell of row i, for messages
    empty = {c: (col[c] == "").to_numpy(dtype=bool) for c in TRAIN_COLUMNS}
    faults = _Faults()

    # image_id: a safe file name (it becomes <image_id>.png)
    unique_ids = pd.Series(col["image_id"].unique())
    bad_ids = unique_ids[~unique_ids.str.fullmatch(SAFE_ID.pattern).fillna(False).to_numpy(dtype=bool)]
    if len(bad_ids):
        rows = np.flatnonzero(col["image_id"].isin(bad_ids).to_numpy(dtype=bool))
        faults.add(rows, lambda i: f"image_id {text['image_id'][i]!r} is not a safe file name "
                                   f"(letters, digits, '_', '.', '-'; not starting with '.', '_' or '-'); "
                                   f"rename the image and its DICOM file")

    # rad_id: present
    rows = np.flatnonzero(empty["rad_id"])
    faults.add(rows, lambda i: "rad_id is empty; write the reader's id (R1 .. R17)")

    # class_id: an integer in 0..14
    cid = pd.to_numeric(col["class_id"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    cid_ok = np.isfinite(cid) & (cid == np.round(cid)) & (cid >= 0) & (cid <= NO_FINDING)
    faults.add(np.flatnonzero(~cid_ok),
               lambda i: f"class_id {text['class_id'][i]!r} is not an integer in 0..{NO_FINDING}; "
                         f"write the competition's class id (0 = {CLASS_NAMES[0]} .. "
                         f"{NO_FINDING} = {CLASS_NAMES[NO_FINDING]})")
    class_id = np.where(cid_ok, cid, -1).astype(np.int64)

    # class_name: agrees with class_id
    names = np.asarray(CLASS_NAMES + ("",), dtype=object)
    expected = names[class_id]  # index -1 -> "" for rows whose class_id is already reported
    rows = np.flatnonzero(cid_ok & (col["class_name"].to_numpy(dtype=object) != expected))
    faults.add(rows, lambda i: f"class_name {text['class_name'][i]!r} disagrees with class_id {class_id[i]}, "
                               f"which means {CLASS_NAMES[class_id[i]]!r}; correct the name or the id")

    # boxes
    values = {c: pd.to_numeric(col[c], errors="coerce").to_numpy(dtype=float, na_value=np.nan) for c in BOX}
    finding = cid_ok & (class_id != NO_FINDING)
    numeric = {}
    for c in BOX:
        numeric[c] = np.isfinite(values[c])
        faults.add(np.flatnonzero(finding & empty[c]),
                   lambda i, c=c: f"{c} is empty for class {class_id[i]} ({CLASS_NAMES[class_id[i]]}); "
                                  f"a finding needs a box: write its {c} in pixels")
        faults.add(np.flatnonzero(finding & ~empty[c] & ~numeric[c]),
                   lambda i, c=c: f"{c} {text[c][i]!r} is not a number; write the box in pixels")
        faults.add(np.flatnonzero(finding & numeric[c] & (values[c] < -EDGE_SLACK)),  # vinbig.boxes' rule
                   lambda i, c=c: f"{c} {text[c][i]} is negative; box coordinates are pixels from the "
                                  f"top-left corner, 0 or more")
    for lo, hi in (("x_min", "x_max"), ("y_min", "y_max")):
        both = finding & numeric[lo] & numeric[hi]
        faults.add(np.flatnonzero(both & (values[hi] <= values[lo])),
                   lambda i, lo=lo, hi=hi: f"{hi}: {hi} {text[hi][i]} is not greater than {lo} {text[lo][i]}; "
                                           f"write the box as {lo} < {hi} (corners, not width/height)")

    no_finding = cid_ok & (class_id == NO_FINDING)
    all_empty = np.logical_and.reduce([empty[c] for c in BOX])
    placeholder = np.logical_and.reduce([values[c] == v for c, v in zip(BOX, NO_FINDING_BOX)])
    rows = np.flatnonzero(no_finding & ~all_empty & ~placeholder)
    faults.add(rows, lambda i: "x_min..y_max: a 'No finding' row (class 14) has the box "
                               f"{' '.join(repr(text[c][i]) for c in BOX)}; leave the box empty or write 0 0 1 1")

    # a reader who wrote "No finding" and boxed a finding on the same image: reported at the No finding row
    pairs = pd.DataFrame({"image_id": col["image_id"], "rad_id": col["rad_id"], "nf": no_finding,
                          "f": finding, "row": np.arange(len(raw))})[~empty["rad_id"] & cid_ok]
    agg = pairs.groupby(["image_id", "rad_id"], sort=False).agg(nf=("nf", "any"), f=("f", "any"))
    conflicts = agg.index[(agg["nf"] & agg["f"]).to_numpy()]
    if len(conflicts):
        nf_rows = pairs[pairs["nf"]].set_index(["image_id", "rad_id"])["row"]
        rows = np.sort(nf_rows[nf_rows.index.isin(conflicts)].to_numpy())
        faults.add(rows, lambda i: f"class_id: image {text['image_id'][i]} is marked 'No finding' by reader "
                                   f"{text['rad_id'][i]}, who also boxed findings on it; remove the 'No finding' "
                                   f"row or the boxes of {text['rad_id'][i]}")

    if faults.total:
        raise TrainCsvError(faults.message(path))

    clean = pd.DataFrame({
        "image_id": col["image_id"],
        "class_name": col["class_name"],
        "class_id": class_id,
        "rad_id": col["rad_id"],
    })
    for c in BOX:
        clean[c] = np.where(no_finding, np.nan, values[c])
    return _drop_duplicates(clean, path)


def _lines(rows, limit: int = MAX_REPORTED) -> str:
    """'line 5, line 9, ... and 3 more' for positional rows (the header is line 1)."""
    return some((f"line {int(i) + 2}" for i in rows), limit)


def _drop_duplicates(clean: pd.DataFrame, path: Path) -> pd.DataFrame:
    """`clean` without rows that repeat an earlier row exactly (same image, reader, class and box), with a
    warning naming their lines: each box counts once."""
    repeat = clean.duplicated(keep="first").to_numpy()
    if not repeat.any():
        return clean
    first = clean.groupby(list(clean.columns), dropna=False, sort=False).ngroup().to_numpy()
    first_row = pd.Series(np.arange(len(clean))).groupby(first).transform("min").to_numpy()
    rows = np.flatnonzero(repeat)
    shown = some((f"line {i + 2} repeats line {first_row[i] + 2}" for i in rows), MAX_REPORTED)
    logger.warning("%s: %d row(s) are exact duplicates of an earlier row and are counted once (%s); delete "
                   "them from the file to silence this", path, len(rows), shown)
    return clean[~repeat]


def check_box_extents(train: pd.DataFrame, sizes: pd.DataFrame, *, outside_boxes: str = "error",
                      path: str | os.PathLike = "train.csv",
                      sizes_path: str | os.PathLike = "meta.csv") -> pd.DataFrame:
    """Check every box of `train` (validated, index = row position in `path`) against the original width and
    height of its image in `sizes` (meta.csv: image_id, width, height) by the one rule of vinbig.boxes
    (:class:`~vinbig.boxes.Placement`, which the detector's datasets use too); returns `train` with the boxes that
    reach beyond their image handled as `outside_boxes` says:

    * ``error``: raise TrainCsvError listing them (line and image) and the fix;
    * ``clip``: move them to the image's edge (one with under a pixel left is dropped), with a warning;
    * ``drop``: leave them out, with a warning naming them.

    Whatever it says, a box within 1/1000 px of the edge is moved onto it, and a box under one pixel wide or high
    is left out with a warning. Images that `sizes` does not list are checked for the size of their boxes only.
    """
    check_outside_boxes(outside_boxes)
    size = sizes.drop_duplicates("image_id").set_index("image_id")
    width = pd.to_numeric(train["image_id"].map(size["width"]), errors="coerce").to_numpy(dtype=float)
    height = pd.to_numeric(train["image_id"].map(size["height"]), errors="coerce").to_numpy(dtype=float)
    xyxy = train[list(BOX)].to_numpy(dtype=float)  # NaN: a "No finding" row
    placed = place_boxes(xyxy, width, height)
    if not (placed.beyond | placed.negative | placed.small | placed.edge).any():
        return train
    line = train.index.to_numpy() + 2
    rows = np.flatnonzero(placed.error(outside_boxes) | placed.beyond)

    def describe(i: int) -> str:
        x_min, y_min, x_max, y_max = xyxy[i]
        over = [f"{c} {v:.10g} < 0" for c, v in (("x_min", x_min), ("y_min", y_min)) if v < -EDGE_SLACK]
        over += [f"{c} {v:.10g} > {dim} {lim:.10g}" for c, v, dim, lim in
                 (("x_max", x_max, "width", width[i]), ("y_max", y_max, "height", height[i])) if v > lim + EDGE_SLACK]
        return f"line {line[i]}, image {train['image_id'].iat[i]}: {' and '.join(over)}"

    listed = [describe(i) for i in rows[:MAX_REPORTED]]
    more = [f"and {len(rows) - MAX_REPORTED} more"] if len(rows) > MAX_REPORTED else []
    if placed.error(outside_boxes).any():
        raise TrainCsvError("\n".join(
            [f"{path}: {len(rows)} box(es) reach beyond their image (its width and height in {sizes_path}):"]
            + [f"  {t}" for t in listed + more]
            + ["fix those rows of train.csv, or choose --outside-boxes clip (move them to the image's edge) or "
               "--outside-boxes drop (leave them out)"]))
    if outside_boxes == "drop" and len(rows):
        logger.warning("%s: %d box(es) reach beyond their image (sizes of %s) and are left out "
                       "(folds.outside_boxes=drop): %s", path, len(rows), sizes_path, "; ".join(listed + more))
    elif len(rows):
        brief = "; ".join(listed[:5]) + (f"; and {len(rows) - 5} more" if len(rows) > 5 else "")
        gone = rows[placed.small[rows]]  # under a pixel left of them
        logger.warning("%s: %d box(es) reach beyond their image (sizes of %s) and are clipped to its edge "
                       "(folds.outside_boxes=clip)%s: %s", path, len(rows), sizes_path,
                       f"; {len(gone)} of them lie wholly outside or leave under one pixel inside and are left out "
                       f"({_lines(train.index[gone])})" if len(gone) else "", brief)
    small = np.flatnonzero(placed.small & ~placed.beyond)
    if len(small):
        logger.warning("%s: %d box(es) are under one pixel wide or high and are left out, as the detector leaves "
                       "them out of its labels: %s", path, len(small),
                       some((f"line {line[i]}, image {train['image_id'].iat[i]}" for i in small), 5))
    moved = placed.keep(outside_boxes) & (placed.edge | placed.beyond)
    out = train.copy()
    out.loc[out.index[moved], list(BOX)] = placed.boxes[moved]
    return out.drop(index=out.index[~placed.keep(outside_boxes)])
