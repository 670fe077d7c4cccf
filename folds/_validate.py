"""Check the competition's train.csv before anything is built on it.

Every fault is collected in one vectorized pass, so one run shows the user all of them: each is
reported with its CSV line (the header is line 1), its column and how to fix it. At most
``MAX_REPORTED`` faults are listed, followed by "and N more".

An exact duplicate of an earlier row is reported with both line numbers and counted once (a repeated
box would weigh twice in the readers' fusion). Once the image sizes are known (meta.csv of
``vinbig images``), :func:`check_box_extents` finds the boxes that reach beyond their image.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from vinbig.artifacts import BOX, CLASS_NAMES, NO_FINDING, NO_FINDING_BOX, SAFE_ID, TRAIN_COLUMNS, check_outside_boxes
from vinbig.errors import TrainCsvError
from vinbig.log import some

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


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise TrainCsvError(f"train.csv not found at {path}; give the competition's train.csv with --train-csv")
    try:
        # everything as text: the checks below tell an empty cell from a non-number, line by line
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise TrainCsvError(f"{path} is not a readable CSV ({e}); give the competition's train.csv") from None


def validate_train_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check train.csv; raise TrainCsvError listing every fault, else return the clean table.

    The table has exactly TRAIN_COLUMNS: image_id, class_name and rad_id as str, class_id as int,
    the box columns as float. "No finding" rows (class 14) get an empty (NaN) box, also where the
    file wrote the competition's placeholder box ``0 0 1 1``.
    """
    path = Path(path)
    raw = _read(path)
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in TRAIN_COLUMNS if c not in raw.columns]
    if missing:
        raise TrainCsvError(
            f"{path} lacks the column(s) {missing} (line 1 has {list(raw.columns)}); the header must be "
            f"{','.join(TRAIN_COLUMNS)}"
        )
    if raw.empty:
        raise TrainCsvError(f"{path} has a header but no rows; give the competition's train.csv")

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
        faults.add(np.flatnonzero(finding & numeric[c] & (values[c] < 0)),
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
    height of its image in `sizes` (meta.csv: image_id, width, height); returns `train` with the boxes that
    reach beyond their image handled as `outside_boxes` says:

    * ``error``: raise TrainCsvError listing them (line and image) and the fix;
    * ``clip``: move them to the image's edge (a box wholly outside is dropped), with a warning;
    * ``drop``: leave them out, with a warning naming them.

    Images that `sizes` does not list are not checked.
    """
    check_outside_boxes(outside_boxes)
    size = sizes.drop_duplicates("image_id").set_index("image_id")
    width = pd.to_numeric(train["image_id"].map(size["width"]), errors="coerce").to_numpy(dtype=float)
    height = pd.to_numeric(train["image_id"].map(size["height"]), errors="coerce").to_numpy(dtype=float)
    x_max, y_max = train["x_max"].to_numpy(dtype=float), train["y_max"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):  # NaN: a "No finding" row or an image without a size
        outside = (x_max > width) | (y_max > height)
    if not outside.any():
        return train
    rows = np.flatnonzero(outside)
    line = train.index.to_numpy()[rows] + 2

    def describe(k: int) -> str:
        i = rows[k]
        over = [f"{c} {v:.10g} > {dim} {lim:.10g}" for c, v, dim, lim in
                (("x_max", x_max[i], "width", width[i]), ("y_max", y_max[i], "height", height[i])) if v > lim]
        return f"line {line[k]}, image {train['image_id'].iat[i]}: {' and '.join(over)}"

    listed = [describe(k) for k in range(min(len(rows), MAX_REPORTED))]
    more = [f"and {len(rows) - MAX_REPORTED} more"] if len(rows) > MAX_REPORTED else []
    if outside_boxes == "error":
        raise TrainCsvError("\n".join(
            [f"{path}: {len(rows)} box(es) reach beyond their image (its width and height in {sizes_path}):"]
            + [f"  {t}" for t in listed + more]
            + ["fix those rows of train.csv, or choose --outside-boxes clip (move them to the image's edge) or "
               "--outside-boxes drop (leave them out)"]))
    brief = "; ".join(listed[:5]) + (f"; and {len(rows) - 5} more" if len(rows) > 5 else "")
    if outside_boxes == "drop":
        logger.warning("%s: %d box(es) reach beyond their image (sizes of %s) and are left out "
                       "(folds.outside_boxes=drop): %s", path, len(rows), sizes_path, "; ".join(listed + more))
        return train.drop(index=train.index[rows])
    clipped = train.copy()
    clipped.loc[clipped.index[rows], "x_max"] = np.minimum(x_max[rows], width[rows])
    clipped.loc[clipped.index[rows], "y_max"] = np.minimum(y_max[rows], height[rows])
    x_min, y_min = train["x_min"].to_numpy(dtype=float), train["y_min"].to_numpy(dtype=float)
    gone = rows[(x_min[rows] >= width[rows]) | (y_min[rows] >= height[rows])]  # wholly outside: nothing left
    logger.warning("%s: %d box(es) reach beyond their image (sizes of %s) and are clipped to its edge "
                   "(folds.outside_boxes=clip)%s: %s", path, len(rows), sizes_path,
                   f"; {len(gone)} of them lie wholly outside and are left out ({_lines(train.index[gone])})"
                   if len(gone) else "", brief)
    return clipped.drop(index=clipped.index[gone])
