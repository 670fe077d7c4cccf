"""Data preparation: DICOM to PNG conversion, train.csv validation, reader consolidation and folds.

``find_dicoms`` and ``check_ids`` are how ``vinbig images`` finds its inputs and names them (an image id is the file
name without its suffix); ``vinbig predict`` finds and names new DICOMs with them.

Names are imported on first use, so `vinbig images` does not pay for ensemble-boxes' numba import.
"""

from vinbig.lazy import lazy_exports

_EXPORTS = {
    "convert_images": "folds._images",
    "convert_one": "folds._images",
    "png_params": "folds._images",
    "find_dicoms": "folds._images",
    "check_ids": "folds._images",
    "validate_train_csv": "folds._validate",
    "check_box_extents": "folds._validate",
    "TrainCsvError": "vinbig.errors",
    "consolidate": "vinbig.consolidate",
    "split_folds": "folds._split",
    "make_folds": "folds._split",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
