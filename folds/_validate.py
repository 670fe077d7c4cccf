"""Check the competition's train.csv before anything is built on it.

Every fault is collected in one vectorized pass, so one run shows the user all of them: each is
reported with its CSV line (the header is line 1), its column and how to fix it. At most
``MAX_REPORTED`` faults are listed, followed by "and N more".
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from vinbig.artifacts import BOX, CLASS_NAMES, NO_FINDING, NO_FINDING_BOX, SAFE_ID, TRAIN_COLUMNS
from vinbig.errors import TrainCsvError

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
    return clean
