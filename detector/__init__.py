"""YOLO detectors with ultralytics (YOLOv8, YOLO11, YOLO26, any detection yaml): per-fold datasets, offline
training, out-of-fold and test prediction.

In memory: ``load_models(root, runs, folds, tta=...)`` loads every fold model of every run of a work folder or an
export; its ``predict(images, meta)`` gives their boxes in original pixels, one row per box of each run/fold/TTA
set (DETECTOR_PRED_COLUMNS). ``predict`` (``vinbig predict-detector``) reads the PNGs of a split through it and
writes the parquet file.

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
    "training_boxes": "detector._dataset",
    "DETECTOR_CLASSES": "detector._dataset",
    "train_fold": "detector._train",
    "resolve_model": "detector._train",
    "train_args": "detector._train",
    "predict": "detector._predict",
    "read_png": "detector._predict",
    "load_models": "detector._models",
    "DetectorModels": "detector._models",
    "unflip_boxes": "detector._models",
    "load_fold_model": "detector._models",
    "predict_args": "detector._models",
    "prediction_device": "detector._models",
    "follow_log_level": "detector._offline",
    "OfflineDetectionTrainer": "detector._offline",
    "load_detector": "detector._weights",
    "load_checkpoint": "detector._weights",
    "export_weights": "detector._weights",
    "RefusedCheckpoint": "detector._weights",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
