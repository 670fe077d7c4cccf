"""The submission file, in one place: reading it into boxes (the metric's input), writing it from predicted
boxes, checking one (`vinbig validate`) and scoring one against a truth file (`vinbig score`). Every file is read
through the one table reader (vinbig.tables); vinbig.metric works on the tables.

Format (docs/competition.md, Submission format): ``image_id,PredictionString``, one row per image of the sample submission, in
its order; a PredictionString is groups of ``class conf x_min y_min x_max y_max``, boxes in
original pixels; "No finding" is ``14 conf 0 0 1 1``.

Written values: coordinates rounded to 0.1 px (boxes that collapse to zero width or height in that
rounding are dropped), confidences clipped to [0, 1] and rounded to 9 decimals.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from vinbig.artifacts import (BOX, N_CLASSES, NO_FINDING, NO_FINDING_BOX, NO_FINDING_PREDICTION, SUBMISSION_COLUMNS,
                              ArtifactError, images_command, read_csv, write_csv)
from vinbig.errors import SubmissionFormatError
from vinbig.metric import TRUTH_FIX, Result, average_precision, index_of, match, prepare_truth
from vinbig.tables import check_columns, read_table, read_text

logger = logging.getLogger(__name__)
MAX_FAULTS_PER_ROW = 3
SUBMISSION_FIX = f"a submission is a CSV with the header {','.join(SUBMISSION_COLUMNS)} ('vinbig validate' checks one)"
SAMPLE_FIX = "give the competition's sample_submission.csv as --sample"
NO_ROWS_FIX = f"a submission has one row per test image ('{NO_FINDING_PREDICTION}' for an image without findings)"


# --------------------------------------------------------------------------- reading


def parse_prediction_strings(image_ids, strings) -> pd.DataFrame:
    """Submission rows -> one row per box (PRED_COLUMNS), in submission order.

    Raises SubmissionFormatError naming the (1-based, header = line 1) line of a malformed string.
    """
    image_ids = np.asarray(image_ids, dtype=object).astype(str)
    texts = [s if isinstance(s, str) else "" for s in strings]
    counts = np.fromiter((len(s.split()) for s in texts), dtype=np.int64, count=len(texts))
    bad = np.flatnonzero(counts % 6)
    if len(bad):
        raise SubmissionFormatError(f"line {bad[0] + 2} ({image_ids[bad[0]]}): {counts[bad[0]]} numbers, not a "
                                    "multiple of 6 (class conf x_min y_min x_max y_max); run 'vinbig validate'")
    with warnings.catch_warnings():  # numpy warns when the text stops being numbers; the count says so too
        warnings.simplefilter("ignore")
        try:
            values = np.fromstring(" ".join(texts), sep=" ") if counts.sum() else np.zeros(0)
        except ValueError:  # numpy >= 2.3 raises where older ones warned
            values = np.zeros(0)
    if len(values) != counts.sum():
        for i, s in enumerate(texts):
            try:
                [float(t) for t in s.split()]
            except ValueError:
                raise SubmissionFormatError(f"line {i + 2} ({image_ids[i]}): a value is not a number; "
                                            "run 'vinbig validate'") from None
        raise SubmissionFormatError("a PredictionString could not be read; run 'vinbig validate'")
    values = values.reshape(-1, 6)
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))  # nan, inf: numpy reads them as numbers
    if len(bad):
        box_row = np.repeat(np.arange(len(texts)), counts // 6)
        row = int(box_row[bad[0]])
        group = int(bad[0] - np.searchsorted(box_row, row))
        raise SubmissionFormatError(f"line {row + 2} ({image_ids[row]}): group {group + 1} "
                                    f"({' '.join(f'{v:g}' for v in values[bad[0]])}): values must be finite "
                                    "numbers; run 'vinbig validate'")
    cls = values[:, 0]
    bad = np.flatnonzero((cls != np.round(cls)) | (cls < 0) | (cls >= N_CLASSES))
    if len(bad):
        row = int(np.repeat(np.arange(len(texts)), counts // 6)[bad[0]])
        raise SubmissionFormatError(f"line {row + 2} ({image_ids[row]}): class id {cls[bad[0]]:g} is not an integer "
                                    f"in 0..{N_CLASSES - 1}; run 'vinbig validate'")
    df = pd.DataFrame(values[:, 2:], columns=list(BOX))
    df.insert(0, "score", values[:, 1])
    df.insert(0, "class_id", values[:, 0].astype(np.int64))
    df.insert(0, "image_id", np.repeat(image_ids, counts // 6))
    return df


def read_submission(path: str | Path) -> pd.DataFrame:
    """A submission CSV -> one row per predicted box (PRED_COLUMNS), in submission order.

    A missing, empty, binary or malformed file, or one without rows, raises an error naming the file and the
    line. Class-14 boxes other than ``0 0 1 1`` are kept (the metric matches them by IoU with ``0 0 1 1``, so
    they nearly always miss) with a warning naming the first; 'vinbig validate' rejects them.
    """
    path = Path(path)
    sub = read_table(path, SUBMISSION_FIX, what="submission", columns=SUBMISSION_COLUMNS, no_rows=NO_ROWS_FIX,
                     dtype={"image_id": str, "PredictionString": str}, keep_default_na=False)
    if list(sub.columns) != list(SUBMISSION_COLUMNS):
        raise ArtifactError(f"{path} has the columns {list(sub.columns)}; a submission has exactly "
                            f"{list(SUBMISSION_COLUMNS)}")
    try:
        boxes = parse_prediction_strings(sub["image_id"], sub["PredictionString"])
    except SubmissionFormatError as e:
        raise SubmissionFormatError(f"{path}: {e}") from None
    _warn_no_finding_boxes(path, sub, boxes)
    return boxes


def _warn_no_finding_boxes(path: Path, sub: pd.DataFrame, boxes: pd.DataFrame) -> None:
    """Warn (count, first line) about class-14 boxes other than ``0 0 1 1``."""
    odd = (boxes["class_id"].to_numpy() == NO_FINDING) & (boxes[list(BOX)].to_numpy() != NO_FINDING_BOX).any(axis=1)
    if not odd.any():
        return
    first = boxes.loc[odd].iloc[0]
    line = int(np.flatnonzero(sub["image_id"].to_numpy() == first["image_id"])[0]) + 2
    logger.warning("%s: %d class-%d (No finding) boxes are not 0 0 1 1 (first: line %d, %s: 14 %g %g %g %g %g); "
                   "the metric matches them by IoU with 0 0 1 1, so they score as misses unless they overlap it; "
                   "'vinbig validate' rejects them: write '14 conf 0 0 1 1'", path, int(odd.sum()), NO_FINDING,
                   line, first["image_id"], first["score"], *first[list(BOX)])


def read_sample(path: str | Path) -> list[str]:
    """The image ids of the competition's sample submission, in order; an ArtifactError in one line naming the
    file and the fault when it is missing, empty, not a CSV, without an image_id column or lists an image twice."""
    path = Path(path)
    df = read_table(path, SAMPLE_FIX, what="sample submission", columns=["image_id"], no_rows=SAMPLE_FIX,
                    dtype={"image_id": str})
    return sample_ids(df, path)


def sample_ids(sample: str | Path | pd.DataFrame | Sequence[str], source: str | Path = "the sample submission"
               ) -> list[str]:
    """The image ids of a sample submission given as its file (read by :func:`read_sample`), as the table read
    from it, or as its ids: read once, checked once (image_id column, some images, none twice)."""
    if isinstance(sample, (str, Path)):
        return read_sample(sample)
    if not isinstance(sample, pd.DataFrame):
        return [str(i) for i in sample]
    check_columns(sample, ["image_id"], source, SAMPLE_FIX)
    ids = sample["image_id"].astype(str).str.strip()
    if ids.empty:
        raise ArtifactError(f"{source} lists no images; {SAMPLE_FIX}")
    twice = ids.duplicated()
    if twice.any():
        raise ArtifactError(f"{source} lists some images twice (first: {ids[twice].iloc[0]}, line "
                            f"{int(np.flatnonzero(twice)[0]) + 2}); {SAMPLE_FIX}")
    return ids.tolist()


def read_truth(path: str | Path) -> pd.DataFrame:
    """`vinbig score --truth`: a box table, checked; ArtifactError naming the file and line of a fault."""
    path = Path(path)
    truth = prepare_truth(read_table(path, TRUTH_FIX, what="truth file", dtype={"image_id": str}), str(path))
    if truth.empty:
        raise ArtifactError(f"{path} holds no truth rows; {TRUTH_FIX}")
    return truth


def score_files(truth_csv: str | Path, submission_csv: str | Path) -> Result:
    """`vinbig score`: the metric of a submission file against a truth box table."""
    return average_precision(match(read_truth(truth_csv), read_submission(submission_csv)))


# --------------------------------------------------------------------------- writing


def prediction_strings(boxes: pd.DataFrame, image_ids) -> pd.DataFrame:
    """One submission row per image of `image_ids` (in order) from predicted boxes (PRED_COLUMNS)."""
    image_ids = np.asarray(image_ids).astype(str)
    code = index_of(boxes["image_id"], image_ids)
    b = boxes.loc[code >= 0, ["class_id", "score", *BOX]].copy()
    code = code[code >= 0]
    b[list(BOX)] = np.round(b[list(BOX)].to_numpy(np.float64), 1)
    # 9 decimals: scores near the 0.001 floor keep 6 significant digits, so distinct scores stay distinct
    b["score"] = np.round(np.clip(b["score"].to_numpy(np.float64), 0.0, 1.0), 9)
    ok = ((b.x_max > b.x_min) & (b.y_max > b.y_min)).to_numpy()
    b, code = b[ok], code[ok]
    order = np.argsort(code, kind="stable")
    b, code = b.iloc[order], code[order]
    buf = io.StringIO()
    b.to_csv(buf, sep=" ", header=False, index=False, lineterminator="\n")
    text = re.sub(r"\.0(?=[ \n])", "", buf.getvalue())  # 52.0 -> 52, 1.0 -> 1
    groups = text.split("\n")[:-1] if len(b) else []
    bounds = np.searchsorted(code, np.arange(len(image_ids) + 1))
    strings = [" ".join(groups[a:z]) if z > a else NO_FINDING_PREDICTION for a, z in zip(bounds[:-1], bounds[1:])]
    return pd.DataFrame({"image_id": image_ids, "PredictionString": strings})


def write_submission(sub: pd.DataFrame, path: str | Path) -> Path:
    return write_csv(sub, path, SUBMISSION_COLUMNS)


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class Fault:
    line: int | None  # 1-based line of the file (the header is line 1); None for a missing image
    image_id: str
    problem: str

    def format(self, name: str) -> str:
        where = f"{name}:{self.line}" if self.line is not None else name
        return f"{where}: {self.image_id}: {self.problem}" if self.image_id else f"{where}: {self.problem}"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_groups(text: str, size: tuple[float, float] | None) -> list[str]:
    """Problems of one PredictionString (at most MAX_FAULTS_PER_ROW, then a count)."""
    tokens = text.split()
    if not tokens:
        return [f"empty PredictionString; write '{NO_FINDING_PREDICTION}' for an image without findings"]
    if len(tokens) % 6:
        return [f"{len(tokens)} values, not a multiple of 6 (groups of class conf x_min y_min x_max y_max)"]
    problems = []
    for g in range(len(tokens) // 6):
        t = tokens[6 * g:6 * g + 6]
        at = f"group {g + 1} ({' '.join(t)})"
        bad = [x for x in t if not _is_number(x)]
        if bad:
            problems.append(f"{at}: {bad[0]!r} is not a number")
            continue
        cls, conf, x1, y1, x2, y2 = (float(x) for x in t)
        if not all(math.isfinite(v) for v in (cls, conf, x1, y1, x2, y2)):
            problems.append(f"{at}: values must be finite numbers")
            continue
        if cls != int(cls) or not 0 <= cls < N_CLASSES or not t[0].lstrip("+").isdigit():
            problems.append(f"{at}: class id {t[0]} is not an integer in 0..{N_CLASSES - 1}")
        if not 0.0 <= conf <= 1.0:
            problems.append(f"{at}: confidence {t[1]} is outside [0, 1]")
        if cls == NO_FINDING:
            if (x1, y1, x2, y2) != NO_FINDING_BOX:
                problems.append(f"{at}: class {NO_FINDING} (No finding) must have the box 0 0 1 1")
            continue
        if x1 >= x2:
            problems.append(f"{at}: x_min {t[2]} is not below x_max {t[4]}")
        if y1 >= y2:
            problems.append(f"{at}: y_min {t[3]} is not below y_max {t[5]}")
        if min(x1, y1) < 0:
            problems.append(f"{at}: negative coordinate")
        elif size is not None and (x2 > size[0] or y2 > size[1]):
            problems.append(f"{at}: box outside the {size[0]:g} x {size[1]:g} image (width x height, meta.csv)")
    if len(problems) > MAX_FAULTS_PER_ROW:
        problems = problems[:MAX_FAULTS_PER_ROW] + [f"... and {len(problems) - MAX_FAULTS_PER_ROW} more in this row"]
    return problems


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the (line, fields) of each row, the file read once through vinbig.tables: a file that is
    missing, empty, binary, UTF-16 or not UTF-8 is one error as for `vinbig score`; a byte order mark is fine."""
    text = read_text(path, SUBMISSION_FIX, what="submission")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, [])
    rows = [(reader.line_num, row) for row in reader if row]
    if not rows:
        raise ArtifactError(f"{path} has a header but no rows; {NO_ROWS_FIX}")
    return header, rows


