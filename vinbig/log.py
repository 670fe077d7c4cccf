"""Logging for the command line: configured once, at the entry point; modules use getLogger(__name__)."""

from __future__ import annotations

import logging

from tqdm import tqdm


class _TqdmHandler(logging.StreamHandler):
    """Writes log lines through tqdm so that they do not break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def setup(verbosity: int = 0) -> None:
    """0: info, 1 or more: debug, negative: warnings only."""
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(levelname).1s %(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _TqdmHandler)] + [handler]
    root.setLevel(level)
    for noisy in ("numba", "PIL", "openjpeg"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # pydicom logs every oddity of a file it can still read; vinbig reports what matters itself
    logging.getLogger("pydicom").setLevel(max(level, logging.ERROR))


def progress(iterable=None, **kwargs):
    """A tqdm bar that stays quiet when logging is set to warnings only."""
    kwargs.setdefault("disable", logging.getLogger().getEffectiveLevel() > logging.INFO)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


def some(ids, n: int = 10) -> str:
    """The first `n` of `ids` for a log line, and how many more there are."""
    ids = [str(i) for i in ids]
    return ", ".join(ids[:n]) + (f" and {len(ids) - n} more" if len(ids) > n else "")
