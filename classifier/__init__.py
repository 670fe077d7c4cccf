"""Five-fold "No finding" classifier (timm): P(abnormal) per image for the gate of the submission.

``train_fold`` trains one fold (``vinbig train-classifier``), ``predict`` scores out-of-fold or test images
with every fold's best.pt (``vinbig predict-classifier``). In memory: ``load_models(root, runs, folds)`` loads every
fold model of every run of a work folder or an export; its ``predict(images, image_ids)`` gives P(abnormal) per
image of each run and fold, and each run's mean as fold -1 (CLASSIFIER_PRED_COLUMNS). ``load_checkpoint`` and ``load_classifier`` are the one
loader of a fold (its best.pt, else the safetensors form ``export_checkpoint`` writes into an export). Names are imported on first use, so that
``vinbig --help`` does not pay for torch and timm.
"""

from vinbig.lazy import lazy_exports

_EXPORTS = {
    "train_fold": "classifier._train",
    "SUMMARY_COLUMNS": "classifier._train",
    "predict": "classifier._predict",
    "load_models": "classifier._models",
    "ClassifierModels": "classifier._models",
    "gate_operating_point": "classifier._predict",
    "abnormal_targets": "classifier._data",
    "to_tensor": "classifier._data",
    "Prepare": "classifier._model",
    "score_fold": "classifier._predict",
    "create_model": "classifier._model",
    "save_checkpoint": "classifier._model",
    "load_weights": "classifier._model",
    "load_classifier": "classifier._model",
    "load_checkpoint": "classifier._model",
    "export_checkpoint": "classifier._model",
    "resolve_device": "classifier._model",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