def validate_submission(path: str | Path, sample: str | Path | pd.DataFrame | Sequence[str],
                        meta: str | Path | None = None) -> list[Fault]:
    """Every fault of the submission at `path`, each with its line; an empty list means it is valid.

    `sample`: the sample submission's file, or the table or the ids already read from it (:func:`sample_ids`), so
    that a caller that has read it does not read it again. A submission that is not a readable CSV or has no rows
    is an ArtifactError in one line, as for `vinbig score`. Rows in another order than the sample's are not a
    fault (Kaggle matches rows by image_id): a warning names the first row out of order.
    """
    path = Path(path)
    expected = sample_ids(sample)
    position = {image_id: i for i, image_id in enumerate(expected)}
    sizes = None
    if meta is not None:
        m = read_csv(meta, ["image_id", "width", "height"], images_command(Path(meta).parent),
                     dtype={"image_id": str})
        sizes = dict(zip(m["image_id"], zip(m["width"].astype(float), m["height"].astype(float))))
    header, rows = _read_rows(path)
    faults: list[Fault] = []
    if header != list(SUBMISSION_COLUMNS):
        faults.append(Fault(1, "", f"header is {header}; it must be {','.join(SUBMISSION_COLUMNS)}"))
    seen: dict[str, int] = {}
    last_pos, last_id, unordered = -1, None, []
    for line, row in rows:
        if len(row) != 2:
            faults.append(Fault(line, row[0], f"{len(row)} fields; a row is image_id,PredictionString"))
            if row[0].strip() in position:  # reported here, not again as missing
                seen.setdefault(row[0].strip(), line)
            continue
        image_id, text = row[0].strip(), row[1]
        if image_id in seen:
            faults.append(Fault(line, image_id, f"duplicate: the image is already on line {seen[image_id]}"))
        elif image_id not in position:
            faults.append(Fault(line, image_id, "extra image: not in the sample submission"))
        else:
            seen[image_id] = line
            if position[image_id] < last_pos:
                unordered.append((line, image_id, last_id, position[image_id] + 2))
            else:
                last_pos, last_id = position[image_id], image_id
        size = sizes.get(image_id) if sizes is not None else None
        faults += [Fault(line, image_id, p) for p in _check_groups(text, size)]
    for image_id in expected:
        if image_id not in seen:
            faults.append(Fault(None, image_id, f"missing image (sample line {position[image_id] + 2}); write "
                                f"'{NO_FINDING_PREDICTION}' if there is nothing to predict"))
    if unordered:
        line, image_id, before, sample_line = unordered[0]
        logger.warning("%s:%d: %s: not in the sample's order (the sample has it on its line %d, before %s); %d such "
                       "row%s in all. Kaggle accepts any order; 'vinbig fuse' writes the sample's", path, line,
                       image_id, sample_line, before, len(unordered), "s" if len(unordered) > 1 else "")
    return faults
