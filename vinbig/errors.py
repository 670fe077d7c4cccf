"""Every error a stage raises for the user to fix. The command line prints them without a traceback
(exit code 2); library callers catch :class:`VinbigError` or one of its kinds."""

from __future__ import annotations


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
