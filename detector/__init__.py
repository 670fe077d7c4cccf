"""YOLOv8 detectors with ultralytics: per-fold datasets, offline training, out-of-fold and test prediction.

``load_fold_model`` is the one loader of a fold (its best.pt through the restricted loader, else the safetensors
form ``export_weights`` writes into an export); ``load_checkpoint`` is the restricted loader of any .pt.

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
    "load_fold_model": "detector._predict",
    "predict_args": "detector._predict",
    "prediction_device": "detector._predict",
    "load_detector": "detector._weights",
    "load_checkpoint": "detector._weights",
    "export_weights": "detector._weights",
    "has_weights": "detector._weights",
    "RefusedCheckpoint": "detector._weights",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
