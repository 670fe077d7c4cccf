"""Five-fold "No finding" classifier (timm): P(abnormal) per image for the gate of the submission.

``train_fold`` trains one fold (``vinbig train-classifier``), ``predict`` scores out-of-fold or test images
with every fold's best.pt (``vinbig predict-classifier``). ``load_checkpoint`` and ``load_classifier`` are the one
loader of a fold (its best.pt, else the safetensors form ``export_checkpoint`` writes into an export). Names are imported on first use, so that
``vinbig --help`` does not pay for torch and timm.
"""

from vinbig.lazy import lazy_exports

_EXPORTS = {
    "train_fold": "classifier._train",
    "SUMMARY_COLUMNS": "classifier._train",
    "predict": "classifier._predict",
    "gate_operating_point": "classifier._predict",
    "abnormal_targets": "classifier._data",
    "create_model": "classifier._model",
    "load_weights": "classifier._model",
    "load_classifier": "classifier._model",
    "load_checkpoint": "classifier._model",
    "export_checkpoint": "classifier._model",
    "has_weights": "classifier._model",
    "resolve_device": "classifier._model",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
