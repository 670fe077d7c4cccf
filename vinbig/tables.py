"""The one reader of CSV tables: every CSV a user or a stage gives (train.csv, meta.csv, labels.csv, folds.csv,
readers.csv, classifier predictions, a submission, the sample submission, a truth table) is read here.

A file is read once, as bytes, and checked before pandas parses it. Each fault is one line, ``PATH is not a
readable CSV (REASON); FIX`` (``line N: ...`` in REASON where there is a line to name):

* missing: ``WHAT not found at PATH; FIX``;
* empty (no bytes, or only blanks): ``(it is empty)``;
* UTF-16 text (what Excel's "Unicode text" writes): ``(UTF-16 text: save it as UTF-8 ...)``;
* a binary file (a NUL byte in its first 64 KiB): ``(a binary file)``;
* not UTF-8 text: ``(line N: not UTF-8 text)``;
* a row with more fields than the header (pandas would shift or drop fields): ``(line N: K fields, ...)``;
* anything else pandas cannot parse (an unclosed quote): pandas' reason;
* header only, where a table needs rows: ``PATH has a header but no rows; FIX``;
* columns missing: ``PATH lacks the columns [...] (it has [...]); FIX``.

A UTF-8 byte order mark (Excel's "CSV UTF-8", Notepad) is accepted. The caller chooses the error class
(:class:`~vinbig.errors.ArtifactError`, or a subclass such as ``TrainCsvError``) and the fix.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from vinbig.errors import ArtifactError

if TYPE_CHECKING:
    import pandas as pd

_HEAD = 1 << 16  # bytes sniffed for a binary or UTF-16 file
BOM = b"\xef\xbb\xbf"


def unreadable(path: str | os.PathLike, reason: str, fix: str, error: type = ArtifactError) -> Exception:
    """The error for a file that is not a readable CSV: ``PATH is not a readable CSV (REASON); FIX``."""
    return error(f"{path} is not a readable CSV ({reason}); {fix}")


def read_bytes(path: str | os.PathLike, fix: str, *, what: str | None = None, missing: str | None = None,
               error: type = ArtifactError) -> bytes:
    """The bytes of the CSV at `path`, after the checks that need no parsing: missing (`what` names the file,
    default its name; `missing` is the fix then, default `fix`), empty, UTF-16, binary."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what or path.name} not found at {path}; {missing or fix}")
    data = path.read_bytes()
    head = data[:_HEAD]
    if not head.removeprefix(BOM).strip() and not data.removeprefix(BOM).strip():
        raise unreadable(path, "it is empty", fix, error)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise unreadable(path, "UTF-16 text: save it as UTF-8, 'CSV UTF-8' in Excel", fix, error)
    if b"\0" in head:
        raise unreadable(path, "a binary file", fix, error)
    return data


def read_text(path: str | os.PathLike, fix: str, *, what: str | None = None, missing: str | None = None,
              error: type = ArtifactError) -> str:
    """The text of the CSV at `path` (UTF-8, a byte order mark dropped), after the checks of :func:`read_bytes`;
    bytes that are not UTF-8 are an error naming their line."""
    data = read_bytes(path, fix, what=what, missing=missing, error=error)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise unreadable(path, f"line {_undecodable_line(data)}: not UTF-8 text", fix, error) from None


def read_table(path: str | os.PathLike, fix: str, *, what: str | None = None, missing: str | None = None,
               columns: Sequence[str] = (), no_rows: str | None = None, strip_names: bool = False,
               error: type = ArtifactError, **kwargs) -> pd.DataFrame:
    """The CSV at `path` as a DataFrame (pandas' read_csv with `kwargs`), checked as the module doc says.

    `columns`: those the table must have; `no_rows`: the fix when it has a header but no rows (None: a
    header alone is an empty table); `strip_names`: blanks around the header's names are dropped first.
    """
    import pandas as pd

    path = Path(path)
    data = read_bytes(path, fix, what=what, missing=missing, error=error)
    try:
        with warnings.catch_warnings():  # a row longer than the header: pandas would drop fields or shift columns
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(io.BytesIO(data), encoding="utf-8-sig", index_col=False, **kwargs)
    except (pd.errors.ParserWarning, pd.errors.ParserError) as e:
        long = _first_long_row(data)
        if long is None:
            raise unreadable(path, " ".join(str(e).split()), fix, error) from None
        line, n, header = long
        raise unreadable(path, f"line {line}: {n} fields, more than the {header} of the header; a comma too many?",
                         fix, error) from None
    except UnicodeDecodeError:
        raise unreadable(path, f"line {_undecodable_line(data)}: not UTF-8 text", fix, error) from None
    except pd.errors.EmptyDataError as e:
        raise unreadable(path, " ".join(str(e).split()), fix, error) from None
    if strip_names:
        df.columns = [str(c).strip() for c in df.columns]
    check_columns(df, columns, path, fix, error)
    if no_rows is not None and df.empty:
        raise error(f"{path} has a header but no rows; {no_rows}")
    return df


def check_columns(df: pd.DataFrame, columns: Sequence[str], source: str | os.PathLike, fix: str,
                  error: type = ArtifactError) -> None:
    """``SOURCE lacks the columns [...] (it has [...]); FIX`` when `df` lacks one of `columns`."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise error(f"{source} lacks the columns {missing} (it has {list(df.columns)}); {fix}")


def _first_long_row(data: bytes) -> tuple[int, int, int] | None:
    """(line, fields, header fields) of the first row with more fields than the header (read on failure only)."""
    reader = csv.reader(io.StringIO(data.decode("utf-8-sig", errors="replace"), newline=""))
    header = len(next(reader, []))
    for row in reader:
        if len(row) > header:
            return reader.line_num, len(row), header
    return None


def _undecodable_line(data: bytes) -> int:
    """The 1-based line of the first bytes that are not UTF-8 (looked for only when decoding has failed)."""
    for n, raw in enumerate(data.removeprefix(BOM).split(b"\n"), 1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return n
    return 1
