"""YOLOv8 detectors with ultralytics: per-fold datasets, offline training, out-of-fold and test prediction.

Names are imported on first use, so that `vinbig --help` does not import torch and ultralytics.
"""

from vinbig.lazy import lazy_exports

_EXPORTS = {
    "boxes_to_yolo": "detector._dataset",
    "yolo_to_boxes": "detector._dataset",
    "label_text": "detector._dataset",
    "fold_dataset": "detector._dataset",
    "DETECTOR_CLASSES": "detector._dataset",
    "train_fold": "detector._train",
    "predict": "detector._predict",
    "unflip_boxes": "detector._predict",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
