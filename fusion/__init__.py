"""Fusion stage: weighted boxes fusion of the detector's prediction sets, the "No finding" gate, tuning on
out-of-fold predictions, the test submission (written and validated through `vinbig.submission`), the report.
The metric is `vinbig.metric`.

In memory: ``fuse_and_gate(boxes, meta, p, f)`` takes the detector's boxes (``detector.load_models(...).predict``)
and P(abnormal) (``image_probabilities`` of ``classifier.load_models(...).predict``) and gives the final boxes and
the gate's decision per image (``GATES`` says each in words); ``draw_predictions`` draws them on the radiograph
(``fusion._overlay``, the one module that draws boxes). ``vinbig fuse`` and ``vinbig predict`` are thin layers
over these calls.

Names are imported on first use, so `vinbig --help` does not pay for numba, pandas or matplotlib.
"""

from vinbig.lazy import lazy_exports

_EXPORTS = {
    "wbf": "fusion._wbf",
    "FusionInput": "fusion._fuse",
    "load_inputs": "fusion._fuse",
    "fuse": "fusion._fuse",
    "library_wbf": "fusion._fuse",
    "apply_gate": "fusion._gate",
    "image_probabilities": "fusion._gate",
    "GATES": "fusion._gate",
    "gate_decision": "fusion._gate",
    "gate_scores": "fusion._tune",
    "tune": "fusion._tune",
    "write_tuned": "fusion._tune",
    "predict": "fusion._stage",
    "fuse_and_gate": "fusion._stage",
    "check_fusion": "fusion._stage",
    "Fused": "fusion._stage",
    "score_oof": "fusion._stage",
    "oof_inputs": "fusion._stage",
    "fusion_config": "fusion._stage",
    "make_submission": "fusion._stage",
    "write_report": "fusion._report",
    "class_colours": "fusion._overlay",
    "draw_predictions": "fusion._overlay",
    "drawn_boxes": "fusion._overlay",
    "encode_png": "fusion._overlay",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
