"""Data preparation: DICOM to PNG conversion, train.csv validation, reader consolidation and folds.

Names are imported on first use, so `vinbig images` does not pay for ensemble-boxes' numba import.
"""

from importlib import import_module

_EXPORTS = {
    "convert_images": "folds._images",
    "validate_train_csv": "folds._validate",
    "TrainCsvError": "folds._validate",
    "consolidate": "folds._consolidate",
    "split_folds": "folds._split",
    "make_folds": "folds._split",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'folds' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)


def __dir__():
    return __all__
