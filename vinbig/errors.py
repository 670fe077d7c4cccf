"""Every error a stage raises for the user to fix. The command line prints them without a traceback
(exit code 2); library callers catch :class:`VinbigError` or one of its kinds."""

from __future__ import annotations


def cause(e: BaseException) -> str:
    """The error behind `e` (a library's wrapper: its ``__cause__``) in one short sentence, for a message that
    names a damaged file: torch's and ultralytics' own messages go on for a paragraph."""
    root = e.__cause__ or e
    text = str(root).strip().splitlines()[0] if str(root).strip() else ""
    text = text.split(". ")[0].rstrip(".")
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(root).__name__}: {text}" if text else type(root).__name__


class VinbigError(RuntimeError):
    """An error the user can fix; its message names the file, row or value and the fix."""


class UserError(VinbigError):
    """A command-line argument or a combination of them cannot work (a fold that is not there, a missing folder)."""


class ConfigError(VinbigError, ValueError):
    """A config file or override names an unknown key or a value of the wrong type or range."""


class ArtifactError(VinbigError):
    """A stage input is missing or malformed; the message names the file and how to make it."""


class TrainCsvError(ArtifactError):
    """train.csv is not in the competition's format; the message lists the faulty rows and columns."""


class SubmissionFormatError(ArtifactError):
    """A PredictionString cannot be parsed; the message names the line (run `vinbig validate`)."""


class WorkerDiedError(VinbigError):
    """A worker process of a process pool ended without returning its task; the message says how far it got.

    ``how`` says which process died and how, ``done`` and ``total`` count the results that came back.
    """

    def __init__(self, how: str, done: int, total: int) -> None:
        self.how, self.done, self.total = how, done, total
        super().__init__(f"{how} after {done} of {total} items had come back, so the run stopped; rerun the "
                         "same command, with a lower --workers if memory ran out")
